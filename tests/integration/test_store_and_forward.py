"""Store-and-forward under pressure, in process, against real SQLite files and a real mosquitto:
priority shares, capacity and overflow policies, a full disk (SQLite `max_page_count`), live
events beside a paced backlog, a blackholed link only keepalive can notice, and broker size
limits (Maximum Packet Size and a message size limit)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import pytest

from agent.flow.mapping import Mapper
from agent.flow.pipeline import Pipeline
from agent.link.forwarder import BacklogPacing, Forwarder
from agent.link.mqtt_session import MqttSession
from buffer.base import BufferFull, Capacity, OverflowPolicy, OverflowReason, Record
from buffer.sqlite import SqliteBuffer
from config.schema import AgentConfig
from connectors.base import Reading
from events.models import BUFFER_OVERFLOW_TYPE
from events.wire import AgentIdentity, decode_batch
from testkit.blackhole import TcpProxy
from testkit.broker import MosquittoBroker, Subscriber
from testkit.durability import check_delivery, simulated_agent_config, user_property

TOPIC_BASE = "mfg/plant-a/edge-01/events"
IDENTITY = AgentIdentity(site="plant-a", agent="edge-01")
TELEMETRY, BUSINESS, CRITICAL = 0, 1, 2


def rec(name: str, priority: int = TELEMETRY, size: int = 100, kind: str = "") -> Record:
    kind = kind or {0: "telemetry.v1", 1: "production.count.v1", 2: "quality.hold.v1"}[priority]
    body = msgpack.packb({"id": name, "type": kind, "pad": "x" * size})
    return Record(id=name, kind=kind, priority=priority, body=body)


async def until(condition: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def forwarding(
    buffer: SqliteBuffer, host: str, port: int, *, keepalive_s: int = 30, **options: object
) -> AsyncIterator[tuple[MqttSession, Forwarder]]:
    session = MqttSession(
        host=host, port=port, client_id="sf-test", keepalive_s=keepalive_s,
        reconnect_min_s=0.1, reconnect_max_s=0.5, connect_timeout_s=2.0,
    )
    async with session:
        forwarder = Forwarder(
            buffer, session, topic_base=TOPIC_BASE, identity=IDENTITY, batch_max_wait_s=0.01,
            **options,  # type: ignore[arg-type]  # each one is a Forwarder keyword
        )
        task = asyncio.create_task(forwarder.run())
        try:
            yield session, forwarder
        finally:
            await forwarder.drain(5)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def events_of(subscriber: Subscriber) -> list[dict[str, object]]:
    return [event for m in subscriber.messages for event in decode_batch(m.payload)]


# --- priority without starvation --------------------------------------------------------------


async def test_each_lease_is_shared_8_4_1_and_no_class_starves(tmp_path: Path) -> None:
    async with SqliteBuffer.open(tmp_path / "b.sqlite") as buffer:
        for priority in (TELEMETRY, BUSINESS, CRITICAL):
            await buffer.append([rec(f"{priority}-{n}", priority) for n in range(100)])
        shares = {CRITICAL: 8, BUSINESS: 4, TELEMETRY: 1}
        first = await buffer.lease(13, shares=shares)
        assert [r.priority for r in first].count(CRITICAL) == 8
        assert [r.priority for r in first].count(BUSINESS) == 4
        assert [r.priority for r in first].count(TELEMETRY) == 1
        # Within a class, seq order; a class's unused share goes to the others.
        leased = first + await buffer.lease(1_000, shares=shares)
        for priority in (TELEMETRY, BUSINESS, CRITICAL):
            seqs = [r.seq for r in leased if r.priority == priority]
            assert seqs == sorted(seqs) and len(seqs) == 100


# --- capacity and overflow policies -----------------------------------------------------------


async def test_telemetry_is_evicted_oldest_first_and_named_business_is_never_evicted(
    tmp_path: Path,
) -> None:
    old_telemetry = [rec(f"t{n:02}") for n in range(10)]
    business = [rec(f"b{n:02}", BUSINESS) for n in range(8)]
    exact = sum(len(r.body) for r in old_telemetry + business)
    capacity = Capacity(max_pending_bytes=exact, policies={TELEMETRY: "evict_oldest"})
    async with SqliteBuffer.open(tmp_path / "b.sqlite", capacity=capacity) as buffer:
        assert not (await buffer.append(old_telemetry)).overflow  # seq 1-10
        assert not (await buffer.append(business)).overflow  # seq 11-18: exactly full
        result = await buffer.append([rec(f"t{n}") for n in range(10, 15)])  # seq 19-23
        assert result.accepted == 5
        (report,) = result.overflow
        assert (report.priority, report.kind) == (TELEMETRY, "telemetry.v1")
        assert report.reason == "evicted"
        assert report.seq_ranges == ((1, 5),) and report.count == 5  # the oldest five
        stats = await buffer.stats()
        assert stats.evictions[(TELEMETRY, "telemetry.v1", "evicted")] == report.count
        # max_pending_bytes was set above: an int, not None.
        assert stats.pending_bytes <= capacity.max_pending_bytes  # type: ignore[operator]
        # Business fills the rest: telemetry goes first, then business blocks.
        with pytest.raises(BufferFull):
            for n in range(40):
                await buffer.append([rec(f"b-more{n}", BUSINESS)])
        pending = await buffer.lease(1_000)
        assert {r.id for r in pending if r.priority == BUSINESS} >= {r.id for r in business}
        # Acked (delivered) rows do not count: delivering makes room again.
        await buffer.ack([r.seq for r in pending])
        assert (await buffer.append([rec("b-after", BUSINESS)])).accepted == 1


@pytest.mark.parametrize(("policy", "reason"), [("sample", "sampled"), ("refuse", "refused")])
async def test_sample_keeps_one_in_n_and_refuse_turns_new_telemetry_away(
    tmp_path: Path, policy: OverflowPolicy, reason: OverflowReason
) -> None:
    first = [rec(f"t{n:02}") for n in range(10)]
    capacity = Capacity(
        max_pending_bytes=sum(len(r.body) for r in first),
        policies={TELEMETRY: policy},
        sample_keep_one_in=5,
    )
    async with SqliteBuffer.open(tmp_path / "b.sqlite", capacity=capacity) as buffer:
        assert not (await buffer.append(first)).overflow  # exactly full
        result = await buffer.append([rec(f"t{n:02}") for n in range(10, 30)])
        given_up = {o.reason: o.count for o in result.overflow}
        if policy == "sample":
            assert result.accepted == 4 and given_up["sampled"] == 16
            assert given_up["evicted"] == 4  # the oldest made room for the kept ones
        else:
            assert result.accepted == 0 and given_up == {"refused": 20}
        assert (await buffer.stats()).evictions[(TELEMETRY, "telemetry.v1", reason)] == given_up[
            reason
        ]


# --- a full disk -------------------------------------------------------------------------------


def sim_config(tmp_path: Path, hub_url: str = "mqtt://127.0.0.1:1") -> AgentConfig:
    text = simulated_agent_config(hub_url=hub_url, state_dir=tmp_path / "state")
    return AgentConfig.model_validate(tomllib.loads(text))


def readings(start: int, count: int) -> list[Reading]:
    return [
        Reading("sim", "count", n, datetime.fromtimestamp(1_700_000_000 + n / 100, UTC))
        for n in range(start, start + count)
    ]


async def test_a_full_disk_pauses_business_and_recovers_when_space_returns(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """SQLite's max_page_count makes the disk full. Business events are never evicted: the
    pipeline holds them and blocks its sources, says so, and goes on once the forwarder has
    delivered (and delivered rows make room)."""
    config = sim_config(tmp_path)
    path = tmp_path / "b.sqlite"
    async with SqliteBuffer.open(path, max_page_count=60, retention_s=3600) as buffer:
        pipeline = Pipeline(
            Mapper.from_config(config), buffer, site="plant-a", agent="edge-01", max_pending=500
        )
        runner = asyncio.create_task(pipeline.run())
        produced = 0
        keep_producing = True

        async def produce() -> None:  # a source: emit blocks while the buffer is full
            nonlocal produced
            while keep_producing:
                await pipeline.emit(readings(produced, 200))
                produced += 200
                await asyncio.sleep(0.01)

        producer = asyncio.create_task(produce())
        await until(lambda: pipeline.counters.backpressure, "backpressure", limit_s=30)
        assert produced < 100_000
        # The queue takes what is in flight, then the source stalls: emit blocks.
        stalled_at = -1
        for _ in range(20):
            if produced == stalled_at:
                break
            stalled_at = produced
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"the source never stalled while the buffer was full ({produced})")
        assert not producer.done() and pipeline.counters.backpressure
        with Subscriber(broker, f"{TOPIC_BASE}/#") as subscriber:
            async with forwarding(buffer, broker.host, broker.port):
                await until(lambda: produced >= stalled_at + 2_000, "the source to go on")
                keep_producing = False
                await asyncio.wait_for(producer, timeout=20)
                await until(lambda: not pipeline.counters.backpressure, "backpressure released")
                await until(
                    lambda: pipeline.counters.events_accepted_total == produced,
                    "every reading accepted (none given up)",
                    limit_s=40,
                )
                await until(
                    lambda: len({e["id"] for e in events_of(subscriber)}) >= produced,
                    "everything accepted delivered",
                    limit_s=40,
                )
            runner.cancel()
            report = check_delivery(path, subscriber.messages)
    assert pipeline.counters.events_accepted_total == produced  # nothing was given up
    assert report.ok, report.describe()


def beyond_free_space(path: Path) -> int:
    """A disk-free reserve the file system of `path` cannot meet: it must count as full."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize + 2**40


async def test_a_reserve_above_the_free_space_drops_replay_then_evicts_telemetry_then_blocks(
    tmp_path: Path,
) -> None:
    """No mock: the reserve is set above what the test's file system really has free, so the
    buffer must treat the disk as full; reopened with a reserve it can meet, it takes all."""
    path = tmp_path / "b.sqlite"
    async with SqliteBuffer.open(path) as buffer:
        delivered = [rec(f"d{n}") for n in range(5)]
        await buffer.append(delivered)  # seq 1-5, delivered and retained for replay
        await buffer.ack([1, 2, 3, 4, 5])
        await buffer.append([rec(f"t{n}") for n in range(10)])  # seq 6-15
        await buffer.append([rec(f"b{n}", BUSINESS) for n in range(5)])  # seq 16-20
    short = Capacity(
        disk_free_reserve_bytes=beyond_free_space(tmp_path), policies={TELEMETRY: "evict_oldest"}
    )
    async with SqliteBuffer.open(path, capacity=short) as buffer:
        # Delivered rows kept for replay go first: they free the room for this batch.
        first = await buffer.append([rec("t-new0"), rec("t-new1")])
        assert (first.accepted, first.overflow) == (2, ())
        stats = await buffer.stats()
        assert stats.acked_retained == 0
        assert stats.evictions[(TELEMETRY, "telemetry.v1", "retained")] == 5
        # Nothing delivered left: pending telemetry makes the room, oldest first, reported.
        second = await buffer.append([rec("t-new2")])
        assert second.accepted == 1
        (evicted,) = second.overflow
        assert (evicted.priority, evicted.reason) == (TELEMETRY, "evicted")
        assert evicted.seq_ranges[0][0] == 6  # the oldest pending telemetry
        # Business takes the room of telemetry; once only business is left, it blocks:
        # nothing accepted, the caller must hold it (backpressure).
        accepted_business = 0
        with pytest.raises(BufferFull):
            for n in range(100):
                result = await buffer.append([rec(f"b-new{n}", BUSINESS)])
                assert {o.priority for o in result.overflow} <= {TELEMETRY}
                accepted_business += result.accepted
        stats = await buffer.stats()
        # What telemetry is left (if any) is less than the room a short disk asks for
        # (twice the batch: freed rows do not map to pages one to one).
        left = stats.pending_by_priority.get(TELEMETRY, 0)
        assert left <= 1
        assert stats.pending_by_priority[BUSINESS] == 5 + accepted_business
        assert stats.evictions[(TELEMETRY, "telemetry.v1", "evicted")] == 13 - left
        assert stats.last_seq == 23 + accepted_business  # no seq used by what was refused
    room = Capacity(disk_free_reserve_bytes=1, policies={TELEMETRY: "evict_oldest"})
    async with SqliteBuffer.open(path, capacity=room) as buffer:
        assert (await buffer.append([rec("b-later", BUSINESS)])).accepted == 1
        assert (await buffer.stats()).pending_by_priority[BUSINESS] == 6 + accepted_business


async def test_a_reserve_above_the_free_space_pauses_business_sources_until_it_is_lowered(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """The pipeline against a disk that is short for real (the reserve exceeds the free
    space): business readings are held and the source blocks, backpressure is on (what
    status shows); lowering the reserve below the free space lets everything in, nothing lost."""
    config = sim_config(tmp_path)
    path = tmp_path / "b.sqlite"
    short = Capacity(
        disk_free_reserve_bytes=beyond_free_space(tmp_path), policies={TELEMETRY: "evict_oldest"}
    )
    async with SqliteBuffer.open(path, capacity=short) as buffer:
        pipeline = Pipeline(
            Mapper.from_config(config), buffer, site="plant-a", agent="edge-01", max_pending=300
        )
        runner = asyncio.create_task(pipeline.run())
        produced = 0
        keep_producing = True

        async def produce() -> None:  # a business source: emit blocks while the disk is short
            nonlocal produced
            while keep_producing:
                await pipeline.emit(readings(produced, 100))
                produced += 100
                await asyncio.sleep(0.01)

        producer = asyncio.create_task(produce())
        await until(lambda: pipeline.counters.backpressure, "backpressure", limit_s=30)
        stalled_at = -1
        for _ in range(20):
            if produced == stalled_at:
                break
            stalled_at = produced
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"the source never stalled while the disk was short ({produced})")
        assert pipeline.counters.events_accepted_total == 0
        assert pipeline.counters.backpressure_since is not None
        assert (await buffer.stats()).pending == 0
        # Space "returns": a reserve the disk meets (re-checked at most once a second).
        buffer.capacity = dataclasses.replace(short, disk_free_reserve_bytes=1)
        await until(lambda: not pipeline.counters.backpressure, "backpressure released")
        await until(lambda: produced >= stalled_at + 1_000, "the source to go on")
        keep_producing = False
        await asyncio.wait_for(producer, timeout=20)
        await until(lambda: pipeline.queued == 0, "the queue to drain")
        await until(
            lambda: pipeline.counters.events_accepted_total == produced, "every reading accepted"
        )
        with Subscriber(broker, f"{TOPIC_BASE}/#") as subscriber:
            async with forwarding(buffer, broker.host, broker.port):
                await until(
                    lambda: len({e["id"] for e in events_of(subscriber)}) >= produced,
                    "everything accepted delivered",
                    limit_s=40,
                )
            runner.cancel()
            report = check_delivery(path, subscriber.messages)
    assert not pipeline.counters.overflow_total  # business: nothing given up
    assert report.ok and report.accepted == produced, report.describe()


# --- live first -------------------------------------------------------------------------------


async def test_live_events_are_not_stuck_behind_a_paced_backlog(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with SqliteBuffer.open(tmp_path / "b.sqlite") as buffer:
        await buffer.append([rec(f"old{n}", BUSINESS, 20) for n in range(3_000)])
        pacing = BacklogPacing(max_rate=300.0, jitter=0.2, start_delay_max_s=0.1)
        with Subscriber(broker, f"{TOPIC_BASE}/#") as subscriber:
            async with forwarding(buffer, broker.host, broker.port, pacing=pacing) as (
                session,
                forwarder,
            ):
                await session.wait_connected(10)
                await until(lambda: len(subscriber.messages) > 0, "the backlog drain to start")
                await buffer.append([rec(f"live{n}", TELEMETRY, 20) for n in range(20)])
                forwarder.wake()
                await until(
                    lambda: {f"live{n}" for n in range(20)}
                    <= {str(e["id"]) for e in events_of(subscriber)},
                    "the live events",
                )
                backlog_seen = {str(e["id"]) for e in events_of(subscriber)} - {
                    f"live{n}" for n in range(20)
                }
                assert len(backlog_seen) < 3_000, "live events waited for the whole backlog"
                for message in subscriber.messages:
                    ids = {str(e["id"]) for e in decode_batch(message.payload)}
                    marked = user_property(message, "backlog") == "true"
                    assert marked == all(i.startswith("old") for i in ids), (ids, marked)
                await until(lambda: len(events_of(subscriber)) >= 3_020, "the backlog", 40)


# --- a link only keepalive can notice -------------------------------------------------------------


async def test_a_blackholed_broker_is_noticed_by_keepalive_and_nothing_is_lost(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    path = tmp_path / "b.sqlite"
    with TcpProxy(broker.port) as proxy, Subscriber(broker, f"{TOPIC_BASE}/#") as subscriber:
        async with SqliteBuffer.open(path) as buffer:
            async with forwarding(buffer, "127.0.0.1", proxy.port, keepalive_s=2) as (
                session,
                forwarder,
            ):
                await session.wait_connected(10)
                sent = 0

                async def stream(count: int) -> None:
                    nonlocal sent
                    for _ in range(count):
                        await buffer.append([rec(f"e{sent}", BUSINESS, 30)])
                        sent += 1
                        forwarder.wake()
                        await asyncio.sleep(0.005)

                await stream(200)
                proxy.blackhole()
                await stream(100)
                assert await session.wait_disconnected(timeout=15), "keepalive never noticed"
                await stream(100)
                proxy.forward()
                await session.wait_connected(15)
                await stream(100)
                await until(
                    lambda: len({e["id"] for e in events_of(subscriber)}) >= sent,
                    "every event at the hub",
                )
        report = check_delivery(path, subscriber.messages)
    assert report.accepted == 500 and report.ok, report.describe()


# --- broker size limits -----------------------------------------------------------------------


async def test_batches_split_to_the_brokers_limits_and_oversized_events_are_dead_lettered(
    tmp_path: Path,
) -> None:
    with MosquittoBroker(["max_packet_size 20000", "message_size_limit 4000"]) as broker:
        with Subscriber(broker, f"{TOPIC_BASE}/#") as subscriber:
            async with SqliteBuffer.open(tmp_path / "b.sqlite") as buffer:
                await buffer.append([rec(f"a{n}", BUSINESS, 100) for n in range(200)])
                await buffer.append([rec("too-big-for-limit", BUSINESS, 6_000)])
                await buffer.append([rec("too-big-for-packet", BUSINESS, 30_000)])
                await buffer.append([rec(f"b{n}", BUSINESS, 100) for n in range(200)])
                async with forwarding(buffer, broker.host, broker.port) as (_, forwarder):
                    await until(
                        lambda: len({e["id"] for e in events_of(subscriber)}) >= 400,
                        "the events that fit",
                    )
                    await until(lambda: forwarder.counters.events_dead_lettered_total == 2, "dlq")
                    settled = False
                    for _ in range(200):  # at-least-once: some may be sent again before acked
                        if (await buffer.stats()).pending == 0:
                            settled = True
                            break
                        await asyncio.sleep(0.1)
                    assert settled, "events still pending"
                letters = {d.id: d.reason for d in await buffer.dead_letters()}
                stats = await buffer.stats()
    assert set(letters) == {"too-big-for-limit", "too-big-for-packet"}
    # mosquitto 2.0 closes the connection over message_size_limit (no PUBACK 0x95).
    assert "closed the connection" in letters["too-big-for-limit"]
    assert "maximum packet size" in letters["too-big-for-packet"]
    assert stats.pending == 0
    assert all(len(m.payload) <= 4000 for m in subscriber.messages)
    assert forwarder.counters.messages_split_total > 0


async def test_overflow_becomes_an_agent_buffer_overflow_event(tmp_path: Path) -> None:
    config = sim_config(tmp_path)
    capacity = Capacity(max_pending_bytes=20_000, policies={TELEMETRY: "evict_oldest"})
    async with SqliteBuffer.open(tmp_path / "b.sqlite", capacity=capacity) as buffer:
        telemetry = [
            Reading("sim", "temp", n / 10, datetime.fromtimestamp(1_700_000_000 + n, UTC))
            for n in range(200)
        ]
        pipeline = Pipeline(Mapper.from_config(config), buffer, site="plant-a", agent="edge-01")
        runner = asyncio.create_task(pipeline.run())
        for start in range(0, 200, 20):
            await pipeline.emit(telemetry[start : start + 20])
            await until(lambda: pipeline.queued == 0, "the pipeline")
            await asyncio.sleep(0.02)
        runner.cancel()
        leased = await buffer.lease(10_000)
        reports = [msgpack.unpackb(r.body) for r in leased if r.kind == BUFFER_OVERFLOW_TYPE]
    assert reports, "no agent.buffer.overflow event"
    evicted = sum(r["data"]["count"] for r in reports if r["data"]["reason"] == "evicted")
    assert evicted > 0
    reported = sum(r["data"]["count"] for r in reports)
    assert reported + pipeline.overflow_unreported == sum(pipeline.counters.overflow_total.values())
    assert all(r["data"]["priority_class"] == "telemetry" for r in reports)
