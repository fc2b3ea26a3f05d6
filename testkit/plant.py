"""The demo filling line as a test fixture: a real asyncua server in the test's event loop."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from agent.demo import plant as demo_plant

NODES = {
    "good": demo_plant.GOOD_COUNT,
    "reject": demo_plant.REJECT_COUNT,
    "state": demo_plant.STATE,
    "filler_temp": demo_plant.FILLER_TEMPERATURE,
    "tank_temp": demo_plant.TANK_TEMPERATURE,
}


def agent_config_text(
    *, hub_url: str, opcua_port: int, state_dir: Path, extra_hub: str = "", grace_s: float = 5
) -> str:
    """A complete agent config for the demo plant, as an OT engineer would write it."""
    text = f"""
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "{state_dir}"
shutdown_grace_s = {grace_s}

[hub]
url = "{hub_url}"
topic_prefix = "mfg"
reconnect_min_s = 0.2
reconnect_max_s = 1.0
batch_max_wait_ms = 20
{extra_hub}

[buffer]
retention_s = 3600

[[sources]]
name = "line1"
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:{opcua_port}/plant/"
publishing_interval_ms = 50

  [[sources.signals]]
  node = "{demo_plant.GOOD_COUNT}"
  event = "production.count"
  asset = "line1/filler"
  name = "good_count"

  [[sources.signals]]
  node = "{demo_plant.STATE}"
  event = "machine.state"
  asset = "line1/filler"
  name = "state"
  states = {{ 0 = "idle", 1 = "running", 2 = "down", 3 = "fault" }}

  [[sources.signals]]
  node = "{demo_plant.FILLER_TEMPERATURE}"
  event = "telemetry"
  asset = "line1/filler"
  name = "temperature"
  unit = "Cel"
"""
    tomllib.loads(text)  # a broken template should fail here, not in the agent
    return text


def as_dict(text: str) -> dict[str, Any]:
    return tomllib.loads(text)
