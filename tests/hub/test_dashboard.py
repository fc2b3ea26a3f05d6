"""The dashboard in headless Chromium (Debian's `chromium`): two real agents on a real hub, one
killed; within a bounded wait the fleet page flags it (stale, and offline by its will) while
the other stays unflagged; the agent page draws its backlog and delivery plots; screenshots
are real renders. Also: `edge-agent fleet --from-hub`, escaping of names from the network,
basic auth."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from hub.config import DashboardSection
from hub.health import AgentHealth, FleetHealth, Thresholds
from hub.store import HubStore
from hub.web import render_fleet, serve_dashboard
from testkit.agent_process import REPO, AgentProcess
from testkit.broker import MosquittoBroker
from testkit.browser import chromium_available, dump_dom, read_png, screenshot
from tests.hub.dashboard_harness import agent_config_for, dashboard_hub_config, dashboard_url, get
from tests.hub.harness import HubProcess, hub_keys, wait_until

A = ("plant-a", "edge-01")
B = ("plant-b", "edge-02")


def row_of(dom: str, key: str) -> str:
    """The fleet table's <tr> of one agent, from Chromium's DOM."""
    found = re.search(rf"<tr [^>]*data-agent=\"{re.escape(key)}\"[^>]*>.*?</tr>", dom, re.S)
    assert found, f"no row for {key} in the fleet page:\n{dom[:3000]}"
    return found.group(0)


async def api_fleet(base: str) -> dict[str, dict[str, Any]]:
    status, _type, body = await get(f"{base}api/fleet")
    assert status == 200, body
    return {f"{r['site']}/{r['agent']}": r for r in json.loads(body)["agents"]}


async def test_the_dashboard_flags_a_stopped_plant_within_its_interval(
    tmp_path: Path, broker: MosquittoBroker, postgres_url: str
) -> None:
    # Not a skip: a skipped browser test would pass unnoticed (`make chromium` installs it).
    assert chromium_available(), "this test needs Debian's chromium: run `make chromium`"
    _private, public = hub_keys(tmp_path / "keys")
    hub = HubProcess(dashboard_hub_config(tmp_path / "hub.toml", broker, postgres_url,
                                          stale_after_s=4), tmp_path / "hub.log")
    agents = {
        ids: AgentProcess(agent_config_for(tmp_path / ids[1], broker, public, site=ids[0],
                                           agent=ids[1]), tmp_path / f"{ids[1]}.log")
        for ids in (A, B)
    }
    a_key, b_key = "/".join(A), "/".join(B)
    profile = tmp_path / "chromium-profile"
    try:
        hub.start()
        base = dashboard_url(hub)
        hub.wait_log("hub ready")
        for agent in agents.values():
            agent.start()

        async def both_healthy() -> dict[str, dict[str, Any]] | None:
            fleet = await api_fleet(base)
            healthy = all(key in fleet and not fleet[key]["flags"]
                          and fleet[key]["state"] == "online" for key in (a_key, b_key))
            return fleet if healthy else None

        await wait_until(both_healthy, "both agents landing events, online, unflagged", 40)

        async def page_shows_both_ok() -> bool:
            dom = await dump_dom(base, profile)
            return all("class=\"ok\"" in row_of(dom, key) and "data-flags=\"\"" in
                       row_of(dom, key) for key in (a_key, b_key))

        # Before: neither is flagged (a wait, not one look: a loaded machine may lag a moment).
        await wait_until(page_shows_both_ok, "the fleet page shows both agents unflagged", 60)

        agents[B].kill()  # SIGKILL: no clean stop; the broker publishes its will

        async def b_flagged() -> dict[str, dict[str, Any]] | None:
            fleet = await api_fleet(base)
            flags = set(fleet[b_key]["flags"])
            return fleet if {"stale", "offline"} <= flags else None

        fleet = await wait_until(b_flagged, "the killed agent flagged stale and offline", 30)
        assert fleet[b_key]["status_reason"] == "connection lost"


        async def page_flags_b_only() -> str | None:
            dom = await dump_dom(base, profile)
            b_row, a_row = row_of(dom, b_key), row_of(dom, a_key)
            b_marked = "class=\"flagged\"" in b_row and all(
                f"flag-{flag}" in b_row for flag in ("stale", "offline"))
            a_ok = "class=\"ok\"" in a_row and "flag-" not in a_row
            return dom if b_marked and a_ok else None

        dom = await wait_until(page_flags_b_only, "the page flags the killed agent only", 60)
        assert dom.index(row_of(dom, b_key)) < dom.index(row_of(dom, a_key))  # flagged first
        assert "1 flagged" in dom and "offline (connection lost)" in dom
        png = await screenshot(base, tmp_path / "fleet.png", profile)
        _assert_real_render(png)

        # The running agent's page: both plots drawn from data, the lists present.
        page = f"{base}agents/{A[0]}/{A[1]}"

        async def plotted() -> str | None:
            dom = await dump_dom(page, profile)
            backlog = re.search(r"<svg id=\"backlog\".*?</svg>", dom, re.S)
            delivered = re.search(r"<svg id=\"delivered\".*?</svg>", dom, re.S)
            if not (backlog and delivered):
                return None
            points = [int(n) for n in re.findall(r'data-points="(\d+)"', backlog.group(0))]
            bars = len(re.findall(r"<rect class=\"bar\"", delivered.group(0)))
            return dom if len(points) == 3 and min(points) >= 2 and bars >= 1 else None

        dom = await wait_until(plotted, "the backlog samples and deliveries plotted", 40)
        assert "<polyline" in dom  # a line through two samples or more
        for table_id in ("streams", "gaps", "losses", "replays", "rejected-records"):
            assert f"id=\"{table_id}\"" in dom
        assert "production.count" in dom
        png = await screenshot(page, tmp_path / "agent.png", profile)
        _assert_real_render(png)

        # `edge-agent fleet --from-hub`: the same reading, as a table and as JSON.
        table = await _fleet_cli("--from-hub", base)
        lines = table.stdout.splitlines()
        assert table.returncode == 0, table.stderr
        assert lines[1].startswith("!") and b_key in lines[1] and "STALE" in lines[1]
        assert "OFFLINE" in lines[1] and a_key in lines[2] and not lines[2].startswith("!")
        as_json = await _fleet_cli("--from-hub", base, "--json")
        rows = [json.loads(line) for line in as_json.stdout.splitlines()]
        assert [f"{r['site']}/{r['agent']}" for r in rows] == [b_key, a_key]
    finally:
        for agent in agents.values():
            agent.ensure_stopped()
        hub.ensure_stopped()


def _assert_real_render(png: Path) -> None:
    image = read_png(png)
    assert (image.width, image.height) == (1400, 900), image
    # Not blank: many colours (text anti-aliasing, badges, plot lines) and some dark ink,
    # but mostly light background.
    assert image.colors > 50, image
    assert 0.002 < image.dark_fraction < 0.5, image


async def _fleet_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "agent", "fleet", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )


async def test_fleet_from_hub_says_when_the_hub_cannot_be_read() -> None:
    done = await _fleet_cli("--from-hub", "http://127.0.0.1:9/", "--timeout", "3")
    assert done.returncode == 1 and "cannot read the hub's fleet" in done.stderr, done


def test_names_from_the_network_are_escaped() -> None:
    now = datetime.now(UTC)
    hostile = "<script>alert(1)</script>"
    agent = AgentHealth(
        site=hostile, agent="a'b\"c", flags=("offline",), state="offline",
        status_received_at=now, status_reason="<img src=x onerror=alert(2)>",
        last_received_at=now - timedelta(seconds=3), last_event_time=None, landed_total=1,
        landed_per_min=0.0, max_seq=1, duplicates_total=0, backlog={}, oldest_pending_s={},
        dead_letters=None, open_gaps=0, missing_seqs=0, oldest_gap_opened_at=None,
        gap_ranges=(), lost={"<em onclick=x>": 1}, replays={}, rejected_messages=0,
        rejected_records=0, now=now,
    )
    page = render_fleet(FleetHealth(now, Thresholds(), (agent,), 0), 10)
    for tag in ("<script", "<img", "<em"):
        assert tag not in page, tag
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "href='/agents/%3Cscript%3Ealert%281%29%3C%2Fscript%3E/a%27b%22c'" in page


async def test_basic_auth_guards_every_path(postgres_url: str) -> None:
    section = DashboardSection(port=0, username="ops", password_file=Path("unused"))
    async with HubStore.open(postgres_url, pool_size=1) as store:
        from hub.status import make_status_schema

        await make_status_schema(store.pool)
        async with serve_dashboard(store.pool, section, "mfg", password="s3cret") as base:
            for path in ("", "api/fleet", "metrics", "agents/x/y"):
                status, _type, _body = await get(f"{base}{path}")
                assert status == 401, path
            timeout = aiohttp.ClientTimeout(total=20)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                for secret, expected in ((b"ops:wrong", 401), (b"ops:s3cret", 200)):
                    header = {"Authorization": f"Basic {base64.b64encode(secret).decode()}"}
                    async with session.get(f"{base}api/fleet", headers=header) as response:
                        assert response.status == expected, secret
            done = await _fleet_cli("--from-hub", base.replace("http://", "http://ops:s3cret@"))
            assert done.returncode == 0 and "knows no agent yet" in done.stdout, done
