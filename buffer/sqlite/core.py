"""What every seam of `SqliteBuffer` shares: the connections, one transaction at a time, the counts.

`SqliteBufferCore` holds the whole in-memory state of an open buffer in one place (each seam's
mixin reads and writes its own part of it) and the two things every seam needs:

- `_transaction`: the writers' `asyncio.Lock` held for one `BEGIN IMMEDIATE ... COMMIT` (or a
  read snapshot), ROLLBACK on any exception or cancellation. A transaction that did not finish
  cleanly leaves `last_seq` and the counts unknown: they are re-read before the next one
  (invariants 5 and 6 of the package docstring).
- the pending and retained counts per priority (`_refresh_counts`, `_settle`), which capacity
  and leasing read without a query.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from buffer.base import BufferUnavailable, Capacity
from buffer.sqlite.statements import classified, one


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
        rows = await self._db.execute_fetchall(
            "SELECT priority, count(*), coalesce(sum(length(body)), 0) FROM events"
            " WHERE acked_at IS NULL GROUP BY priority"
        )
        self._pending_count = {int(p): int(n) for p, n, _ in rows}
        self._pending_bytes = {int(p): int(b) for p, _, b in rows}
        self._priorities |= set(self._pending_count)
        (retained,) = one(
            await self._db.execute_fetchall(
                "SELECT coalesce(sum(length(body)), 0) FROM events WHERE acked_at IS NOT NULL"
            )
        )
        self._retained_bytes = int(retained)
        self._counts_valid = True

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
