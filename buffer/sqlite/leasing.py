"""Leasing and acks: handing pending records to the forwarder, and settling what was delivered.

Invariant 4 of the package docstring, and its sections "Why leases read on their own
connection" and "Why leases live in memory": `lease` reads committed rows on the query-only
connection, in lanes (`after_seq < seq <= up_to_seq`) and priorities, each row at most once
until `rewind`; the cursors (per priority and lane start, the highest seq handed out) and the
lanes found empty live in memory only. A lease reads only the seqs between acked runs
(`buffer.sqlite.acked`): each priority's scan seeks gap by gap and its cursor moves past the
acked runs it stepped over, so no acked row is read, after a rewind or a restart either.
`ack` writes no row of `log`: it inserts the runs of consecutive seqs it settles into `acks`
(one row per run) and adds them to the in-memory runs after the commit; when the disk is full
it deletes the rows instead (delivered is delivered; they are then not kept for replay, and
counted with reason `retained`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from buffer.base import StoredRecord
from buffer.sqlite.capacity import count_retained_drops
from buffer.sqlite.core import NO_UPPER_BOUND, SqliteBufferCore
from buffer.sqlite.schema import COLUMNS, id_text
from buffer.sqlite.statements import DiskFull, classified, range_conditions, seq_ranges

log = logging.getLogger(__name__)


@dataclass
class _Scan:
    """One priority's part of a lease round: where it reads on, what it may take, what it got."""

    after: int
    room: int
    rows: list[Any] = field(default_factory=list)
    # The end of the last acked run stepped over: every seq up to it is leased or acked.
    passed: int = 0
    # No more pending rows of this priority in the lane (as far as this snapshot shows).
    drained: bool = False


class LeasingMixin(SqliteBufferCore):
    """`lease`, `rewind` and `ack`; see the module docstring."""

    async def lease(
        self,
        limit: int,
        *,
        after_seq: int = 0,
        up_to_seq: int | None = None,
        shares: Mapping[int, int] | None = None,
    ) -> list[StoredRecord]:
        """Up to `limit` pending records of the lane `after_seq < seq <= up_to_seq` not leased
        since the last rewind; see `buffer.base` for the order and `shares`."""
        leased: list[StoredRecord] = []
        if limit <= 0:
            return leased
        rewinds = self._rewinds
        upper = NO_UPPER_BOUND if up_to_seq is None else up_to_seq
        # Leases take turns among themselves, not with writers: they read committed rows on
        # `_reader` (or hold the writers' lock too when there is only one connection).
        lock = self._lock if self._reader is self._db else contextlib.nullcontext()
        async with self._lease_lock, lock:
            with classified(self.path, "lease"):
                priorities = sorted(self._priorities, reverse=True)
                rounds: list[dict[int, int]] = []
                if shares:
                    active = [p for p in priorities if self._pending_count.get(p, 1) > 0]
                    total = sum(max(1, shares.get(p, 1)) for p in active) or 1
                    rounds.append(
                        {p: max(1, limit * max(1, shares.get(p, 1)) // total) for p in active}
                    )
                rounds.append({p: limit for p in priorities})  # what is left, highest first
                for quotas in rounds:
                    room_left = limit - len(leased)
                    if room_left <= 0:
                        break
                    scans: dict[int, _Scan] = {}
                    for priority, quota in quotas.items():
                        if self._exhausted(priority, after_seq, upper):
                            continue
                        cursor = self._leased_up_to.get((priority, after_seq), 0)
                        scans[priority] = _Scan(max(after_seq, cursor), min(quota, room_left))
                    if not scans:
                        continue
                    # Taken before the queries start their snapshots: every row up to it is seen.
                    last_seq = self._last_seq
                    await self._scan(scans, upper)
                    # Highest priority first, each in seq order; what goes over `limit` is cut,
                    # lowest priority first, and stays unleased.
                    ordered = [row for scan in scans.values() for row in scan.rows]
                    batch = [
                        StoredRecord(seq, id_text(key), kind, priority, body, accepted_at)
                        for seq, key, kind, priority, body, accepted_at in ordered[:room_left]
                    ]
                    cut = {row[3] for row in ordered[room_left:]}
                    # A rewind while this query ran wins: these rows count as not leased.
                    if self._rewinds == rewinds:
                        for record in batch:
                            self._leased_up_to[(record.priority, after_seq)] = record.seq
                        for priority, scan in scans.items():
                            if priority in cut:
                                continue
                            key = (priority, after_seq)
                            if scan.passed > self._leased_up_to.get(key, 0):
                                self._leased_up_to[key] = scan.passed
                            if scan.drained and last_seq is not None:
                                # Nothing more of this priority in the lane up to last_seq.
                                self._lane_drained[(priority, after_seq, upper)] = last_seq
                    leased += batch
        return leased

    async def _scan(self, scans: dict[int, _Scan], upper: int) -> None:
        """Fill each priority's scan with its pending rows up to `upper`, gap by gap between
        acked runs: one statement per pass (a part per priority), each pass moving every
        priority that drained its gap past the next acked run (bounded by their number)."""
        active = list(scans)
        while active:
            parts: list[tuple[int, int, int, int, int | None]] = []
            for priority in active:
                scan = scans[priority]
                start, end, acked_to = self._acked.next_gap(scan.after)
                if start > upper:
                    scan.drained = True
                    continue
                more = acked_to if end is not None and end < upper else None
                stop = upper if end is None else min(end, upper)
                parts.append((priority, start, stop, scan.room - len(scan.rows), more))
            if not parts:
                return
            rows = await self._reader.execute_fetchall(
                " UNION ALL ".join(
                    f"SELECT * FROM (SELECT {COLUMNS} FROM log"
                    " WHERE priority = ? AND seq BETWEEN ? AND ? ORDER BY seq LIMIT ?)"
                    for _ in parts
                ),
                [v for p, start, stop, room, _ in parts for v in (p, start, stop, room)],
            )
            got: dict[int, list[Any]] = defaultdict(list)
            for row in rows:
                got[int(row[3])].append(row)
            active = []
            for priority, _start, _stop, room, more in parts:
                scan = scans[priority]
                scan.rows += got[priority]
                if len(got[priority]) >= room:
                    continue  # full
                if more is None:
                    scan.drained = True
                else:  # this gap is drained: on past the acked run after it
                    scan.after = scan.passed = more
                    active.append(priority)

    def _exhausted(self, priority: int, after_seq: int, upper: int) -> bool:
        """True when a lease found no more pending rows of `priority` in this lane and nothing
        was accepted since (every new row has a higher seq than the last_seq of then): the
        lane has nothing to lease, no query needed. `rewind` (and any transaction that did not
        finish cleanly, which leaves `_last_seq` unknown) forgets this."""
        drained_at = self._lane_drained.get((priority, after_seq, upper))
        return drained_at is not None and drained_at == self._last_seq

    def rewind(self) -> None:
        """Forget all leases: every record not acked is leased again, in lease order."""
        self._leased_up_to.clear()
        self._lane_drained.clear()
        self._rewinds += 1

    def _not_acked(self, seqs: Sequence[int]) -> list[tuple[int, int]]:
        """The runs of `seqs` that the in-memory acked runs do not cover."""
        return [
            part
            for first, last in seq_ranges(sorted(set(seqs)))
            for part in self._acked.not_acked(first, last)
        ]

    async def ack(self, seqs: Sequence[int]) -> None:
        """Mark these records delivered. Unknown, acked or dead-lettered seqs are ignored."""
        if not seqs:
            return
        now = self._clock()
        settled: list[Any] = []
        runs: dict[tuple[int, int], list[int]] = {}
        try:
            async with self._transaction("ack") as db:
                # By seq ranges, not yet acked (a PUBACKed message, and the messages acked
                # together, are mostly runs of consecutive seqs): per statement, the runs of
                # the rows there are (gaps and islands) with their counts per priority.
                conditions = range_conditions(self._not_acked(seqs))
                for statement, (where, params) in enumerate(conditions):
                    for first, last, priority, count, size, run_key in await db.execute_fetchall(
                        "SELECT min(seq), max(seq), priority, count(*), sum(size), run FROM"
                        " (SELECT seq, priority, length(body) AS size,"
                        "  seq - row_number() OVER (ORDER BY seq) AS run"
                        f"  FROM log WHERE {where}) GROUP BY run, priority",
                        params,
                    ):
                        settled.append((priority, count, size))
                        run = runs.setdefault((statement, int(run_key)), [first, last])
                        run[0], run[1] = min(run[0], int(first)), max(run[1], int(last))
                await db.executemany(
                    "INSERT INTO acks (first_seq, last_seq, acked_at) VALUES (?, ?, ?)",
                    [(first, last, now) for first, last in runs.values()],
                )
        except DiskFull:
            # An ack takes pages (`acks` rows); deleting rows frees pages. Delivered is
            # delivered: when the disk is full these are not retained for replay.
            deleted: list[Any] = []
            async with self._transaction("ack") as db:
                for where, params in range_conditions(self._not_acked(seqs)):
                    deleted += await db.execute_fetchall(
                        f"DELETE FROM log WHERE {where} RETURNING priority, length(body), kind",
                        params,
                    )
                dropped: dict[tuple[int, str], int] = defaultdict(int)
                for priority, _size, kind in deleted:
                    dropped[(int(priority), str(kind))] += 1
                await count_retained_drops(db, dropped)
            log.warning(
                "buffer %s: disk full: %d delivered record(s) not kept for replay",
                self.path,
                len(deleted),
            )
            self._settle([(row[0], 1, row[1]) for row in deleted], retained=False)
            return
        for first, last in runs.values():
            self._acked.add(first, last)
        self._settle(settled, retained=True)
