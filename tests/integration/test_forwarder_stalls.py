"""Forwarding that stalls, against real peers (issue 13, items 4 and 5).

- A broker path that keeps the connection and PINGRESP alive but loses PUBACKs: a real
  mosquitto behind `testkit.mqtt_proxy.MqttProxy`, which parses the MQTT packets and
  swallows the broker's PUBACKs for a while. The session's PUBACK deadline drops the connection,
  the forwarder sends everything unacked again, and forwarding resumes by itself.
- A broker ACL that denies an event topic (PUBACK 0x87): a real mosquitto with an `acl_file`,
  rewritten and reloaded with SIGHUP. The topic's lane pauses (its events stay pending, nothing
  is dead-lettered), other topics keep flowing, the status says so, and the lane resumes by
  itself once the ACL allows it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest

from agent.link.forwarder import Forwarder
from agent.link.mqtt_session import MqttSession, PubAckTimeout
from agent.runtime import Agent
from buffer.base import Record
from buffer.sqlite import SqliteBuffer
from config.loader import ConfigError, load_config
from events.wire import decode_batch
from testkit.broker import MosquittoBroker, ReceivedMessage, Subscriber
from testkit.durability import simulated_agent_config
from testkit.events import decode_events
from testkit.mqtt_proxy import MqttProxy

TOPIC_BASE = "mfg/plant-a/edge-01/events"
TELEMETRY_TOPIC = f"{TOPIC_BASE}/telemetry.v1"
STATE_TOPIC = f"{TOPIC_BASE}/machine.state.v1"
# Generous: the machine is shared and loaded; every wait ends as soon as its condition holds.
WAIT_S = 30.0


def record(n: int, kind: str = "telemetry.v1") -> Record:
    body = msgpack.packb({"id": f"e{n}", "type": kind, "pad": "x" * 50})
    return Record(id=f"e{n}", kind=kind, priority=0, body=body)


async def until(condition: Callable[[], bool], what: str, limit_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for: {what}")
        await asyncio.sleep(0.05)


def received_seqs(subscriber: Subscriber) -> set[int]:
    return {
        event["seq"]
        for message in subscriber.messages
        if "/events/" in message.topic
        for event in decode_batch(message.payload)
    }


@asynccontextmanager
async def forwarding(
    buffer: SqliteBuffer, session: MqttSession, **options: Any
) -> AsyncIterator[Forwarder]:
    async with session:
        forwarder = Forwarder(buffer, session, topic_base=TOPIC_BASE, **options)
        task = asyncio.create_task(forwarder.run())
        try:
            yield forwarder
        finally:
            await forwarder.drain(5)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def session_through(proxy: MqttProxy, puback_timeout_s: float) -> MqttSession:
    return MqttSession(
        host=proxy.host,
        port=proxy.port,
        client_id="stall-test",
        puback_timeout_s=puback_timeout_s,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        connect_timeout_s=5.0,
    )


# -- item 4: PUBACK deadline -----------------------------------------------------------------


async def test_a_puback_stall_drops_the_connection_and_forwarding_resumes_by_itself(
    tmp_path: Path,
) -> None:
    """Without a deadline the forwarder's window (max_inflight) stays full of messages whose
    PUBACK was swallowed, for good, even once PUBACKs flow again."""
    with MosquittoBroker() as broker, Subscriber(broker, f"{TOPIC_BASE}/#") as subscriber:
        async with MqttProxy(broker.port) as proxy, SqliteBuffer.open(
            tmp_path / "buffer.sqlite"
        ) as buffer:
            session = session_through(proxy, puback_timeout_s=2.0)
            async with forwarding(
                buffer, session, batch_max_events=5, max_inflight=4, batch_max_wait_s=0.01
            ) as forwarder:
                await buffer.append([record(n) for n in range(1, 11)])
                forwarder.wake()
                await until(lambda: forwarder.counters.events_forwarded_total == 10, "10 acked")

                proxy.swallow_pubacks = True
                await buffer.append([record(n) for n in range(11, 51)])
                forwarder.wake()
                await until(lambda: proxy.pubacks_swallowed >= 4, "the in-flight window full")
                await until(lambda: session.puback_timeouts_total >= 1, "the PUBACK deadline")
                stats = await buffer.stats()
                assert stats.pending == 40, "nothing is acked without its PUBACK"
                assert forwarder.counters.events_forwarded_total == 10

                proxy.swallow_pubacks = False  # the path heals: nobody touches the agent
                await until(
                    lambda: forwarder.counters.events_forwarded_total == 50, "all 50 acked"
                )
                stats = await buffer.stats()
            await until(lambda: received_seqs(subscriber) >= set(range(1, 51)), "all at the hub")
    assert stats.pending == 0 and stats.dead_letters == 0
    assert forwarder.counters.events_dead_lettered_total == 0
    assert session.connection_epoch >= 2, "the stalled connection was replaced"
    assert proxy.connections_total >= 2


async def test_the_session_fails_a_stalled_publish_once_and_reconnects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with MosquittoBroker() as broker:
        async with MqttProxy(broker.port) as proxy:
            proxy.swallow_pubacks = True
            async with session_through(proxy, puback_timeout_s=1.0) as session:
                assert await session.wait_connected(WAIT_S)
                sent_at = time.monotonic()
                stalled = session.publish(TELEMETRY_TOPIC, b"\x90", qos=1)
                with pytest.raises(PubAckTimeout) as raised:
                    await asyncio.wait_for(stalled, WAIT_S)
                waited_s = time.monotonic() - sent_at
                await until(
                    lambda: session.connected and session.connection_epoch == 2, "reconnected"
                )
                proxy.swallow_pubacks = False
                ack = await asyncio.wait_for(
                    session.publish(TELEMETRY_TOPIC, b"\x90", qos=1), WAIT_S
                )
    assert ack.ok
    assert waited_s >= 1.0, "not before the deadline"
    assert "1 message(s) in flight" in str(raised.value)
    assert session.puback_timeouts_total == 1
    stall_lines = [r for r in caplog.records if "no PUBACK within" in r.getMessage()]
    assert len(stall_lines) == 1, [r.getMessage() for r in stall_lines]
    assert stall_lines[0].levelno == logging.WARNING
    assert "1 message(s) in flight, the oldest sent" in stall_lines[0].getMessage()


# -- item 5: an ACL that denies one event topic ------------------------------------------------

DENY_STATE = f"topic readwrite {TELEMETRY_TOPIC}\ntopic read mfg/#\n"
ALLOW_ALL = "topic readwrite mfg/#\n"


async def test_a_denied_topic_pauses_its_lane_and_resumes_after_the_acl_is_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with MosquittoBroker(["acl_file {workdir}/acl"], files={"acl": DENY_STATE}) as broker, (
        Subscriber(broker, f"{TOPIC_BASE}/#")
    ) as subscriber:
        async with SqliteBuffer.open(tmp_path / "buffer.sqlite") as buffer:
            session = MqttSession(
                host=broker.host, port=broker.port, client_id="acl-test",
                reconnect_min_s=0.1, reconnect_max_s=0.5,
            )
            async with forwarding(
                buffer, session, batch_max_events=10, batch_max_wait_s=0.01,
                lane_probe_min_s=0.2, lane_probe_max_s=1.0,
            ) as forwarder:
                first = [
                    record(n, "machine.state.v1" if n % 3 == 0 else "telemetry.v1")
                    for n in range(1, 31)
                ]
                await buffer.append(first)
                forwarder.wake()
                await until(lambda: forwarder.paused_topics == (STATE_TOPIC,), "lane paused")
                await until(lambda: forwarder.counters.events_forwarded_total == 20, "20 sent")
                await until(lambda: forwarder.counters.lane_probes_total >= 2, "probed again")
                [lane] = forwarder.paused_lanes()
                during = await buffer.stats()
                # Other topics keep flowing while the lane is paused.
                await buffer.append([record(n) for n in range(31, 41)])
                forwarder.wake()
                await until(lambda: forwarder.counters.events_forwarded_total == 30, "30 sent")

                broker.write_file("acl", ALLOW_ALL)
                broker.reload()  # SIGHUP: mosquitto reloads the ACL, connections stay
                await until(lambda: forwarder.paused_topics == (), "lane resumed")
                await until(lambda: forwarder.counters.events_forwarded_total >= 40, "all sent")
                after = await buffer.stats()
            await until(lambda: received_seqs(subscriber) >= set(range(1, 41)), "all at hub")
    assert (lane["topic"], lane["reason_code"]) == (STATE_TOPIC, 0x87)
    assert lane["reason"] == "Not authorized (0x87)"
    assert during.pending == 10 and during.dead_letters == 0, "denied events stay pending"
    assert after.pending == 0 and after.dead_letters == 0
    assert forwarder.counters.events_dead_lettered_total == 0
    assert forwarder.counters.lanes_paused_total == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "agent.link.forwarder"]
    paused_lines = [m for m in messages if "hub refuses topic" in m]
    assert paused_lines == [paused_lines[0]] and STATE_TOPIC in paused_lines[0], messages
    assert "0x87" in paused_lines[0]
    assert len([m for m in messages if "hub accepts topic" in m]) == 1
    assert not [m for m in messages if "dead letters" in m]


def acl_agent_config(tmp_path: Path, broker: MosquittoBroker) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        simulated_agent_config(hub_url=broker.url, state_dir=tmp_path / "state", rate_hz=20)
    )
    return path


def status_documents(subscriber: Subscriber) -> list[dict[str, Any]]:
    return [
        json.loads(message.payload)
        for message in subscriber.messages
        if message.topic.endswith("/status")
    ]


def is_denial_status(message: ReceivedMessage) -> bool:
    if not message.topic.endswith("/status"):
        return False
    lanes = json.loads(message.payload).get("forwarder", {}).get("paused_lanes", [])
    return any(lane["topic"].endswith("/production.count.v1") for lane in lanes)


async def test_the_agent_status_shows_a_denied_topic_while_it_lasts(tmp_path: Path) -> None:
    """The real agent (in this loop, simulated source): production counts are denied by the
    ACL, telemetry is not; then the ACL is fixed and reloaded."""
    denied = (
        "topic readwrite mfg/plant-a/edge-01/events/telemetry.v1\n"
        "topic readwrite mfg/plant-a/edge-01/status\n"
        "topic read mfg/#\n"
    )
    with MosquittoBroker(["acl_file {workdir}/acl"], files={"acl": denied}) as broker, (
        Subscriber(broker, "mfg/#")
    ) as subscriber:
        config = load_config(acl_agent_config(tmp_path, broker))
        stop = asyncio.Event()
        async with Agent.open(config) as agent:
            task = asyncio.create_task(agent.run(stop))
            try:
                await subscriber.wait_for_async(is_denial_status, timeout=WAIT_S)
                counts_before = [
                    e for e in decode_events(subscriber.messages)
                    if e["type"] == "production.count.v1"
                ]
                telemetry_during = len(
                    [e for e in decode_events(subscriber.messages) if e["type"] == "telemetry.v1"]
                )
                pending_during = (await agent.buffer.stats()).pending
                denied_up_to = agent.buffer.last_seq

                broker.write_file("acl", ALLOW_ALL)
                broker.reload()

                def delivered_up_to_denial() -> bool:
                    seqs = {e["seq"] for e in decode_events(subscriber.messages)}
                    return seqs >= set(range(1, denied_up_to + 1))

                await until(delivered_up_to_denial, f"every seq up to {denied_up_to} at the hub")
                await until(lambda: agent.forwarder.paused_topics == (), "lane resumed")
                await until(
                    lambda: status_documents(subscriber)[-1]["forwarder"]["paused_lanes"] == [],
                    "a status without the paused lane",
                )
                dead_letters = (await agent.buffer.stats()).dead_letters
            finally:
                stop.set()
                await asyncio.wait_for(task, timeout=WAIT_S)
    [denial] = [
        lane
        for document in status_documents(subscriber)
        for lane in document.get("forwarder", {}).get("paused_lanes", [])
    ][:1]
    assert denial["topic"] == "mfg/plant-a/edge-01/events/production.count.v1"
    assert denial["reason_code"] == 0x87
    assert counts_before == [], "no production count got through the denial"
    assert telemetry_during > 0, "telemetry kept flowing"
    assert pending_during > 0
    assert dead_letters == 0
    assert agent.forwarder.counters.events_dead_lettered_total == 0


# -- which refusals pause a lane and which dead-letter a message -------------------------------


async def test_topic_name_invalid_pauses_the_lane_like_not_authorized(tmp_path: Path) -> None:
    """0x90 (topic name invalid) is about the topic, never one message: the lane pauses and
    resumes as for 0x87. A stock mosquitto never answers 0x90, so the MQTT-aware proxy rewrites
    the broker's PUBACKs for that topic (the one stand-in in this file)."""
    with MosquittoBroker() as broker:
        async with MqttProxy(broker.port) as proxy, SqliteBuffer.open(
            tmp_path / "buffer.sqlite"
        ) as buffer:
            proxy.refuse(STATE_TOPIC, 0x90)
            session = session_through(proxy, puback_timeout_s=30.0)
            async with forwarding(
                buffer, session, batch_max_events=10, batch_max_wait_s=0.01,
                lane_probe_min_s=0.2, lane_probe_max_s=0.5,
            ) as forwarder:
                await buffer.append([record(1), record(2, "machine.state.v1"), record(3)])
                forwarder.wake()
                await until(lambda: forwarder.paused_topics == (STATE_TOPIC,), "lane paused")
                await until(lambda: forwarder.counters.events_forwarded_total == 2, "2 sent")
                [lane] = forwarder.paused_lanes()
                proxy.allow(STATE_TOPIC)
                await until(lambda: forwarder.paused_topics == (), "lane resumed")
                await until(lambda: forwarder.counters.events_forwarded_total >= 3, "3 sent")
                stats = await buffer.stats()
    assert lane["reason_code"] == 0x90
    assert stats.pending == 0 and stats.dead_letters == 0


async def test_a_payload_refusal_still_dead_letters_that_message_only(tmp_path: Path) -> None:
    """0x99 (payload format invalid) is about the message: it goes to dead letters with the
    reason, nothing pauses, the rest flows. The proxy stands in for a broker that says 0x99."""
    with MosquittoBroker() as broker:
        async with MqttProxy(broker.port) as proxy, SqliteBuffer.open(
            tmp_path / "buffer.sqlite"
        ) as buffer:
            proxy.refuse(STATE_TOPIC, 0x99)
            session = session_through(proxy, puback_timeout_s=30.0)
            async with forwarding(
                buffer, session, batch_max_events=10, batch_max_wait_s=0.01
            ) as forwarder:
                await buffer.append([record(1), record(2, "machine.state.v1"), record(3)])
                forwarder.wake()
                await until(
                    lambda: forwarder.counters.events_forwarded_total == 2
                    and forwarder.counters.events_dead_lettered_total == 1,
                    "2 sent and 1 dead-lettered",
                )
                stats = await buffer.stats()
                paused = forwarder.paused_topics
    assert stats.pending == 0 and stats.dead_letters == 1
    assert paused == ()
    assert proxy.pubacks_rewritten == 1


# -- the config key --------------------------------------------------------------------------


def test_the_puback_deadline_is_a_validated_hub_setting(tmp_path: Path) -> None:
    def config_with(line: str) -> Path:
        path = tmp_path / "agent.toml"
        path.write_text(
            simulated_agent_config(
                hub_url="mqtt://127.0.0.1:1883", state_dir=tmp_path / "state", extra_hub=line
            )
        )
        return path

    assert load_config(config_with("")).hub.puback_timeout_s == 30.0
    assert load_config(config_with("puback_timeout_s = 5")).hub.puback_timeout_s == 5.0
    with pytest.raises(ConfigError) as caught:
        load_config(config_with("puback_timeout_s = 0"))
    [problem] = caught.value.problems
    assert problem.key == "hub.puback_timeout_s" and "at least 1" in problem.message, problem
