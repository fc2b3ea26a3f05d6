"""Capacity: making room for new records, the overflow policies, the disk checks, and purge.

The rules are the package docstring's "When it is full" and `buffer.base.Capacity`. In short:

- `_make_room` runs inside the `append` transaction, so an eviction and the records it made
  room for commit together or not at all; the in-memory counts it changes are re-read if that
  transaction does not commit. Every record given up is reported (`Overflow`) and counted in
  `evictions` in that same transaction (`count_evictions`).
- Over `max_pending_bytes`: `refuse` turns new records away, `sample` keeps one in
  `sample_keep_one_in` of them, then the oldest pending records of the `evict_oldest` and
  `sample` priorities are evicted, lowest priority first, exactly as many as the room needs;
  if that is not enough, a `block` record raises `BufferFull` (nothing accepted) and
  evictable newcomers are refused, oldest first.
- When the disk is short (statvfs below `disk_free_reserve_bytes`, at most once a second, or
  SQLITE_FULL), delivered rows kept for replay go first (`_drop_retained`, counted with reason
  `retained`); with none left the current pending bytes are the limit.
- `purge` trims what was delivered: past `retention_s`, then the oldest over
  `retained_max_bytes`; that is retention, not a loss, and is not counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Final

import aiosqlite

from buffer.base import BufferFull, Overflow, OverflowReason, Record
from buffer.sqlite.acked import AckedRanges
from buffer.sqlite.core import SqliteBufferCore
from buffer.sqlite.statements import (
    PARAMS_PER_STATEMENT,
    chunks,
    placeholders,
    range_conditions,
    seq_ranges,
)

log = logging.getLogger(__name__)

_PURGE_ROWS_PER_TRANSACTION: Final = 10_000
_EVICT_ROWS_PER_STATEMENT: Final = 512
_DISK_CHECK_INTERVAL_S: Final = 1.0
# An overflow report names at most this many seq ranges; more make another report.
_RANGES_PER_OVERFLOW: Final = 256


class CapacityMixin(SqliteBufferCore):
    """Room making, eviction policies, disk checks and purge; see the module docstring."""

    async def _make_room(
        self, db: aiosqlite.Connection, kept: list[Record], *, disk_short: bool, slack: int
    ) -> tuple[list[Record], list[Overflow]]:
        """Apply the capacity rules to the new records (inside the append transaction).

        Changes the in-memory counts only through `_evict`, whose effects are undone (by a
        re-read) if the transaction does not commit."""
        capacity = self.capacity
        limit = capacity.max_pending_bytes if capacity.max_pending_bytes is not None else None
        incoming = sum(len(r.body) for r in kept)
        if disk_short:
            # No delivered rows left to give: pending records must make the room.
            current = max(0, sum(self._pending_bytes.values()) - incoming * (slack - 1))
            limit = current if limit is None else min(limit, current)
        if limit is None or sum(self._pending_bytes.values()) + incoming <= limit:
            return kept, []
        dropped: dict[tuple[int, str, OverflowReason], int] = defaultdict(int)
        survivors: list[Record] = []
        for record in kept:
            policy = capacity.policy(record.priority)
            if policy == "refuse":
                dropped[(record.priority, record.kind, "refused")] += 1
                continue
            if policy == "sample":
                self._sampled[record.priority] += 1
                if self._sampled[record.priority] % capacity.sample_keep_one_in:
                    dropped[(record.priority, record.kind, "sampled")] += 1
                    continue
            survivors.append(record)
        need = sum(self._pending_bytes.values()) + sum(len(r.body) for r in survivors) - limit
        evicted: list[Overflow] = []
        if need > 0:
            evictable = sorted(
                p for p in self._pending_bytes if capacity.policy(p) in ("evict_oldest", "sample")
            )
            for priority in evictable:
                freed_here, reports = await self._evict(db, priority, need)
                need -= freed_here
                evicted += reports
                if need <= 0:
                    break
        if need > 0:
            blocked = [r for r in survivors if capacity.policy(r.priority) == "block"]
            if blocked:
                raise BufferFull(
                    f"{self.path}: {len(blocked)} record(s) of priority "
                    f"{sorted({r.priority for r in blocked})} do not fit "
                    f"({sum(self._pending_bytes.values())} bytes pending, limit {limit}) and "
                    "records of that priority are never evicted"
                )
            # Only evictable newcomers are left and even they do not fit: turn the oldest away.
            while need > 0 and survivors:
                record = survivors.pop(0)
                need -= len(record.body)
                dropped[(record.priority, record.kind, "refused")] += 1
        reports = [
            Overflow(priority, kind, reason, count)
            for (priority, kind, reason), count in sorted(dropped.items())
        ]
        return survivors, evicted + reports

    async def _evict(
        self, db: aiosqlite.Connection, priority: int, need: int
    ) -> tuple[int, list[Overflow]]:
        """Delete the oldest pending rows of `priority` until `need` bytes are freed."""
        freed = 0
        seqs: dict[str, list[int]] = defaultdict(list)
        after = 0
        while freed < need:
            rows = await self._oldest_pending(
                db, priority, "seq, kind, length(body)", _EVICT_ROWS_PER_STATEMENT, after
            )
            if not rows:
                break
            after = int(rows[-1][0])
            taken: list[int] = []
            for seq, kind, size in rows:  # exactly as many of the oldest as needed
                if freed >= need:
                    break
                freed += int(size)
                taken.append(int(seq))
                seqs[str(kind)].append(int(seq))
                self._pending_count[priority] -= 1
                self._pending_bytes[priority] -= int(size)
            for chunk in chunks(taken):
                await db.execute(
                    f"DELETE FROM log WHERE seq IN ({placeholders(len(chunk))})", tuple(chunk)
                )
        reports: list[Overflow] = []
        for kind, kind_seqs in sorted(seqs.items()):
            ranges = seq_ranges(kind_seqs)
            for start in range(0, len(ranges), _RANGES_PER_OVERFLOW):
                part = ranges[start : start + _RANGES_PER_OVERFLOW]
                count = sum(last - first + 1 for first, last in part)
                reports.append(Overflow(priority, kind, "evicted", count, tuple(part)))
        return freed, reports

    async def _drop_retained_now(self, target: int) -> int:
        async with self._transaction("drop_retained") as db:
            return await self._drop_retained(db, target)

    async def _drop_retained(self, db: aiosqlite.Connection, target: int) -> int:
        """Delete the oldest delivered rows until `target` bytes are freed; return the bytes."""
        freed = 0
        dropped: dict[tuple[int, str], int] = defaultdict(int)
        while freed < target:
            rows = await delete_oldest_acked(db, _EVICT_ROWS_PER_STATEMENT, self._acked)
            if not rows:
                break
            for priority, kind, size in rows:
                freed += int(size)
                dropped[(int(priority), str(kind))] += 1
        self._retained_bytes -= freed
        if dropped:
            await count_retained_drops(db, dropped)
            log.warning(
                "buffer %s: disk short: dropped %d delivered record(s) kept for replay",
                self.path,
                sum(dropped.values()),
            )
        return freed

    async def _disk_is_short(self) -> bool:
        reserve = self.capacity.disk_free_reserve_bytes
        if reserve <= 0:
            return False
        now = time.monotonic()
        if now - self._disk_checked_at >= _DISK_CHECK_INTERVAL_S:
            self._disk_checked_at = now
            stat = await asyncio.to_thread(os.statvfs, self.path.parent)
            short = stat.f_bavail * stat.f_frsize < reserve
            if short != self._disk_short:
                log.warning(
                    "buffer %s: free disk space %s the reserve of %d bytes",
                    self.path,
                    "below" if short else "back above",
                    reserve,
                )
            self._disk_short = short
        return self._disk_short

    async def purge(self, now: float | None = None) -> int:
        """Delete acked records older than the retention window, then the oldest acked records
        while the retained bytes exceed `capacity.retained_max_bytes`; return how many.

        Deletes in transactions of at most 10,000 rows, releasing the lock between them so that
        appends and acks are never held up for long.
        """
        cutoff = (self._clock() if now is None else now) - self._retention_s
        deleted = 0
        more = True
        while more:  # bounded: each turn deletes up to a transaction's worth, or ends
            async with self._transaction("purge") as db:
                rows, removed, more = await self._purge_expired(db, cutoff)
            for first, last in removed:
                self._acked.remove(first, last)
            deleted += len(rows)
            self._retained_bytes -= sum(int(row[0]) for row in rows)
        cap = self.capacity.retained_max_bytes
        while cap is not None and self._retained_bytes > cap:
            # Exactly as many of the earliest delivered as bring the retained bytes under the
            # cap (a whole statement's worth would cut the replay window short).
            async with self._transaction("purge") as db:
                excess = self._retained_bytes - cap
                freed = 0
                taken = 0
                while freed < excess:
                    oldest = await db.execute_fetchall(
                        "SELECT first_seq, last_seq FROM acks ORDER BY acked_at, first_seq LIMIT 1"
                    )
                    if not oldest:
                        break
                    ((first, last),) = oldest
                    sizes = await db.execute_fetchall(
                        "SELECT seq, length(body) FROM log WHERE seq BETWEEN ? AND ?"
                        " ORDER BY seq LIMIT ?",
                        (first, last, _EVICT_ROWS_PER_STATEMENT),
                    )
                    upto = int(first) - 1
                    count = 0
                    for seq, size in sizes:
                        if freed >= excess:
                            break
                        upto = int(seq)
                        freed += int(size)
                        count += 1
                    if not sizes:  # a run whose rows are all gone: only its `acks` row
                        upto, count = int(last), 1
                    got, gone_to = await delete_acked_run(
                        db, int(first), int(last), count, "1", upto=upto
                    )
                    taken += len(got)
                    self._acked.remove(int(first), gone_to)
            if not taken:
                break
            deleted += taken
            self._retained_bytes -= freed
        return deleted

    async def _purge_expired(
        self, db: aiosqlite.Connection, cutoff: float
    ) -> tuple[list[Any], list[tuple[int, int]], bool]:
        """Delete the acked runs acked before `cutoff`, whole, as seq-range deletes (and their
        `acks` rows), up to about `_PURGE_ROWS_PER_TRANSACTION` rows; a run longer than what
        is left of that is cut. Returns (each row's size, the runs gone, whether more may
        be left)."""
        rows: list[Any] = []
        removed: list[tuple[int, int]] = []
        while True:  # bounded: each turn deletes runs, or ends
            budget = _PURGE_ROWS_PER_TRANSACTION - len(rows)
            if budget <= 0:
                return rows, removed, True
            runs = [
                (int(first), int(last))
                for first, last in await db.execute_fetchall(
                    "SELECT first_seq, last_seq FROM acks WHERE acked_at < ?"
                    " ORDER BY first_seq LIMIT ?",
                    (cutoff, PARAMS_PER_STATEMENT // 2),
                )
            ]
            if not runs:
                return rows, removed, False
            whole: list[tuple[int, int]] = []
            span = 0
            for first, last in runs:  # runs that fit whole (a run holds at most its span)
                span += last - first + 1
                if span > budget:
                    break
                whole.append((first, last))
            if not whole:  # the first run alone is more than this transaction takes
                first, last = runs[0]
                got, gone_to = await delete_acked_run(db, first, last, budget, "length(body)")
                rows += got
                removed.append((first, gone_to))
                continue
            for where, params in range_conditions(whole):
                rows += await db.execute_fetchall(
                    f"DELETE FROM log WHERE {where} RETURNING length(body)", params
                )
            for chunk in chunks([first for first, _ in whole]):
                await db.execute(
                    f"DELETE FROM acks WHERE first_seq IN ({placeholders(len(chunk))})",
                    tuple(chunk),
                )
            removed += whole


async def delete_acked_run(
    db: aiosqlite.Connection,
    first: int,
    last: int,
    limit: int,
    returning: str,
    *,
    upto: int | None = None,
) -> tuple[list[Any], int]:
    """Delete the rows of the acked run `first`..`last` (only up to seq `upto` if given, at
    most `limit` rows), in seq order, and what is gone of the run from `acks`: its row, or
    its start moved past what was deleted. Returns (`returning` of each row deleted, the last
    seq of the run now gone)."""
    end = last if upto is None else min(upto, last)
    rows = list(
        await db.execute_fetchall(
            "DELETE FROM log WHERE seq IN (SELECT seq FROM log WHERE seq BETWEEN ? AND ?"
            f" ORDER BY seq LIMIT ?) RETURNING seq, {returning}",
            (first, end, max(limit, 0)),
        )
    )
    gone_to = end if len(rows) < limit else max(int(row[0]) for row in rows)
    if gone_to >= last:
        await db.execute("DELETE FROM acks WHERE first_seq = ?", (first,))
    elif gone_to >= first:
        await db.execute("UPDATE acks SET first_seq = ? WHERE first_seq = ?", (gone_to + 1, first))
    return [row[1:] for row in rows], gone_to


async def delete_oldest_acked(
    db: aiosqlite.Connection, limit: int, acked: AckedRanges
) -> list[Any]:
    """Delete up to `limit` of the earliest delivered rows (by `acked_at`, then seq), as
    (priority, kind, size) each; the in-memory runs forget them at once (a rollback makes
    the caller's transaction re-read them)."""
    rows: list[Any] = []
    while len(rows) < limit:
        oldest = await db.execute_fetchall(
            "SELECT first_seq, last_seq FROM acks ORDER BY acked_at, first_seq LIMIT 1"
        )
        if not oldest:
            break
        ((first, last),) = oldest
        got, gone_to = await delete_acked_run(
            db, int(first), int(last), limit - len(rows), "priority, kind, length(body)"
        )
        acked.remove(int(first), gone_to)
        rows += got
    return rows


async def count_evictions(db: aiosqlite.Connection, overflow: Sequence[Overflow]) -> None:
    await db.executemany(
        "INSERT INTO evictions (priority, kind, reason, count) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET count = count + excluded.count",
        [(o.priority, o.kind, o.reason, o.count) for o in overflow],
    )


async def count_retained_drops(
    db: aiosqlite.Connection, dropped: Mapping[tuple[int, str], int]
) -> None:
    """Count delivered records dropped before their retention ended (reason `retained`)."""
    await db.executemany(
        "INSERT INTO evictions (priority, kind, reason, count) VALUES (?, ?, 'retained', ?)"
        " ON CONFLICT DO UPDATE SET count = count + excluded.count",
        [(priority, kind, count) for (priority, kind), count in dropped.items()],
    )
