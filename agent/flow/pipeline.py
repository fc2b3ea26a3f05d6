"""Pipeline: readings from every source → mapping → one buffer transaction per batch.

Sources hand readings to `emit`, which puts them on a bounded queue (`max_pending` readings):
when the buffer falls behind, `emit` blocks and the sources slow down; nothing is dropped here.
One task takes everything waiting (up to `max_batch`), maps it, and appends the events to the
buffer in one transaction (group commit), then wakes the forwarder. A reading is *accepted*
when that transaction commits; until then it exists only in memory, and `stop()` drains the
queue into the buffer before the agent exits (bounded by the grace period).

Commit futures: `emit` returns a future that completes once its readings are committed (the
queue is FIFO and batches commit in order, so this is when the commit count reaches the
count of readings emitted so far, its "ticket"); an unmappable reading counts once it is set
aside. A connector that holds its input until then (the MES file drop) awaits it. If the
agent stops before they commit, the future fails with `BufferUnavailable`.

When the buffer cannot take a batch, the batch is held and offered again with capped backoff;
meanwhile the queue fills and `emit` blocks, so the sources pause (backpressure):
- `BufferFull`: no room and the batch holds business/critical events, which are never evicted.
  Logged once as an error, shown in status (`backpressure`) until a batch goes in again.
- `BufferUnavailable` (I/O error, busy): logged once, retried the same way.
- `BufferCorrupt`: propagates; the agent stops (the next start moves the file aside).
- The counter baselines' pending write (`agent.flow.mapping_state`, before the commit) fails with
  the short-disk condition (`connectors.base.is_short_disk`: disk or quota full, read-only
  remount, I/O error, no descriptors left): the batch is held and does not commit (the
  baselines protocol needs that write first), `disk_short` shows in status, it is logged once
  when it starts and once when it ends, and the write is retried with the same capped backoff.
  Any other `OSError` there is not the disk's state but a fault (permissions): it propagates.

A record source with a `business_key` has each of its events judged before the append
(`agent.flow.corrections`): a repeat of a fact under another id is dropped, a correction carries
`supersedes`; what is remembered per key commits in the same transaction as the events.

While a retired major version is published beside its successor (`[contracts]
dual_publish_until`, `agent.flow.dual_publish`), each successor event's retired copy is
appended right after it, in the same transaction.

Whatever the buffer gave up for room (`AppendResult.overflow`) is counted per class and type
and becomes `agent.buffer.overflow.v1` events (critical by default) appended right after, so the
hub learns what it is missing and which seqs are gaps.

A reading that cannot be mapped (a dead-lettered master-data code, a value of the wrong type, a
state missing from its table, a signal nobody configured) is a poison record: it is counted
(`readings_unmappable_total`) and set aside in the buffer's dead-letter table
(`Buffer.set_aside`, listed by `edge-agent buffer dead-letters`) with the mapping error as the
reason, in the same commit cycle as the batch's events (right after them; one `set_aside` per
distinct reason). Its body is a msgpack map describing the reading (`unmappable_reading_body`),
never an event: it is kept for a person to look at, not for the hub. Its id is derived from the
fact (source, signal, timestamp, value), so a re-sent reading keeps its id. A set-aside MES record
keeps the delivery class of the event type it was to become (business for a completion).

An MES record that makes no event (its connector could not read it, `Reading.rejection`, or
its event model refused it) also becomes a `record.rejected.v1` event (critical), appended with
the batch's events (`Mapper.map_all`): the hub learns which orders failed to post and why. A
record whose interface has its own channel back (a file row: the `rejected/` report; a webhook
object: its 400) is not set aside as well; one from an interface table or a record the model
refused is. While the buffer
cannot take them they are held and retried like events; at stop, what could not go in is counted
in the log and not kept.

Why ~520 lines: the commit cycle (map, append, set aside, report overflow, settle the
commit futures) is one sequence with one retry rule; it stays in one file.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgpack

from agent.flow.corrections import Corrections
from agent.flow.dual_publish import DualPublisher
from agent.flow.mapping import Mapper
from agent.flow.mapping_state import CounterBaselines
from buffer.base import Buffer, BufferFull, BufferUnavailable, Overflow, Record
from connectors.backoff import Backoff
from connectors.base import Reading, is_short_disk
from events.kinds import EventKind, Priority
from events.models import BUFFER_OVERFLOW_TYPE, EVENT_TYPES, BufferOverflowV1, Event
from events.wire import encode_agent_event, encode_body

_log = logging.getLogger(__name__)

_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 2.0
_OVERFLOW_REPORT_ROUNDS = 3
_OVERFLOW_ID_NAMESPACE = uuid.UUID("0b8f3e8e-54f1-5b7c-9d0e-2f6a1c3b7d21")
_SET_ASIDE_ID_NAMESPACE = uuid.UUID("5d0c9a71-3e2b-5f48-8c61-7a4e2d9b0f13")
RECORD_REJECTED_TYPE = EVENT_TYPES[EventKind.RECORD_REJECTED].name
# The `kind` of a set-aside reading in the dead-letter table (it is not an event type).
UNMAPPABLE_READING_KIND = "agent.reading.unmappable"
CLASS_NAMES = {int(p): p.name.lower() for p in Priority}


@dataclass(slots=True)
class PipelineCounters:
    readings_total: int = 0
    events_accepted_total: int = 0
    events_duplicate_total: int = 0
    readings_unmappable_total: int = 0
    # Unmappable readings stored in the buffer's dead-letter table (`Buffer.set_aside`).
    readings_set_aside_total: int = 0
    # MES records rejected (`record.rejected` events made).
    records_rejected_total: int = 0
    last_seq: int = 0
    # (class, event type, reason) -> events given up for room since start.
    overflow_total: dict[tuple[str, str, str], int] = field(default_factory=dict)
    backpressure: bool = False
    backpressure_since: float | None = None
    backpressure_total: int = 0
    buffer_errors_total: int = 0
    # A state file next to the buffer cannot be written (the short-disk condition).
    disk_short: bool = False
    disk_short_since: float | None = None
    disk_short_total: int = 0


class Pipeline:
    def __init__(
        self,
        mapper: Mapper,
        buffer: Buffer,
        *,
        site: str,
        agent: str,
        on_accepted: Callable[[], None] = lambda: None,
        max_pending: int = 20_000,
        max_batch: int = 2_000,
        priorities: Mapping[str, int] | None = None,
        overflow_priority: int = Priority.CRITICAL,
        baselines: CounterBaselines | None = None,
        dual_publish: DualPublisher | None = None,
    ) -> None:
        """`priorities`: delivery class per unversioned event type, overriding the defaults.
        `baselines`: persists counter baselines around each commit (agent.mapping_state).
        `dual_publish`: the retired versions to publish beside their successors (none)."""
        self._mapper = mapper
        self.dual_publish = dual_publish or DualPublisher({})
        self._baselines = baselines
        self._buffer = buffer
        self._site = site
        self._agent = agent
        self._on_accepted = on_accepted
        self._queue = _ReadingQueue(max_pending)
        self._max_batch = max_batch
        self._priorities = dict(priorities or {})
        self._overflow_priority = overflow_priority
        self._unmappable_seen: set[str] = set()
        self._committing: asyncio.Future[None] | None = None
        self._overflow_reports: list[Overflow] = []
        self._overflow_serial = 0
        self._stopping = False
        # Commit futures: readings committed so far (those emitted: `_queue.put_total`), and
        # (ticket, future) waiting.
        self._committed = 0
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self.counters = PipelineCounters()
        self.corrections = Corrections(mapper, lambda key: self._buffer.source_state(key))

    async def emit(self, readings: Sequence[Reading]) -> asyncio.Future[None]:
        """Hand readings over; blocks while the queue is full (backpressure). Returns the
        future of their commit (module docstring); callers that do not need it ignore it."""
        await self._queue.put(readings)
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ticket = self._queue.put_total
        if self._committed >= ticket:
            committed.set_result(None)
        else:
            self._waiting.append((ticket, committed))
        return committed

    def _settle(self, count: int) -> None:
        """`count` more readings are committed: complete the futures whose ticket is reached."""
        self._committed += count
        waiting = self._waiting
        while waiting and waiting[0][0] <= self._committed:
            _, future = waiting.popleft()
            if not future.done():
                future.set_result(None)

    async def _commit_settled(self, readings: list[Reading]) -> None:
        await self._commit(readings)
        self._settle(len(readings))

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def backpressure(self) -> bool:
        """The buffer (or a short disk) holds readings back, or the queue is nine tenths full:
        an emitter that must answer at once (a webhook) says "busy" instead of waiting."""
        queue = self._queue
        counters = self.counters
        return (
            counters.backpressure or counters.disk_short or queue.qsize() * 10 >= queue.maxsize * 9
        )

    @property
    def overflow_unreported(self) -> int:
        """Events given up for room whose `agent.buffer.overflow` event is not in the buffer
        yet (it goes in with the next commit that finds room)."""
        return sum(report.count for report in self._overflow_reports)

    async def run(self) -> None:
        """Commit batches until cancelled. A commit under way is never cut short by the
        cancellation: it is shielded, and `stop` waits for it."""
        while True:
            await self._queue.wait()
            batch = self._queue.take(self._max_batch)
            self._committing = asyncio.ensure_future(self._commit_settled(batch))
            await asyncio.shield(self._committing)

    async def stop(self, task: asyncio.Task[None], timeout: float) -> None:
        """Stop the `run` task and commit everything still queued (call after the sources
        have stopped, so nothing more arrives). Bounded by `timeout`: readings still queued
        then (the buffer was full or failing) were never accepted and are counted in the log."""
        deadline = time.monotonic() + timeout
        task.cancel()
        await asyncio.wait([task], timeout=timeout)
        if self._committing is not None and not self._committing.done():
            await asyncio.wait([self._committing], timeout=max(0.0, deadline - time.monotonic()))
        self._stopping = True

        async def drain() -> None:
            while self._queue.qsize():
                await self._commit_settled(self._queue.take(self._max_batch))

        try:
            await asyncio.wait_for(drain(), max(0.1, deadline - time.monotonic()))
        except (TimeoutError, BufferUnavailable):
            _log.error(
                "stopping: %d reading(s) could not be committed in time and were not accepted",
                self._queue.qsize(),
            )
        while self._waiting:
            _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(BufferUnavailable("stopped before these readings committed"))
                future.exception()  # most emitters ignore it: no "never retrieved" warning

    async def _commit(self, readings: list[Reading]) -> None:
        events, rejected = self._mapper.map_all(readings)
        self.counters.records_rejected_total += sum(
            event.type.name == RECORD_REJECTED_TYPE for event in events
        )
        events, keys = await self._judge(events)
        events = self.dual_publish.beside(events)
        self.counters.readings_total += len(readings)
        for reading, reason in rejected:
            self.counters.readings_unmappable_total += 1
            key = f"{reading.source}/{reading.signal}"
            if key not in self._unmappable_seen:  # log once per signal, count every time
                self._unmappable_seen.add(key)
                _log.warning("unmappable reading set aside: %s", reason)
        # Source state (a cursor, an idempotency key) commits with the last of what its
        # readings became: with the events, or after the set-aside readings.
        state: dict[str, str | None] = {}
        for reading in readings:
            state.update(reading.state)
        state.update(keys)  # business keys judged (corrections): with their events
        if events:
            await self._append_events(events, state=None if rejected else state)
        if rejected:
            await self._set_aside(rejected)
        if state and (rejected or not events):
            await self._append([], state=state)
        self.corrections.committed(keys)

    async def _judge(self, events: list[Event]) -> tuple[list[Event], dict[str, str]]:
        """Corrections and repeats of keyed business records (`agent.flow.corrections`); its
        reads of committed state held and retried while the buffer is unavailable."""
        backoff = Backoff(_RETRY_MIN_S, _RETRY_MAX_S, jitter=False)
        while True:
            try:
                return await self.corrections.judge(events)
            except BufferUnavailable as error:
                self.counters.buffer_errors_total += 1
                if self._stopping:
                    raise
                if backoff.attempts == 0:
                    _log.warning("buffer unavailable, holding %d event(s) for their business "
                                 "keys: %s", len(events), error)
            await asyncio.sleep(backoff.next_s())

    async def _append_events(
        self, events: list[Event], state: dict[str, str | None] | None = None
    ) -> None:
        records = self.records(events)
        if self._baselines is not None:
            await self._before_commit(self._baselines)
        await self._append(records, state=state)
        if self._baselines is not None:
            await self._baselines.after_commit()
        # Reporting can itself evict (it takes room too): report that as well, a few rounds.
        for _ in range(_OVERFLOW_REPORT_ROUNDS):
            if not self._overflow_reports or not await self._report_overflow():
                break

    def records(self, events: Sequence[Event]) -> list[Record]:
        """The buffer records of `events`: id, kind, delivery class and stored body."""
        priorities = self._priorities
        return [
            Record(
                id=event.id,
                kind=event.type.name,
                priority=priorities.get(event.type.kind.value, event.type.default_priority),
                body=encode_body(event, site=self._site, agent=self._agent),
            )
            for event in events
        ]

    async def _before_commit(self, baselines: CounterBaselines) -> None:
        """The baselines' pending write, held and retried while the disk is short (module
        docstring); the batch waits for it, so nothing accepted outruns its baselines."""
        backoff = Backoff(_RETRY_MIN_S, _RETRY_MAX_S, jitter=False)
        while True:
            try:
                await baselines.before_commit()
                break
            except OSError as error:
                if not is_short_disk(error):
                    raise
                self.counters.buffer_errors_total += 1
                if self._stopping:
                    raise BufferUnavailable(
                        f"stopping while {baselines.path} cannot be written: {error}"
                    ) from error
                if not self.counters.disk_short:
                    self.counters.disk_short = True
                    self.counters.disk_short_since = time.time()
                    self.counters.disk_short_total += 1
                    _log.error(
                        "DISK SHORT: cannot write %s (%s); sources paused, retrying until "
                        "it can be written",
                        baselines.path, error.strerror or error,
                    )
            await asyncio.sleep(backoff.next_s())
        if self.counters.disk_short:
            since = self.counters.disk_short_since or time.time()
            _log.warning(
                "%s written again: sources resumed after %.0f s", baselines.path,
                time.time() - since,
            )
            self.counters.disk_short = False
            self.counters.disk_short_since = None

    async def _set_aside(self, rejected: list[tuple[Reading, str]]) -> None:
        """Store the unmappable readings in the dead-letter table, one call per reason; held
        and retried while the buffer is unavailable (not while stopping)."""
        by_reason: dict[str, list[Record]] = {}
        for reading, reason in rejected:
            by_reason.setdefault(reason, []).append(self._set_aside_record(reading))
        for reason, records in by_reason.items():
            backoff = Backoff(_RETRY_MIN_S, _RETRY_MAX_S, jitter=False)
            while True:
                try:
                    await self._buffer.set_aside(records, reason)
                    break
                except BufferUnavailable as error:
                    self.counters.buffer_errors_total += 1
                    if self._stopping:
                        _log.error(
                            "stopping: %d unmappable reading(s) could not be set aside: %s",
                            len(records), error,
                        )
                        raise
                    if backoff.attempts == 0:
                        _log.warning(
                            "buffer unavailable, holding %d unmappable reading(s): %s",
                            len(records), error,
                        )
                await asyncio.sleep(backoff.next_s())
            self.counters.readings_set_aside_total += len(records)

    def _set_aside_record(self, reading: Reading) -> Record:
        # The class of the event it was to become (an MES record keeps its business class).
        event_type = self._mapper.event_type_of(reading.source, reading.signal)
        priority = (
            self._priorities.get(event_type.kind.value, event_type.default_priority)
            if event_type is not None
            else Priority.TELEMETRY
        )
        fact = "\x1f".join(
            (reading.source, reading.signal, reading.timestamp.isoformat(), repr(reading.value))
        )
        return Record(
            id=str(uuid.uuid5(_SET_ASIDE_ID_NAMESPACE, fact)),
            kind=UNMAPPABLE_READING_KIND,
            priority=int(priority),
            body=unmappable_reading_body(reading),
        )

    async def _append(
        self,
        records: list[Record],
        *,
        hold: bool = True,
        state: dict[str, str | None] | None = None,
    ) -> bool:
        """Append, holding the batch and retrying while the buffer cannot take it (`hold`);
        False when not held and the buffer refused it. `state` commits with the last part."""
        if hold and len(records) > 1:
            # A batch too big for the room left goes in by halves, in order: what fits is
            # accepted now, only the rest is held.
            try:
                return await self._append(records, hold=False, state=state) or (
                    await self._append(records[: len(records) // 2])
                    and await self._append(records[len(records) // 2 :], state=state)
                )
            except BufferUnavailable:
                pass
        backoff = Backoff(_RETRY_MIN_S, _RETRY_MAX_S, jitter=False)
        while True:
            try:
                result = await self._buffer.append(records, state)
                break
            except BufferFull as error:
                if not hold:
                    return False
                if not self.counters.backpressure:
                    self.counters.backpressure = True
                    self.counters.backpressure_since = time.time()
                    self.counters.backpressure_total += 1
                    _log.error(
                        "BUFFER FULL: sources paused (backpressure) until the hub takes "
                        "events or disk space is freed: %s",
                        error,
                    )
            except BufferUnavailable as error:
                if not hold:
                    return False
                self.counters.buffer_errors_total += 1
                if backoff.attempts == 0:
                    _log.warning("buffer unavailable, holding %d event(s): %s", len(records), error)
            if self._stopping:
                raise BufferUnavailable("stopping while the buffer cannot take events")
            await asyncio.sleep(backoff.next_s())
        if self.counters.backpressure:
            since = self.counters.backpressure_since or time.time()
            _log.warning("buffer has room again: sources resumed after %.0f s", time.time() - since)
            self.counters.backpressure = False
            self.counters.backpressure_since = None
        self.counters.events_accepted_total += result.accepted
        self.counters.events_duplicate_total += result.duplicates
        self.counters.last_seq = result.last_seq
        totals = self.counters.overflow_total
        for report in result.overflow:
            name = CLASS_NAMES.get(report.priority, str(report.priority))
            key = (name, report.kind, report.reason)
            totals[key] = totals.get(key, 0) + report.count
            if not report.kind.startswith("agent.buffer.overflow"):
                self._overflow_reports.append(report)
        if result.overflow:
            _log.warning(
                "buffer full: gave up %s",
                ", ".join(f"{o.count} {o.kind} ({o.reason})" for o in result.overflow),
            )
        if result.accepted:
            self._on_accepted()
        return True

    async def _report_overflow(self) -> bool:
        """Turn pending overflow reports into events; kept for the next commit if no room."""
        now = datetime.now(UTC)
        records = []
        reports, self._overflow_reports = self._overflow_reports, []
        merged: dict[tuple[int, str, str], Overflow] = {}
        for report in reports:  # one event per class, type and reason
            slot = (report.priority, report.kind, str(report.reason))
            seen = merged.get(slot)
            if seen is not None and len(seen.seq_ranges) + len(report.seq_ranges) <= 256:
                report = Overflow(
                    report.priority, report.kind, report.reason, seen.count + report.count,
                    seen.seq_ranges + report.seq_ranges,
                )
            elif seen is not None:
                slot = (report.priority, report.kind, f"{report.reason}#{len(merged)}")
            merged[slot] = report
        for report in merged.values():
            self._overflow_serial += 1
            key = f"{self._site}\x1f{self._agent}\x1f{now.isoformat()}\x1f{self._overflow_serial}"
            event_id = str(uuid.uuid5(_OVERFLOW_ID_NAMESPACE, key))
            data = BufferOverflowV1(
                priority_class=CLASS_NAMES.get(report.priority, "telemetry"),  # type: ignore[arg-type]
                event_type=report.kind,
                reason=report.reason,
                count=report.count,
                seq_ranges=list(report.seq_ranges),
            )
            body = encode_agent_event(
                BUFFER_OVERFLOW_TYPE,
                event_id=event_id,
                site=self._site,
                agent=self._agent,
                time=now,
                data=data,
            )
            records.append(Record(event_id, BUFFER_OVERFLOW_TYPE, self._overflow_priority, body))
        if await self._append(records, hold=False):
            return True
        self._overflow_reports[:0] = reports
        return False


class _ReadingQueue:
    """The readings waiting for a commit: FIFO, bounded at `maxsize` readings. `put` hands a
    whole batch over at once when it fits and waits for room when it does not (what fits goes
    in first, in order); `take` hands up to n over at once. One consumer. `put_total` counts
    every reading that went in, also those of a `put` cancelled while it waited for room."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._limit = maxsize if maxsize > 0 else math.inf  # as asyncio.Queue: 0 is unbounded
        self.put_total = 0
        self._items: collections.deque[Reading] = collections.deque()
        self._has_items = asyncio.Event()
        self._has_room = asyncio.Event()
        self._has_room.set()

    def qsize(self) -> int:
        return len(self._items)

    async def put(self, readings: Sequence[Reading]) -> None:
        items = self._items
        start, count = 0, len(readings)
        while True:
            room = self._limit - len(items)
            if room >= count - start:
                items.extend(readings[start:] if start else readings)
                self.put_total += count - start
                break
            if room > 0:
                fits = int(room)
                items.extend(readings[start : start + fits])
                self.put_total += fits
                start += fits
            self._has_items.set()
            self._has_room.clear()
            await self._has_room.wait()
        if items:
            self._has_items.set()

    async def wait(self) -> None:
        """Until there is something to take."""
        while not self._items:
            self._has_items.clear()
            await self._has_items.wait()

    def take(self, most: int) -> list[Reading]:
        items = self._items
        if len(items) <= most:
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(most)]
        self._has_room.set()
        return batch


def unmappable_reading_body(reading: Reading) -> bytes:
    """The set-aside body: a msgpack map of the reading as the source reported it."""
    return msgpack.packb(
        {
            "source": reading.source,
            "signal": reading.signal,
            "value": reading.value,
            "timestamp": reading.timestamp.isoformat(),
            "quality": reading.quality.value,
            "status": reading.status,
        },
        use_bin_type=True,
    )
