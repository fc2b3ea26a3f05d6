"""The mapping end to end: a real asyncua server (the demo plant's batch reactor, in plant units
and plant codes) → the agent (the README's batch-reactor example config) → a real mosquitto.
The hub receives converted units, mapped codes, derived events and the ISA-95 asset path."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.demo.plant import (
    REACTOR_BATCH,
    REACTOR_DONE,
    REACTOR_MATERIAL,
    REACTOR_STOP_REASON,
    REACTOR_STOPPED,
    REACTOR_TEMPERATURE,
    FillingLinePlant,
)
from testkit.broker import MosquittoBroker, Subscriber
from tests.integration.test_first_path import events_at_hub, running_agent

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"
EVENTS_TOPIC = "mfg/plant-b/edge-01/events/#"


def reactor_config(tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant) -> Path:
    text = (EXAMPLES / "batch-reactor.toml").read_text()
    for old, new in [
        ('url = "mqtt://127.0.0.1:1883"', f'url = "{broker.url}"\nbatch_max_wait_ms = 20'),
        ('endpoint = "opc.tcp://127.0.0.1:4840"',
         f'endpoint = "{plant.endpoint}"\npublishing_interval_ms = 50'),
        ('state_dir = "./state"', f'state_dir = "{tmp_path / "state"}"'),
    ]:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    shutil.copy(EXAMPLES / "materials.csv", tmp_path / "materials.csv")
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


async def test_plant_units_and_codes_arrive_in_the_enterprise_language(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0)
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(reactor_config(tmp_path, broker, plant)):
            # The initial values: 68 degF = 20 Cel (one telemetry event; the rest feed nothing).
            await events_at_hub(subscriber, 1)
            writes: list[tuple[str, object]] = [
                (REACTOR_TEMPERATURE, 212.0),  # 100 Cel: above 90, an alert starts
                (REACTOR_MATERIAL, "RX-EVA"),
                (REACTOR_BATCH, "B-0042"),
                (REACTOR_STOP_REASON, 3),
                (REACTOR_STOPPED, True),
                (REACTOR_STOPPED, False),
                (REACTOR_TEMPERATURE, 190.4),  # 88 Cel: still within the hysteresis band
                (REACTOR_TEMPERATURE, 186.8),  # 86 Cel: the alert ends
                (REACTOR_DONE, True),
            ]
            for offset, (node, value) in enumerate(writes, start=1):
                await plant.write(node, value, timestamp=t0 + timedelta(seconds=offset))
                await _settle()
            events = await events_at_hub(subscriber, 9)  # 4 telemetry, 2 alerts, 2 stops, 1 order

    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
        assert event["assetpath"] == "acme/plant-b/resins/reactors/reactor1"
        assert event["subject"] == "reactor1"
    temperatures = [(e["data"]["value"], e["data"]["unit"]) for e in by_type["telemetry.v1"]]
    assert temperatures == [(20.0, "Cel"), (100.0, "Cel"), (88.0, "Cel"), (86.0, "Cel")]
    alerts = [(e["data"]["phase"], e["data"]["limit"]) for e in by_type["quality.alert.v1"]]
    assert alerts == [("start", 90.0), ("end", 88.0)]
    assert by_type["quality.alert.v1"][1]["data"]["duration_s"] == 7.0
    downtime = [(e["data"]["phase"], e["data"]["reason"]) for e in by_type["machine.downtime.v1"]]
    assert downtime == [("start", "3"), ("end", "3")]
    [order] = by_type["workorder.completed.v3"]
    assert (order["data"]["order"], order["data"]["product"]) == ("B-0042", "MAT-004420")
    assert "unmapped" not in order


async def _settle() -> None:
    import asyncio

    await asyncio.sleep(0.15)  # lets each write reach the agent as its own notification
