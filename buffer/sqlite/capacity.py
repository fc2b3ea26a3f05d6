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
from typing import Final

import aiosqlite

from buffer.base import BufferFull, Overflow, OverflowReason, Record
from buffer.sqlite.core import SqliteBufferCore
from buffer.sqlite.statements import chunks, classified, placeholders, seq_ranges

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
        while freed < need:
            rows = await db.execute_fetchall(
                "SELECT seq, kind, length(body) FROM events"
                " WHERE acked_at IS NULL AND priority = ? ORDER BY seq LIMIT ?",
                (priority, _EVICT_ROWS_PER_STATEMENT),
            )
            if not rows:
                break
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
                    f"DELETE FROM events WHERE seq IN ({placeholders(len(chunk))})", tuple(chunk)
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
            rows = await db.execute_fetchall(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events"
                " WHERE acked_at IS NOT NULL ORDER BY acked_at LIMIT ?)"
                " RETURNING priority, kind, length(body)",
                (_EVICT_ROWS_PER_STATEMENT,),
            )
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
                self.path, sum(dropped.values()),
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
                    self.path, "below" if short else "back above", reserve,
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
        while True:
            async with self._lock:
                with classified(self.path, "purge"):
                    rows = list(await self._db.execute_fetchall(
                        "DELETE FROM events WHERE seq IN"
                        " (SELECT seq FROM events WHERE acked_at < ? LIMIT ?)"
                        " RETURNING length(body)",
                        (cutoff, _PURGE_ROWS_PER_TRANSACTION),
                    ))
            deleted += len(rows)
            self._retained_bytes -= sum(int(row[0]) for row in rows)
            if len(rows) < _PURGE_ROWS_PER_TRANSACTION:
                break
        cap = self.capacity.retained_max_bytes
        while cap is not None and self._retained_bytes > cap:
            # Exactly as many of the earliest delivered as bring the retained bytes under the
            # cap (a whole statement's worth would cut the replay window short).
            async with self._transaction("purge") as db:
                oldest = await db.execute_fetchall(
                    "SELECT seq, length(body) FROM events"
                    " WHERE acked_at IS NOT NULL ORDER BY acked_at, seq LIMIT ?",
                    (_EVICT_ROWS_PER_STATEMENT,),
                )
                excess = self._retained_bytes - cap
                taken: list[int] = []
                freed = 0
                for seq, size in oldest:
                    if freed >= excess:
                        break
                    taken.append(int(seq))
                    freed += int(size)
                for chunk in chunks(taken):
                    await db.execute(
                        f"DELETE FROM events WHERE seq IN ({placeholders(len(chunk))})",
                        tuple(chunk),
                    )
            if not taken:
                break
            deleted += len(taken)
            self._retained_bytes -= freed
        return deleted


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
