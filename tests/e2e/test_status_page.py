"""The agent's status page (issue 20) in headless Chromium (Debian's `chromium`): a real agent
(simulated source) and a real mosquitto that is stopped and started again.

While the broker is down the backlog rises; once it is back the backlog drains. The page's
backlog plot (its SVG, from Chromium's DOM) holds that rise and that drain among its data
points, the hub link reads `connected` again, the state changes list the link going down and
coming back, the source's signal shows its last value and quality. The screenshot is a real
render (PNG decoded by hand). The plot history is a ring file in the state dir: after a
restart of the agent the page still draws the outage. Strings from the config are escaped.
The ring is bounded and a torn file is set aside, not fatal.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.web.history import HISTORY_FILE, History, Sample
from config.observability import HISTORY_SAMPLES
from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker, free_loopback_port
from testkit.browser import chromium_available, dump_dom, read_png, screenshot
from tests.hub.harness import wait_until
from tests.integration.test_metrics_endpoint import agent_toml, get

pytestmark = pytest.mark.e2e


def backlog_values(dom: str) -> list[float]:
    """The `total` series of the backlog plot, as drawn (its data-values)."""
    svg = re.search(r"<svg id=[\"']backlog[\"'].*?</svg>", dom, re.S)
    assert svg, f"no backlog plot in the page:\n{dom[:2000]}"
    series = re.search(r"<polyline [^>]*data-series=[\"']total[\"'][^>]*>", svg.group(0))
    assert series, svg.group(0)[:2000]
    values = re.search(r"data-values=[\"']([^\"']*)[\"']", series.group(0))
    assert values is not None
    return [float(v) for v in values.group(1).split()]


def rose_and_drained(values: list[float], at_least: float) -> bool:
    """Some sample at `at_least` or more, with a lower one before it and 0 after it."""
    if not values:
        return False
    peak = max(range(len(values)), key=values.__getitem__)
    return (values[peak] >= at_least and min(values[: peak + 1]) < values[peak]
            and 0 in values[peak:])


async def test_the_page_shows_the_backlog_rise_and_drain(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    # Not a skip: a skipped browser test would pass unnoticed (`make chromium` installs it).
    assert chromium_available(), "this test needs Debian's chromium: run `make chromium`"
    port = free_loopback_port()
    home = tmp_path / "agent"
    web = f"""
[web]
enabled = true
port = {port}
history_interval_s = 1
refresh_s = 5
"""
    config = agent_toml(home, broker, None, web)
    # A name with markup in it (the source's signal `name`): the page must escape it.
    config.write_text(config.read_text().replace('name = "good"', 'name = "good<b>&count"'))
    agent = AgentProcess(config, tmp_path / "agent.log")
    base = f"http://127.0.0.1:{port}/"
    profile = tmp_path / "chromium-profile"
    try:
        agent.start()

        async def page_up() -> str | None:
            status, _type, body = await get(base)
            hub_up = "<th>link</th><td><span class='ok'>connected</span>" in body
            # The agent starts disconnected: its state log has seen the link come up.
            logged = "<td>hub</td><td>disconnected → connected</td>" in body
            return body if status == 200 and hub_up and logged else None

        await wait_until(page_up, "the status page with the hub connected", 30)

        # The outage: the backlog rises (20 readings/s, none delivered).
        broker.stop()

        async def risen() -> list[float] | None:
            _status, _type, body = await get(base)
            values = backlog_values(body) if "<svg" in body else []
            return values if values and values[-1] >= 60 else None

        await wait_until(risen, "the backlog sampled at 60 events or more", 40)
        broker.start()

        async def drained() -> str | None:
            dom = await dump_dom(base, profile)
            return dom if rose_and_drained(backlog_values(dom), 60) else None

        dom = await wait_until(drained, "the page's backlog plot showing the rise and drain", 60)
        assert re.search(r"<th>link</th><td><span class=\"ok\">connected</span>", dom), dom[:3000]
        changes = re.search(r"<table id=\"changes\">.*?</table>", dom, re.S)
        assert changes, dom[:3000]
        assert "connected → disconnected" in changes.group(0), changes.group(0)
        assert "disconnected → connected" in changes.group(0)
        # The delivery plot drew the drain too: a rate above the steady 20 events/s at some point.
        delivered = re.search(r"<svg id=\"delivered\".*?</svg>", dom, re.S)
        assert delivered
        rates = re.search(r"data-values=\"([^\"]*)\"", delivered.group(0))
        assert rates and max(float(v) for v in rates.group(1).split()) > 20
        # The signal with its last value and quality, its name escaped (not markup).
        row = re.search(r"<tr data-signal=\"counter\">.*?</tr>", dom, re.S)
        assert row, dom[:3000]
        assert "good&lt;b&gt;&amp;count" in row.group(0) and "<b>" not in row.group(0)
        assert re.search(r"class=\"num value\">\d+</td>", row.group(0)), row.group(0)
        assert "good</td>" in row.group(0)  # the quality column
        assert "id=\"dead-letters\">0<" in dom

        png = await screenshot(base, tmp_path / "status.png", profile)
        image = read_png(png)
        assert (image.width, image.height) == (1400, 900), image
        # Not blank: many colours (anti-aliased text, plot lines) and some dark ink on a light
        # background.
        assert image.colors > 50, image
        assert 0.002 < image.dark_fraction < 0.5, image

        # The history is a ring file in the state dir: a restart keeps the outage on the plot.
        before = backlog_values(dom)
        assert agent.terminate() == 0
        assert (home / "state" / "web-history.json").exists()
        agent = AgentProcess(config, tmp_path / "agent-2.log")
        agent.start()

        async def replotted() -> list[float] | None:
            _status, _type, body = await get(base)
            values = backlog_values(body) if "<svg" in body else []
            return values if len(values) > len(before) else None

        after = await wait_until(replotted, "the page again, with the earlier samples", 30)
        assert after[: len(before)] == before
        assert rose_and_drained(after, 60)
    finally:
        agent.ensure_stopped()


def test_the_history_ring_is_bounded_and_survives_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / HISTORY_FILE
    history = History(path, interval_s=60)
    now = 1_800_000_000.0
    for i in range(HISTORY_SAMPLES + 100):
        history.add(Sample(now - (HISTORY_SAMPLES + 100 - i) * 60, {"business": i}, i, 0))
    history.write()
    assert not path.with_name(path.name + ".tmp").exists()
    again = History(path, interval_s=60)
    again.load(now=now)
    assert len(again.samples) == HISTORY_SAMPLES  # bounded: the oldest 100 are gone
    assert [s.as_json() for s in again.samples] == [s.as_json() for s in history.samples]
    assert path.stat().st_size < 100_000
    # A torn or foreign file: set aside, the plots start empty, the next write is whole.
    path.write_text('{"version": 1, "samples": [[1, 2')
    broken = History(path, interval_s=60)
    broken.load(now=now)
    assert not broken.samples and path.with_suffix(".bad").exists() and not path.exists()
    broken.add(Sample(now, {"telemetry": 3}, 1, 0))
    broken.write()
    fresh = History(path, interval_s=60)
    fresh.load(now=now)
    assert [s.pending_total for s in fresh.samples] == [3]
