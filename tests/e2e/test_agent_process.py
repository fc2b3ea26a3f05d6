"""The real `edge-agent run` process against a real asyncua server and a real mosquitto,
killed with SIGKILL and started again on the same state dir."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.demo.plant import FILLER_TEMPERATURE, GOOD_COUNT, FillingLinePlant
from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker, Subscriber
from testkit.events import EVENTS_TOPIC, accepted_in_buffer, decode_events, unique_by_id
from testkit.plant import agent_config_text

SUBSCRIBED = "subscribed to 3 of 3 nodes"


def setup(tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant) -> AgentProcess:
    config = tmp_path / "agent.toml"
    config.write_text(
        agent_config_text(hub_url=broker.url, opcua_port=plant.port, state_dir=tmp_path / "state")
    )
    return AgentProcess(config, tmp_path / "agent.log")


async def hub_events(subscriber: Subscriber) -> dict[str, dict[str, Any]]:
    return unique_by_id(decode_events(subscriber.messages))


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], what: str, limit_s: float = 20.0
) -> None:
    deadline = time.monotonic() + limit_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_sigkill_mid_stream_loses_nothing_and_seq_continues(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    agent = setup(tmp_path, broker, plant)
    state = tmp_path / "state" / "buffer.sqlite"
    count = 0

    async def produce() -> None:  # the line keeps running whatever happens to the agent
        nonlocal count
        while True:
            count += 1
            await plant.write(GOOD_COUNT, count)
            await plant.write(FILLER_TEMPERATURE, 60.0 + count / 100)
            await asyncio.sleep(0.02)

    producer = asyncio.create_task(produce())
    try:
        with Subscriber(broker, EVENTS_TOPIC) as subscriber:
            agent.start()
            await asyncio.to_thread(agent.wait_log, SUBSCRIBED)
            await wait_until(_has(subscriber, 60), "60 events at the hub")
            await asyncio.to_thread(agent.kill)
            before = accepted_in_buffer(state)
            assert before, "the buffer accepted events before the kill"
            last_before = max(before.values())

            offset = len(agent.log_text())
            agent.start()
            await asyncio.to_thread(agent.wait_log, SUBSCRIBED, after=offset)

            async def moved_on() -> bool:
                events = await hub_events(subscriber)
                return any(event["seq"] > last_before + 40 for event in events.values())

            await wait_until(moved_on, "events after the restart")
            producer.cancel()
            assert await asyncio.to_thread(agent.terminate) == 0
            after = accepted_in_buffer(state)
            events = await hub_events(subscriber)
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
        agent.ensure_stopped()

    # Every event the buffer accepted, before and after the kill, reached the hub.
    assert set(after) - set(events) == set(), "accepted events missing at the hub"
    assert {i: e["seq"] for i, e in events.items()} == after
    # What was accepted before the kill kept its seq; seq went on from there with no gap.
    assert all(after[event_id] == seq for event_id, seq in before.items())
    assert sorted(after.values()) == list(range(1, len(after) + 1))
    assert max(after.values()) > last_before
    # The agent's production counts add up: increments after the restart continue from the
    # first value the new session saw (no double counting of what was already sent).
    counts = sorted(
        (e for e in events.values() if e["type"] == "production.count.v1"), key=lambda e: e["seq"]
    )
    assert [e["data"]["count"] for e in counts] == sorted(e["data"]["count"] for e in counts)


def _has(subscriber: Subscriber, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(await hub_events(subscriber)) >= count

    return check


async def test_restart_does_not_accept_the_same_facts_again(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    """OPC UA sends every current value again on a new subscription: same ids, no new seq."""
    agent = setup(tmp_path, broker, plant)
    state = tmp_path / "state" / "buffer.sqlite"
    status: list[dict[str, Any]] = []
    try:
        with Subscriber(broker, "mfg/plant-a/edge-01/#") as subscriber:
            for _ in range(2):
                offset = len(agent.log_text())
                agent.start()
                await asyncio.to_thread(agent.wait_log, SUBSCRIBED, after=offset)
                await asyncio.sleep(1.0)  # the initial values have arrived by now
                assert await asyncio.to_thread(agent.terminate) == 0
            events = decode_events(subscriber.messages)
            status = [
                json.loads(m.payload) for m in subscriber.messages if m.topic.endswith("/status")
            ]
    finally:
        agent.ensure_stopped()
    accepted = accepted_in_buffer(state)
    assert sorted(accepted.values()) == [1, 2, 3]
    assert {e["id"] for e in events} == set(accepted)
    # The status is also published on change (the source connecting): repeats of `online`.
    states = [s["state"] for s in status]
    runs = [state for index, state in enumerate(states) if index == 0 or states[index - 1] != state]
    assert runs == ["online", "offline", "online", "offline"]
    assert status[-1]["reason"] == "stopped"


async def test_will_says_offline_when_the_agent_is_killed(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    agent = setup(tmp_path, broker, plant)
    try:
        with Subscriber(broker, "mfg/plant-a/edge-01/status") as subscriber:
            agent.start()
            await asyncio.to_thread(agent.wait_log, SUBSCRIBED)
            await subscriber.wait_for_async(1, timeout=10)
            await asyncio.to_thread(agent.kill)
            messages = await subscriber.wait_for_async(2, timeout=10)
    finally:
        agent.ensure_stopped()
    states = [json.loads(message.payload) for message in messages]
    assert states[0]["state"] == "online" and states[0]["site"] == "plant-a"
    assert states[1] == {**states[1], "state": "offline", "reason": "connection lost"}
    # A consumer that connects later gets the retained status: offline.
    with Subscriber(broker, "mfg/plant-a/edge-01/status") as late:
        retained = await late.wait_for_async(1, timeout=10)
    assert retained[0].retain and json.loads(retained[0].payload)["state"] == "offline"
