"""SqliteBuffer against a model, full: capacity and its overflow policies, lanes and shares, dead
letters set aside and retried.

`test_buffer_sqlite.py`'s model-based test covers appends, leases, acks, purges and reopens of a
buffer without a limit. This one gives the buffer a `Capacity` small enough that most appends
go through room making, with an overflow policy per priority drawn for each example (`block`,
`evict_oldest`, `sample`, `refuse`) and, sometimes, a cap on the retained bytes. The model
predicts every `append` exactly: what it accepts, which pending records it evicts (oldest
first, lowest evictable priority first, exactly as many as the room needs), which new records
it samples away or refuses, the `Overflow` reports with their seq ranges, and when it raises
`BufferFull` (accepting nothing, evicting nothing). Leases run in the forwarder's two lanes
(backlog up to a boundary set at each reconnect, live after it), with and without shares.
After every step the stats (counts, bytes, ages, evictions) and the dead-letter listing must
match the model.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from buffer.base import (
    AppendResult,
    BufferFull,
    Capacity,
    DeadLetter,
    Overflow,
    OverflowPolicy,
    OverflowReason,
    Record,
    StoredRecord,
)
from buffer.sqlite import SqliteBuffer

RETENTION_S = 100.0
PRIORITIES = (0, 1, 2)
SHARES = {2: 6, 1: 3, 0: 1}
Lane = Literal["backlog", "live"]

UUIDS = [
    "0b9f3c1e-6a4d-4e0f-9a51-3c2d1e0f9a8b",
    "7d1e2f3a-4b5c-4d6e-8f70-81928374a5b6",
    "c0ffee00-1234-4abc-8def-0123456789ab",
]
record_strategy = st.builds(
    Record,
    # A small pool (so duplicates happen), some of them UUIDs (stored as 16 bytes).
    id=st.sampled_from([f"id{n}" for n in range(12)] + UUIDS),
    kind=st.sampled_from(["reading", "state"]),
    priority=st.sampled_from(PRIORITIES),
    body=st.binary(max_size=8),
)


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class ModelRow:
    record: StoredRecord
    acked_at: float | None = None

    @property
    def size(self) -> int:
        return len(self.record.body)


@dataclass(frozen=True)
class ModelDeadLetter:
    seq: int | None
    record: Record
    accepted_at: float | None
    reason: str
    dead_at: float

    def listed(self) -> DeadLetter:
        r = self.record
        return DeadLetter(
            self.seq, r.id, r.kind, r.priority, len(r.body), self.accepted_at, self.reason,
            self.dead_at,
        )


def seq_ranges(seqs: Sequence[int]) -> tuple[tuple[int, int], ...]:
    ranges: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if ranges and ranges[-1][1] == seq - 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return tuple(ranges)


class SqliteBufferCapacityMachine(RuleBasedStateMachine):
    """SqliteBuffer with a capacity against a dict; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.directory = Path(tempfile.mkdtemp(prefix="buffer-capacity-model-"))
        self.clock = FakeClock()
        self.files = AsyncExitStack()
        self.capacity = Capacity()
        self.buffer: SqliteBuffer | None = None
        self.rows: dict[int, ModelRow] = {}
        self.last_seq = 0
        self.leased: set[int] = set()
        self.boundary = 0  # the lanes: backlog (0, boundary], live (boundary, ...)
        self.dead: list[ModelDeadLetter] = []
        self.evictions: Counter[tuple[int, str, str]] = Counter()
        self.sampled: dict[int, int] = defaultdict(int)  # the `sample` policy's counters

    # -- the buffer ------------------------------------------------------------------------

    @initialize(
        policies=st.tuples(*[st.sampled_from(get_args(OverflowPolicy))] * len(PRIORITIES)),
        max_pending_bytes=st.sampled_from([6, 12, 24]),
        retained_max_bytes=st.sampled_from([None, 10]),
        keep_one_in=st.sampled_from([2, 3]),
    )
    def open_buffer(
        self,
        policies: tuple[OverflowPolicy, ...],
        max_pending_bytes: int,
        retained_max_bytes: int | None,
        keep_one_in: int,
    ) -> None:
        self.capacity = Capacity(
            max_pending_bytes=max_pending_bytes,
            retained_max_bytes=retained_max_bytes,
            policies=dict(zip(PRIORITIES, policies, strict=True)),
            sample_keep_one_in=keep_one_in,
        )
        self._open()

    def _open(self) -> None:
        self.buffer = self.runner.run(
            self.files.enter_async_context(
                SqliteBuffer.open(
                    self.directory / "buffer.db", retention_s=RETENTION_S, clock=self.clock,
                    capacity=self.capacity, synchronous="normal",
                )
            )
        )

    @property
    def opened(self) -> SqliteBuffer:
        assert self.buffer is not None
        return self.buffer

    def teardown(self) -> None:
        try:
            self.runner.run(self.files.aclose())
        finally:
            self.runner.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- the model's view ------------------------------------------------------------------

    def pending(self) -> list[ModelRow]:
        return [row for _, row in sorted(self.rows.items()) if row.acked_at is None]

    def pending_bytes(self) -> int:
        return sum(row.size for row in self.pending())

    def retained_bytes(self) -> int:
        return sum(row.size for row in self.rows.values() if row.acked_at is not None)

    def held_ids(self) -> set[str]:
        return {row.record.id for row in self.rows.values()}

    def seqs(self) -> st.SearchStrategy[int]:
        """Mostly seqs the buffer holds; sometimes unknown, purged or dead-lettered ones."""
        anything = st.integers(0, self.last_seq + 2)
        return st.one_of(st.sampled_from(sorted(self.rows)), anything) if self.rows else anything

    # -- append, with capacity -------------------------------------------------------------

    def expected_append(self, batch: list[Record]) -> AppendResult | None:
        """What `append(batch)` must return, applied to the model; None: BufferFull (and
        nothing changed but the `sample` counters, which count offers, not acceptances)."""
        held = self.held_ids()
        kept: list[Record] = []
        for record in batch:
            if record.id not in held:
                held.add(record.id)
                kept.append(record)
        duplicates = len(batch) - len(kept)
        limit = self.capacity.max_pending_bytes
        assert limit is not None
        pending_bytes = self.pending_bytes()
        dropped: Counter[tuple[int, str, OverflowReason]] = Counter()
        evicted: list[Overflow] = []
        evicted_seqs: list[int] = []
        if kept and pending_bytes + sum(len(r.body) for r in kept) > limit:
            survivors: list[Record] = []
            for record in kept:
                policy = self.capacity.policy(record.priority)
                if policy == "refuse":
                    dropped[(record.priority, record.kind, "refused")] += 1
                    continue
                if policy == "sample":
                    self.sampled[record.priority] += 1
                    if self.sampled[record.priority] % self.capacity.sample_keep_one_in:
                        dropped[(record.priority, record.kind, "sampled")] += 1
                        continue
                survivors.append(record)
            need = pending_bytes + sum(len(r.body) for r in survivors) - limit
            for priority in PRIORITIES:  # the lowest evictable priority first
                if need <= 0:
                    break
                if self.capacity.policy(priority) not in ("evict_oldest", "sample"):
                    continue
                freed = 0
                taken: dict[str, list[int]] = defaultdict(list)
                for row in self.pending():  # the oldest first, exactly as many as needed
                    if row.record.priority != priority:
                        continue
                    if freed >= need:
                        break
                    freed += row.size
                    taken[row.record.kind].append(row.record.seq)
                    evicted_seqs.append(row.record.seq)
                for kind, seqs in sorted(taken.items()):
                    evicted.append(Overflow(priority, kind, "evicted", len(seqs), seq_ranges(seqs)))
                need -= freed
            if need > 0:
                if any(self.capacity.policy(r.priority) == "block" for r in survivors):
                    return None
                while need > 0 and survivors:  # evictable newcomers that still do not fit
                    record = survivors.pop(0)
                    need -= len(record.body)
                    dropped[(record.priority, record.kind, "refused")] += 1
            kept = survivors
        for seq in evicted_seqs:
            del self.rows[seq]
        for record in kept:
            self.last_seq += 1
            self.rows[self.last_seq] = ModelRow(
                StoredRecord(
                    self.last_seq, record.id, record.kind, record.priority, record.body,
                    self.clock.now,
                )
            )
        overflow = evicted + [
            Overflow(priority, kind, reason, count)
            for (priority, kind, reason), count in sorted(dropped.items())
        ]
        for report in overflow:
            self.evictions[(report.priority, report.kind, report.reason)] += report.count
        return AppendResult(len(kept), duplicates, self.last_seq, tuple(overflow))

    @rule(batches=st.lists(st.lists(record_strategy, max_size=6), min_size=1, max_size=4))
    def append(self, batches: list[list[Record]]) -> None:
        """Appends in a row (a source's bursts), so that the buffer fills."""
        for batch in batches:
            expected = self.expected_append(batch)
            for reason in sorted({o.reason for o in expected.overflow} if expected else {"full"}):
                event(f"append: {reason}")  # --hypothesis-show-statistics: what is reached
            if expected is None:
                try:
                    self.runner.run(self.opened.append(batch))
                except BufferFull:
                    continue
                raise AssertionError("append accepted a batch that does not fit, may not evict")
            assert self.runner.run(self.opened.append(batch)) == expected

    # -- lease in lanes, rewind ------------------------------------------------------------

    @rule(limit=st.integers(0, 12), lane=st.sampled_from(["backlog", "live"]), shared=st.booleans())
    def lease(self, limit: int, lane: Lane, shared: bool) -> None:
        after, upper = (0, self.boundary) if lane == "backlog" else (self.boundary, None)
        eligible = [
            row.record
            for row in self.pending()
            if row.record.seq not in self.leased
            and after < row.record.seq
            and (upper is None or row.record.seq <= upper)
        ]
        got = self.runner.run(
            self.opened.lease(
                limit, after_seq=after, up_to_seq=upper, shares=SHARES if shared else None
            )
        )
        if not shared:
            assert got == sorted(eligible, key=lambda r: (-r.priority, r.seq))[:limit]
        else:
            assert len(got) == min(limit, len(eligible))
            assert len({r.seq for r in got}) == len(got)
            total = sum(SHARES.values())
            for priority in PRIORITIES:
                mine = [r for r in eligible if r.priority == priority]
                handed = [r for r in got if r.priority == priority]
                assert handed == mine[: len(handed)]  # each class in seq order, none skipped
                if limit >= total:  # room for every class's share: none is starved
                    assert len(handed) >= min(len(mine), limit * SHARES[priority] // total)
        self.leased.update(r.seq for r in got)

    @rule()
    def rewind(self) -> None:
        self.opened.rewind()
        self.leased.clear()

    @rule()
    def reconnect(self) -> None:
        """What the forwarder does on a new connection: rewind, and what was accepted until
        now is the backlog."""
        self.opened.rewind()
        self.leased.clear()
        self.boundary = self.last_seq

    # -- ack, purge ------------------------------------------------------------------------

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        seqs = data.draw(st.lists(self.seqs(), max_size=5))
        for seq in seqs:
            row = self.rows.get(seq)
            if row is not None and row.acked_at is None:
                row.acked_at = self.clock.now
        self.runner.run(self.opened.ack(seqs))

    @rule(seconds=st.sampled_from([1.0, 30.0, 99.5, 150.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def purge(self) -> None:
        cutoff = self.clock.now - RETENTION_S
        old = [s for s, r in self.rows.items() if r.acked_at is not None and r.acked_at < cutoff]
        for seq in old:
            del self.rows[seq]
        purged = len(old)
        cap = self.capacity.retained_max_bytes
        if cap is not None and self.retained_bytes() > cap:
            excess, freed = self.retained_bytes() - cap, 0
            delivered = sorted(
                (row for row in self.rows.values() if row.acked_at is not None),
                key=lambda row: (row.acked_at, row.record.seq),
            )
            for row in delivered:  # the earliest delivered, exactly as many as needed
                if freed >= excess:
                    break
                freed += row.size
                del self.rows[row.record.seq]
                purged += 1
        assert self.runner.run(self.opened.purge()) == purged

    # -- dead letters ----------------------------------------------------------------------

    @rule(data=st.data())
    def dead_letter(self, data: st.DataObject) -> None:
        seqs = data.draw(st.lists(self.seqs(), max_size=3))
        for seq in sorted(set(seqs)):
            row = self.rows.get(seq)
            if row is not None and row.acked_at is None:
                del self.rows[seq]
                r = row.record
                self.dead.append(
                    ModelDeadLetter(
                        seq, Record(r.id, r.kind, r.priority, r.body), r.accepted_at, "poison",
                        self.clock.now,
                    )
                )
        self.runner.run(self.opened.dead_letter(seqs, "poison"))

    @rule(batch=st.lists(record_strategy, max_size=3))
    def set_aside(self, batch: list[Record]) -> None:
        for record in batch:
            self.dead.append(ModelDeadLetter(None, record, None, "unmappable", self.clock.now))
        self.runner.run(self.opened.set_aside(batch, "unmappable"))

    @rule(data=st.data())
    def retry_dead_letters(self, data: st.DataObject) -> None:
        accepted = sorted(letter.seq for letter in self.dead if letter.seq is not None)
        seqs: list[int] | None = None
        # len(): after a bare `accepted and`, mypy would type the draw against list[int].
        if len(accepted) > 0 and data.draw(st.booleans()):
            seqs = data.draw(st.lists(st.sampled_from(accepted), min_size=1, max_size=3))
        wanted = [
            letter for letter in self.dead
            if letter.seq is not None and (seqs is None or letter.seq in seqs)
        ]
        held = self.held_ids()
        moved = 0
        for letter in sorted(wanted, key=lambda letter: letter.seq or 0):
            if letter.record.id in held:
                continue  # the same fact was accepted again since (or is back already)
            held.add(letter.record.id)
            assert letter.seq is not None
            r = letter.record
            self.rows[letter.seq] = ModelRow(
                StoredRecord(letter.seq, r.id, r.kind, r.priority, r.body, letter.accepted_at or 0)
            )
            moved += 1
        self.dead = [letter for letter in self.dead if letter not in wanted]
        self.leased.clear()  # rows came back below the lease cursors: retried leases rewind
        expected = (moved, len(wanted) - moved)
        event(f"retry: {'moved' if moved else 'nothing moved'}")
        assert self.runner.run(self.opened.retry_dead_letters(seqs)) == expected

    # -- reopen ----------------------------------------------------------------------------

    @rule()
    def reopen(self) -> None:
        self.runner.run(self.files.aclose())
        self.leased.clear()
        self.sampled.clear()  # the `sample` counters live in memory
        self._open()

    # -- after every step ------------------------------------------------------------------

    @invariant()
    def stats_match(self) -> None:
        if self.buffer is None:
            return
        stats = self.runner.run(self.buffer.stats())
        pending = self.pending()
        by_priority = Counter(row.record.priority for row in pending)
        assert stats.pending == len(pending)
        assert stats.pending_by_priority == dict(by_priority)
        assert stats.pending_bytes == self.pending_bytes()
        assert stats.retained_bytes == self.retained_bytes()
        assert stats.acked_retained == len(self.rows) - len(pending)
        assert stats.oldest_pending_at == (pending[0].record.accepted_at if pending else None)
        oldest: dict[int, float] = {}
        for row in pending:
            oldest.setdefault(row.record.priority, row.record.accepted_at)
        assert stats.oldest_pending_by_priority == oldest
        assert stats.dead_letters == len(self.dead)
        assert stats.last_seq == self.last_seq
        assert stats.evictions == dict(self.evictions)

    @invariant()
    def dead_letters_match(self) -> None:
        if self.buffer is None:
            return
        listed = self.runner.run(self.buffer.dead_letters())
        assert listed == [letter.listed() for letter in self.dead]


SqliteBufferCapacityMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=50, deadline=None
)
TestSqliteBufferCapacityModel = SqliteBufferCapacityMachine.TestCase
