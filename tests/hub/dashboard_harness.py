"""What the dashboard and metrics tests add to `tests.hub.harness`: agents with their own ids,
a hub with `[status]` and `[dashboard]` on a free port, HTTP reads of it (headless Chromium and
the PNG check: `testkit.browser`)."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp

from testkit.broker import MosquittoBroker
from tests.hub.harness import HubProcess, hub_config


def agent_config_for(
    home: Path, broker: MosquittoBroker, public_key: Path, *, site: str, agent: str,
    rate_hz: int = 20, status_interval_s: float = 2.0,
) -> Path:
    """An agent as `tests.hub.harness.agent_config` makes, with its own site and id, a slower
    source and a short status interval (samples for the backlog plot come quickly)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "agent.toml"
    path.write_text(f"""
[agent]
site = "{site}"
id = "{agent}"
state_dir = "{home / 'state'}"
shutdown_grace_s = 5

[hub]
url = "{broker.url}"
topic_prefix = "mfg"
reconnect_min_s = 0.2
reconnect_max_s = 1.0
batch_max_events = 10
batch_max_wait_ms = 10
status_interval_s = {status_interval_s}

[buffer]
retention_s = 3600

[commands.keys]
hub = "{public_key}"

[commands.allow]
replay = ["hub"]
pause = ["hub"]

[[sources]]
name = "sim"
type = "simulated"
rate_hz = {rate_hz}

  [[sources.signals]]
  node = "counter"
  event = "production.count"
  asset = "line1/filler"
  name = "good"
""")
    return path


def dashboard_hub_config(
    path: Path, broker: MosquittoBroker, database_url: str, *, stale_after_s: float = 3.0,
    behind_s: float = 300.0, extra: str = "",
) -> Path:
    """`tests.hub.harness.hub_config` plus `[status]` (a sample a second) and `[dashboard]`
    on port 0 (the hub logs the real one)."""
    hub_config(path, broker, database_url)
    path.write_text(path.read_text() + f"""
[status]
sample_interval_s = 1

[dashboard]
port = 0
stale_after_s = {stale_after_s}
behind_s = {behind_s}
refresh_s = 2
history_hours = 1
{extra}""")
    return path


def dashboard_url(hub: HubProcess) -> str:
    """The base URL the hub logged (`hub dashboard on URL`); waits for the line."""
    hub.wait_log("hub dashboard on ")
    found = re.search(r"hub dashboard on (http://\S+/)", hub.log_text())
    assert found, hub.log_text()[-2000:]
    return found.group(1)


async def get(url: str, *, accept: str | None = None) -> tuple[int, str, str]:
    """(status, content type, body) of a GET (bounded)."""
    headers = {"Accept": accept} if accept else {}
    timeout = aiohttp.ClientTimeout(total=20)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
        url, headers=headers
    ) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()
