"""The forwarder against a real mosquitto and a real SQLite buffer: the ack rule, broker
limits and refusals, in every hub format (`[hub] format`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import msgpack
import pytest

from agent.link.forwarder import Forwarder
from agent.link.mqtt_session import MqttSession
from buffer.base import Record
from buffer.sqlite import SqliteBuffer
from events.formats import FORMATS, FormatName
from testkit.broker import MosquittoBroker, ReceivedMessage, Subscriber
from testkit.cloudevents_hub import read_message

TOPIC_BASE = "mfg/plant-a/edge-01/events"
EVERY_FORMAT = pytest.mark.parametrize("wire_format", sorted(FORMATS))


def record(n: int, size: int = 50, kind: str = "telemetry.v1") -> Record:
    body = msgpack.packb({
        "specversion": "1.0", "id": f"e{n}", "type": kind, "source": "/plant-a/edge-01/test",
        "site": "plant-a", "agent": "edge-01", "data": {"signal": "s", "pad": "x" * size},
    })
    return Record(id=f"e{n}", kind=kind, priority=0, body=body)


async def until(condition: Callable[[], bool], what: str, limit_s: float = 15.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def seqs_read_by_the_sdk(messages: list[ReceivedMessage]) -> list[int]:
    """The `seq` of every event, each message read as a hub would, with the CloudEvents SDK."""
    return [
        int(event.get_extension("seq"))  # binary mode: its canonical string
        for message in messages
        for event in read_message(
            message.topic, message.payload, message.content_type,
            [(str(k), str(v)) for k, v in getattr(message.properties, "UserProperty", [])],
        ).events
    ]


@asynccontextmanager
async def forwarding(
    tmp_path: Path,
    broker: MosquittoBroker,
    *,
    batch_max_events: int,
    wire_format: FormatName = "cloudevents-batch-msgpack",
) -> AsyncIterator[tuple[SqliteBuffer, Forwarder]]:
    async with SqliteBuffer.open(tmp_path / "buffer.sqlite") as buffer:
        session = MqttSession(host=broker.host, port=broker.port, client_id="fwd-test")
        async with session:
            forwarder = Forwarder(
                buffer, session, topic_base=TOPIC_BASE, batch_max_wait_s=0.01,
                batch_max_events=batch_max_events, wire_format=FORMATS[wire_format],
            )
            task = asyncio.create_task(forwarder.run())
            try:
                yield buffer, forwarder
            finally:
                await forwarder.drain(5)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


@EVERY_FORMAT
async def test_oversized_batches_are_split_and_an_oversized_event_is_dead_lettered(
    tmp_path: Path, wire_format: FormatName
) -> None:
    with MosquittoBroker(["max_packet_size 3000"]) as broker, Subscriber(
        broker, f"{TOPIC_BASE}/#"
    ) as subscriber:
        async with forwarding(
            tmp_path, broker, batch_max_events=100, wire_format=wire_format
        ) as (buffer, forwarder):
            records = [record(n, size=200) for n in range(1, 41)]
            records.insert(20, record(999, size=5000))  # cannot fit any message
            await buffer.append(records)
            forwarder.wake()
            await until(lambda: forwarder.counters.events_forwarded_total == 40, "40 forwarded")
            stats = await buffer.stats()
        messages = subscriber.messages
    assert stats.pending == 0 and stats.dead_letters == 1
    assert forwarder.counters.events_dead_lettered_total == 1
    assert len(messages) > 1, "the batch was split"
    assert all(len(message.payload) < 3000 for message in messages)
    seqs = seqs_read_by_the_sdk(messages)
    oversized_seq = 21
    assert sorted(seqs) == [seq for seq in range(1, 42) if seq != oversized_seq]


@EVERY_FORMAT
async def test_a_denied_topic_keeps_its_events_pending_and_the_rest_flows(
    tmp_path: Path, wire_format: FormatName
) -> None:
    # The broker's ACL lets this client publish telemetry but not machine states: mosquitto
    # answers the refused publish with PUBACK 0x87 (not authorized) and keeps the connection.
    # A hub configuration fault, not a poison message: the event stays pending (issue 13,
    # item 5; the lane resuming is tested in test_forwarder_stalls.py).
    acl = f"topic readwrite {TOPIC_BASE}/telemetry.v1\n"
    with MosquittoBroker(["acl_file {workdir}/acl"], files={"acl": acl}) as broker, Subscriber(
        broker, f"{TOPIC_BASE}/#"
    ) as subscriber:
        async with forwarding(
            tmp_path, broker, batch_max_events=10, wire_format=wire_format
        ) as (buffer, forwarder):
            await buffer.append(
                [record(1), record(2, kind="machine.state.v1"), record(3), record(4)]
            )
            forwarder.wake()
            await until(
                lambda: forwarder.counters.events_forwarded_total == 3
                and forwarder.paused_topics == (f"{TOPIC_BASE}/machine.state.v1",),
                "3 forwarded and the machine.state lane paused",
            )
            stats = await buffer.stats()
        await subscriber.wait_for_async(1)
    assert stats.pending == 1 and stats.dead_letters == 0
    assert forwarder.counters.events_dead_lettered_total == 0
    received = seqs_read_by_the_sdk(subscriber.messages)
    assert received == [1, 3, 4]


@EVERY_FORMAT
async def test_nothing_is_acked_without_a_puback(tmp_path: Path, wire_format: FormatName) -> None:
    broker = MosquittoBroker()
    with broker:
        async with forwarding(
            tmp_path, broker, batch_max_events=5, wire_format=wire_format
        ) as (buffer, forwarder):
            await buffer.append([record(n) for n in range(1, 6)])
            forwarder.wake()
            await until(lambda: forwarder.counters.events_forwarded_total == 5, "5 forwarded")
            await asyncio.to_thread(broker.pause)  # the broker hangs: no PUBACK can come
            await buffer.append([record(n) for n in range(6, 11)])
            forwarder.wake()
            await until(lambda: forwarder.inflight > 0, "a publish in flight")
            await asyncio.sleep(0.5)
            stats = await buffer.stats()
            assert stats.pending == 5, "published but unacknowledged events stay pending"
            await asyncio.to_thread(broker.resume)
            await until(lambda: forwarder.counters.events_forwarded_total == 10, "10 forwarded")
            stats = await buffer.stats()
    assert stats.pending == 0


class _GatedAckBuffer(SqliteBuffer):
    """The real buffer, its `ack` held at a gate: the only way to make the ack loop's flush
    and the drain's last flush meet deterministically (not a mock: every ack still commits
    through SQLite once the gate opens)."""

    gate: asyncio.Event
    entered: asyncio.Event

    async def ack(self, seqs: Sequence[int]) -> None:
        self.entered.set()
        await self.gate.wait()
        await super().ack(seqs)


async def test_a_drain_waits_for_the_ack_in_progress_and_leaves_nothing_pending(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A clean stop while the ack loop is recording acks: the drain's last flush waits for
    that one (it holds the seqs) instead of finding nothing to ack and returning, after which
    the stop would cancel it mid-transaction and leave delivered events pending."""
    async with _GatedAckBuffer.open(tmp_path / "buffer.sqlite") as buffer:
        assert isinstance(buffer, _GatedAckBuffer)
        buffer.gate, buffer.entered = asyncio.Event(), asyncio.Event()
        session = MqttSession(host=broker.host, port=broker.port, client_id="drain-test")
        async with session:
            forwarder = Forwarder(
                buffer, session, topic_base=TOPIC_BASE, batch_max_wait_s=0.01,
                batch_max_events=10, wire_format=FORMATS["cloudevents-batch-msgpack"],
            )
            task = asyncio.create_task(forwarder.run())
            try:
                await buffer.append([record(n) for n in range(1, 31)])
                forwarder.wake()
                await asyncio.wait_for(buffer.entered.wait(), 15)  # an ack is in progress
                drain = asyncio.create_task(forwarder.drain(10))
                await asyncio.sleep(0.3)  # the drain reached its last flush (or returned)
                buffer.gate.set()
                await asyncio.wait_for(drain, 15)
            finally:
                buffer.gate.set()
                task.cancel()  # what the runtime does once the drain returned
                await asyncio.gather(task, return_exceptions=True)
        stats = await buffer.stats()
    assert stats.pending == 0, f"{stats.pending} delivered event(s) left pending"
    assert forwarder.counters.events_forwarded_total == 30
