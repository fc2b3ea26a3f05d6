"""What every seam of `SqliteBuffer` shares: the connections, one transaction at a time, the counts.

`SqliteBufferCore` holds the whole in-memory state of an open buffer in one place (each seam's
mixin reads and writes its own part of it) and the two things every seam needs:

- `_transaction`: the writers' `asyncio.Lock` held for one `BEGIN IMMEDIATE ... COMMIT` (or a
  read snapshot), ROLLBACK on any exception or cancellation. A transaction that did not finish
  cleanly leaves `last_seq` and the counts unknown: they are re-read before the next one
  (invariants 5 and 6 of the package docstring).
- the pending and retained counts per priority (`_refresh_counts`, `_settle`), which capacity
  and leasing read without a query;
- the acked seqs (`_acked`, `buffer.sqlite.acked`), re-read with the counts, and
  `_oldest_pending`, the scan of one priority's pending rows that reads only the seqs between
  acked runs (an index seek per gap, never an acked row).
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import aiosqlite

from buffer.base import BufferUnavailable, Capacity
from buffer.sqlite.acked import AckedRanges
from buffer.sqlite.statements import classified, one

# Above every seq (an open upper bound in SQL).
NO_UPPER_BOUND: Final = 2**62


class SqliteBufferCore:
    """The state of one open buffer file; see the module docstring. Not used on its own:
    `buffer.sqlite.buffer.SqliteBuffer` composes it with its seams."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: Path,
        *,
        retention_s: float,
        clock: Callable[[], float],
        last_seq: int,
        capacity: Capacity,
        read_only: bool = False,
    ) -> None:
        """Use `SqliteBuffer.open`; this only wires an already migrated connection."""
        self.path = path
        self.capacity = capacity
        self.read_only = read_only
        # Set when open() moved a corrupt file aside: (where it went, why).
        self.recovered_from: tuple[Path, str] | None = None
        self._db = db
        # The connection `lease` reads on: a second one for a writable buffer (set by
        # `_connect`), so leasing never waits for a commit; else the same one.
        self._reader = db
        self._lease_lock = asyncio.Lock()
        self._retention_s = retention_s
        self._clock = clock
        self._lock = asyncio.Lock()
        # Committed last_seq, or None when a failed or cancelled transaction left it unknown.
        self._last_seq: int | None = last_seq
        self._known_last_seq = last_seq
        # Whether rows may hold a UUID id as text (written before 16-byte ids): only then does
        # `append` look each id up in that form too. Set when the file is opened for writing;
        # nothing writes that form any more, so it never turns true later.
        self._text_uuid_ids = True
        # Pending rows and bytes per priority, retained bytes; None = re-read before use.
        self._pending_count: dict[int, int] = {}
        self._pending_bytes: dict[int, int] = {}
        self._retained_bytes = 0
        self._counts_valid = False
        # The union of the `acks` ranges: read with the counts, changed after each commit.
        self._acked = AckedRanges()
        # Priorities that may have pending rows (a superset: stale entries cost one query).
        self._priorities: set[int] = set()
        # Lease cursors: per (priority, lane start), the highest seq handed out since the rewind.
        self._leased_up_to: dict[tuple[int, int], int] = {}
        # Per (priority, lane start, lane end): the last_seq at which a lease found that lane
        # empty past its cursor (see `_exhausted`).
        self._lane_drained: dict[tuple[int, int, int], int] = {}
        self._rewinds = 0
        self._sampled: dict[int, int] = defaultdict(int)
        self._disk_checked_at = -math.inf  # monotonic time of the last statvfs
        self._disk_short = False
        # "disk full" was logged and no append has succeeded since (log it once per episode).
        self._disk_full_said = False

    @property
    def last_seq(self) -> int:
        return self._known_last_seq

    @property
    def pending_bytes(self) -> int:
        return sum(self._pending_bytes.values())

    def _settle(self, rows: Sequence[Any], *, retained: bool) -> None:
        """Count rows that stopped being pending: (priority, how many, their bytes) each."""
        for priority, count, size in rows:
            key = int(priority)
            self._pending_count[key] = self._pending_count.get(key, 0) - int(count)
            self._pending_bytes[key] = self._pending_bytes.get(key, 0) - int(size)
            if retained:
                self._retained_bytes += int(size)

    def rewind(self) -> None:
        """Forget all leases (see `LeasingMixin.rewind`, which implements it)."""
        raise NotImplementedError

    async def _refresh_counts(self) -> None:
        """Re-read pending and retained counts from the file (the caller holds the lock)."""
        held, acked = await read_counts(self._db)
        pending = {
            p: (n - acked.get(p, (0, 0))[0], size - acked.get(p, (0, 0))[1])
            for p, (n, size) in held.items()
        }
        self._pending_count = {p: n for p, (n, _) in pending.items() if n}
        self._pending_bytes = {p: size for p, (n, size) in pending.items() if n}
        self._priorities |= set(self._pending_count)
        self._retained_bytes = sum(size for _, size in acked.values())
        self._acked = AckedRanges(
            (int(first), int(last))
            for first, last in await self._db.execute_fetchall(
                "SELECT first_seq, last_seq FROM acks ORDER BY first_seq"
            )
        )
        self._counts_valid = True

    async def _oldest_pending(
        self, db: aiosqlite.Connection, priority: int, columns: str, limit: int, after: int = 0
    ) -> list[Any]:
        """Up to `limit` pending rows of `priority` with a seq above `after`, oldest first, as
        `columns` (seq first). Reads only the gaps between acked runs: one index seek per gap,
        bounded by the number of acked runs."""
        rows: list[Any] = []
        while len(rows) < limit:
            start, end, acked_to = self._acked.next_gap(after)
            rows += await db.execute_fetchall(
                f"SELECT {columns} FROM log WHERE priority = ? AND seq BETWEEN ? AND ?"
                " ORDER BY seq LIMIT ?",
                (priority, start, NO_UPPER_BOUND if end is None else end, limit - len(rows)),
            )
            if acked_to is None:
                break
            after = acked_to
        return rows

    @asynccontextmanager
    async def _transaction(
        self, operation: str, *, write: bool = True
    ) -> AsyncIterator[aiosqlite.Connection]:
        """Hold the lock for one transaction: COMMIT if the body returns, else ROLLBACK.

        aiosqlite runs calls in order on its thread, so even when this task is cancelled the
        ROLLBACK queued here runs before any later caller's BEGIN.
        """
        if write and self.read_only:
            raise BufferUnavailable(f"{self.path}: opened read-only, cannot {operation}")
        async with self._lock:
            with classified(self.path, operation):
                try:
                    # Inside the try: a cancelled BEGIN has still begun on aiosqlite's thread.
                    await self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    if not self._counts_valid:
                        await self._refresh_counts()
                    yield self._db
                    await self._db.execute("COMMIT")
                except BaseException:
                    # A cancelled COMMIT may still have committed: re-read last_seq next time.
                    self._last_seq = None
                    self._counts_valid = False
                    await self._db.rollback()
                    raise


async def read_counts(
    db: aiosqlite.Connection, *, with_bytes: bool = True
) -> tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
    """(rows and bytes per priority of `log`, of those that are acked), from the file; bytes
    are 0 when not `with_bytes` (then only the lane index is read, never a row).

    Neither statement sorts: the per-priority figures come in `log_lane` order, and the acked
    ones per priority as a sum over the `acks` runs. A GROUP BY over the join of `acks` and
    `log` would build a temporary B-tree holding each acked row's body (memory of the size of
    the retained rows: 70 MB at 300,000 rows, measured, at every status snapshot)."""
    size = "coalesce(sum(length(body)), 0)" if with_bytes else "0"
    held = {
        int(p): (int(n), int(total))
        for p, n, total in await db.execute_fetchall(
            f"SELECT priority, count(*), {size} FROM log INDEXED BY log_lane GROUP BY priority"
        )
    }
    acked: dict[int, tuple[int, int]] = {}
    for priority in held:
        n, total = one(
            await db.execute_fetchall(
                f"SELECT count(*), {size} FROM acks CROSS JOIN log INDEXED BY log_lane"
                " ON log.priority = ? AND log.seq BETWEEN acks.first_seq AND acks.last_seq",
                (priority,),
            )
        )
        if n:
            acked[priority] = (int(n), int(total))
    return held, acked
