"""The first whole path, in one process: a real asyncua server → the agent → a real mosquitto.

The agent runs in the test's event loop (so the test can look at its counters); the broker is
a real mosquitto on a free loopback port that the tests stop and restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asyncua.ua.status_codes import StatusCodes

from agent.demo.plant import FILLER_TEMPERATURE, GOOD_COUNT, STATE, FillingLinePlant
from agent.runtime import Agent
from agent.store import buffer_file as buffer_path
from config.loader import load_config
from testkit.broker import MosquittoBroker, Subscriber
from testkit.events import EVENTS_TOPIC, accepted_in_buffer, decode_events, unique_by_id
from testkit.plant import agent_config_text


@asynccontextmanager
async def running_agent(config_file: Path) -> AsyncIterator[Agent]:
    config = load_config(config_file)
    stop = asyncio.Event()
    async with Agent.open(config) as agent:
        task = asyncio.create_task(agent.run(stop))
        try:
            await until(lambda: agent.sources[0].connector.health.connected, "source connected")
            yield agent
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)


async def until(condition: Callable[[], bool], what: str, limit_s: float = 15.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for: {what}")
        await asyncio.sleep(0.05)


def write_config(tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        agent_config_text(hub_url=broker.url, opcua_port=plant.port, state_dir=tmp_path / "state")
    )
    return path


async def events_at_hub(
    subscriber: Subscriber, count: int, limit_s: float = 20.0
) -> list[dict[str, Any]]:
    """Wait until `count` distinct events (by id) arrived; return them sorted by seq."""
    deadline = time.monotonic() + limit_s
    while True:
        events = unique_by_id(decode_events(subscriber.messages))
        if len(events) >= count:
            return sorted(events.values(), key=lambda event: event["seq"])
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(events)} of {count} events arrived: {sorted(events)}")
        await asyncio.sleep(0.05)


async def test_values_written_on_the_server_arrive_as_canonical_events(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0)
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(write_config(tmp_path, broker, plant)):
            # The subscription first delivers the three current values (count 0, idle, 65.0).
            await events_at_hub(subscriber, 3)
            writes = [
                (FILLER_TEMPERATURE, 70.5),
                (GOOD_COUNT, 5),
                (STATE, 1),
                (GOOD_COUNT, 8),
                (FILLER_TEMPERATURE, 71.25),
            ]
            for offset, (node, value) in enumerate(writes, start=1):
                await plant.write(node, value, timestamp=t0 + timedelta(seconds=offset))
                await asyncio.sleep(0.15)
            await plant.write(
                FILLER_TEMPERATURE, 0.0, timestamp=t0 + timedelta(seconds=9),
                status=StatusCodes.BadSensorFailure,
            )
            events = await events_at_hub(subscriber, 9)

    assert [event["seq"] for event in events] == list(range(1, 10))
    for event in events:
        assert event["specversion"] == "1.0"
        assert event["site"] == "plant-a" and event["agent"] == "edge-01"
        assert event["source"] == "/plant-a/edge-01/line1"
        assert event["subject"] == "line1/filler"
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    assert set(by_type) == {"telemetry.v1", "production.count.v1", "machine.state.v1"}

    temps = by_type["telemetry.v1"]
    # The server sends no value with a Bad status; the event still comes, marked bad.
    assert [e["data"]["value"] for e in temps] == [65.0, 70.5, 71.25, None]
    assert {e["data"]["unit"] for e in temps} == {"Cel"}
    assert [e["quality"] for e in temps] == ["good", "good", "good", "bad"]
    assert temps[-1]["status"] == "BadSensorFailure"
    assert temps[1]["time"] == (t0 + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")

    counts = by_type["production.count.v1"]
    assert [(e["data"]["count"], e["data"]["increment"]) for e in counts] == [
        (0, None), (5, 5), (8, 3)
    ]
    states = by_type["machine.state.v1"]
    assert [(e["data"]["state"], e["data"]["previous"]) for e in states] == [
        ("idle", None), ("running", "idle")
    ]
    assert states[1]["data"]["raw"] == 1


async def test_broker_outage_loses_nothing(
    tmp_path: Path, plant: FillingLinePlant
) -> None:
    # Persistence keeps the test subscriber's session (and its queued messages) across the
    # broker restart, so what the agent resends right after the restart reaches the test.
    broker = MosquittoBroker(
        ["persistence true", "persistence_location {workdir}/", "autosave_interval 1"]
    )
    broker.workdir.chmod(0o777)
    t0 = datetime.now(UTC).replace(microsecond=0)
    written: list[float] = []

    async def write_temperatures(count: int) -> None:
        for _ in range(count):
            value = float(len(written))
            stamp = t0 + timedelta(milliseconds=100 * len(written))
            await plant.write(FILLER_TEMPERATURE, value, timestamp=stamp)
            written.append(value)
            await asyncio.sleep(0.1)

    with broker, Subscriber(broker, EVENTS_TOPIC, session_expiry_s=600) as subscriber:
        async with running_agent(write_config(tmp_path, broker, plant)) as agent:
            await write_temperatures(10)
            await asyncio.to_thread(broker.stop)
            await until(lambda: not agent.session.connected, "agent notices the outage")
            await write_temperatures(30)  # three seconds of values while the hub is down
            assert agent.buffer is not None
            stats = await agent.buffer.stats()
            assert stats.pending > 0, "events written during the outage wait in the buffer"
            await asyncio.to_thread(broker.start)
            await subscriber.wait_subscribed_async(timeout=15)
            await write_temperatures(10)
            # 3 initial values + 50 temperatures
            events = await events_at_hub(subscriber, 53, limit_s=30)
            accepted = accepted_in_buffer(buffer_path(agent.config))

    temperatures = [e["data"]["value"] for e in events if e["type"] == "telemetry.v1"]
    assert temperatures[1:] == written, "every value, once, in order"
    assert [e["seq"] for e in events] == list(range(1, 54)), "seq has no gaps"
    assert {e["id"]: e["seq"] for e in events} == accepted
    # Anything the hub saw twice (a resend after the reconnect) carried the same id.
    all_events = decode_events(subscriber.messages)
    assert len(all_events) >= len(events)
    unique_by_id(all_events)


async def test_a_renamed_site_relabels_only_what_is_accepted_after_the_rename(
    tmp_path: Path, plant: FillingLinePlant
) -> None:
    """Events buffered as plant-a while the hub was down reach the hub as plant-a after the
    config renamed the site to plant-b (their `source` and ids were made as plant-a); what
    is accepted after the rename is plant-b's."""
    broker = MosquittoBroker()
    config = write_config(tmp_path, broker, plant)
    async with running_agent(config) as agent:  # no broker running: all stays buffered
        await until(lambda: len(accepted_in_buffer(buffer_path(agent.config))) >= 3,
                    "the 3 current values buffered")
    old = accepted_in_buffer(buffer_path(load_config(config)))
    config.write_text(config.read_text().replace('site = "plant-a"', 'site = "plant-b"'))
    with broker, Subscriber(broker, "mfg/#") as subscriber:
        async with running_agent(config):
            await plant.write(FILLER_TEMPERATURE, 71.5)
            events = await events_at_hub(subscriber, len(old) + 4)
            await asyncio.sleep(0.3)  # anything extra would arrive by now

    by_seq = {event["seq"]: event for event in events}
    assert sorted(e["seq"] for e in events) == list(range(1, len(events) + 1))
    for event in events:
        site = "plant-a" if event["id"] in old else "plant-b"
        assert (event["site"], event["agent"]) == (site, "edge-01"), event
        assert event["source"].startswith(f"/{site}/edge-01/"), event
    assert {by_seq[seq]["id"] for seq in old.values()} == set(old)
    renamed = [e for e in events if e["site"] == "plant-b"]
    assert 71.5 in [e["data"].get("value") for e in renamed]
    assert min(e["seq"] for e in renamed) == max(old.values()) + 1
