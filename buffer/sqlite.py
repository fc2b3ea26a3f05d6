"""The SQLite store-and-forward buffer: one file, one writer, nothing accepted is ever lost.

`SqliteBuffer` implements `buffer.base.Buffer` on a single SQLite file in WAL mode, driven through
aiosqlite so that every SQLite call runs on aiosqlite's own thread, never on the event loop.

# What "accepted" means

A record is accepted exactly when the `append` call that offered it returns: its row and the new
`last_seq` were committed in one `BEGIN IMMEDIATE ... COMMIT` transaction. Before that point the
record does not exist; after it, the record survives a process crash (and, with
`synchronous="full"`, a power cut). An `append` that raises accepted nothing. An `append` that is
*cancelled* may or may not have committed; offering the same records again is always safe,
because repeats of an id are recognised and skipped.

# Invariants

1. `seq` is gap-free for the life of the file: accepted records get `last_seq + 1`,
   `last_seq + 2`, ... and nothing else consumes a `seq` (duplicates, rolled-back batches and
   errors do not). `last_seq` lives in `meta`, not in `max(events.seq)`, so it survives purging
   every row and it never restarts.
2. An id is held at most once. A record whose id is in `events` (pending, or acked and still
   retained) or that repeats an earlier record of the same batch is a duplicate: skipped, counted,
   given no `seq`. Once an acked row is purged, or a row is dead-lettered, its id is forgotten.
3. A row is *pending* while `acked_at IS NULL`. `ack` sets `acked_at`; nothing ever clears it.
   Pending rows leave `events` only through `dead_letter`; acked rows only through `purge`, once
   `acked_at < now - retention_s`.
4. `lease` hands out pending rows by `priority` descending, then `seq` ascending, each at most
   once until `rewind`.
5. One transaction at a time: every method that touches the file holds an `asyncio.Lock` for
   the whole of its transaction. aiosqlite multiplexes one connection, so without the lock one
   coroutine's `lease` could read another's uncommitted `append`.

# On-disk layout (schema version 1, in `PRAGMA user_version`)

```
events        seq INTEGER PRIMARY KEY      the rowid: rows are stored in seq order
              id TEXT NOT NULL UNIQUE      the duplicate check (an index on id)
              kind, priority, body BLOB, accepted_at REAL, acked_at REAL (NULL = pending)
  events_pending  (priority, seq) WHERE acked_at IS NULL      lease and the pending counts
  events_acked    (acked_at) WHERE acked_at IS NOT NULL       purge and the retained count
meta          key TEXT PRIMARY KEY, value  ('last_seq', n)
dead_letters  seq, id, kind, priority, body, accepted_at, reason, dead_at
```

Plus the `-wal` and `-shm` files SQLite keeps next to it. Both partial indexes hold only the rows
their queries need, so leasing stays an index seek however many acked rows are retained. Schema
changes are appended to `_MIGRATIONS`; opening a file applies the missing ones, each in its own
transaction together with its `user_version` bump. Opening also runs `PRAGMA quick_check`, which
reads the whole file (about 1 s per GB from a warm cache), once, at startup.

# What a crash costs

- Process crash (kill -9, OOM, panic), either setting: nothing committed is lost. SQLite replays
  or discards the WAL on the next open; a transaction in flight is rolled back as a whole, so a
  batch is either all there with its `last_seq` or not there at all.
- Power cut or kernel crash with `synchronous="full"` (the default): nothing committed is lost;
  every COMMIT waits for the WAL to reach the disk (one fsync per `append`, `ack`, ...).
- Power cut or kernel crash with `synchronous="normal"`: the WAL is synced only at checkpoints,
  so the transactions since the last one can vanish. The file stays consistent (and gap-free),
  but it goes back in time: records that callers saw accepted are gone, acks are undone (those
  records are sent again: harmless, consumers drop repeats by id), and the lost `seq` numbers
  are handed out again to new records, which a consumer may see as a `seq` it already had with a
  different id. Choose it only where throughput matters more than the last second of data.

# Why leases live in memory

A lease only says "this record is on its way to the broker". After a crash or a reconnect the
broker may or may not have it, and only an ack proves delivery, so every record not acked must be
sent again anyway. Keeping leases in memory (a cursor per priority: the highest `seq` handed out)
costs no writes on the hot path, and a restart, like `rewind`, makes everything not acked pending
again. Delivery is at least once; the id makes it effectively once for the consumer.

# Errors

- `BufferCorrupt`: the file is not a usable buffer (not SQLite, failed `PRAGMA quick_check`,
  foreign or newer schema, or corruption found later). Stop; the file needs a person.
- `BufferUnavailable`: the operation failed and changed nothing (disk full, I/O error, locked,
  read-only). Retry with backoff.
- Anything else from sqlite3 (a constraint or SQL error) is a bug in this module and propagates
  as is.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Final, Literal

import aiosqlite

from buffer.base import (
    AppendResult,
    BufferCorrupt,
    BufferStats,
    BufferUnavailable,
    Record,
    StoredRecord,
)

__all__ = ["SqliteBuffer"]

log = logging.getLogger(__name__)

# Schema migrations: _MIGRATIONS[n] takes a file from user_version n to n + 1. Append only.
_MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        priority INTEGER NOT NULL,
        body BLOB NOT NULL,
        accepted_at REAL NOT NULL,
        acked_at REAL
    );
    CREATE INDEX events_pending ON events (priority, seq) WHERE acked_at IS NULL;
    CREATE INDEX events_acked ON events (acked_at) WHERE acked_at IS NOT NULL;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value);
    INSERT INTO meta (key, value) VALUES ('last_seq', 0);
    CREATE TABLE dead_letters (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        kind TEXT NOT NULL,
        priority INTEGER NOT NULL,
        body BLOB NOT NULL,
        accepted_at REAL NOT NULL,
        reason TEXT NOT NULL,
        dead_at REAL NOT NULL
    );
    """,
)

_BUSY_TIMEOUT_MS: Final = 5_000
# SQLite keeps the WAL at its high-water size after a checkpoint; cap what it keeps.
_JOURNAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
# Bound on host parameters per statement (SQLite's own limit is 999 on old builds).
_PARAMS_PER_STATEMENT: Final = 500
_PURGE_ROWS_PER_TRANSACTION: Final = 10_000

# Primary result codes (the low byte of sqlite3.Error.sqlite_errorcode).
_CORRUPT_CODES: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_UNAVAILABLE_CODES: Final = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
    }
)

_COLUMNS: Final = "seq, id, kind, priority, body, accepted_at"


class SqliteBuffer:
    """The durable buffer on one SQLite file; see the module docstring for its contract.

    Open it with `async with SqliteBuffer.open(path) as buffer:`; the file is closed on exit.
    One process, one `SqliteBuffer` per file (holding the state dir is the caller's job).
    """

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: Path,
        *,
        retention_s: float,
        clock: Callable[[], float],
        last_seq: int,
        priorities: set[int],
    ) -> None:
        """Use `SqliteBuffer.open`; this only wires an already migrated connection."""
        self.path = path
        self._db = db
        self._retention_s = retention_s
        self._clock = clock
        self._lock = asyncio.Lock()
        # Committed last_seq, or None when a failed or cancelled transaction left it unknown.
        self._last_seq: int | None = last_seq
        # Priorities that may have pending rows (a superset: stale entries cost one query).
        self._priorities = priorities
        # Lease cursors: per priority, the highest seq handed out since the last rewind.
        self._leased_up_to: dict[int, int] = {}
        self._rewinds = 0

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: Path,
        *,
        synchronous: Literal["full", "normal"] = "full",
        retention_s: float = 86_400,
        clock: Callable[[], float] = time.time,
    ) -> AsyncIterator[SqliteBuffer]:
        """Open (creating if needed), check and migrate the buffer file at `path`.

        `synchronous` trades power-cut safety for throughput (see the module docstring).
        `retention_s` is how long acked records are kept. `clock` stamps accepted_at, acked_at
        and dead_at, and is `purge`'s default `now`.

        Raises BufferCorrupt if the file is not SQLite, fails `PRAGMA quick_check` or holds a
        foreign or newer schema; BufferUnavailable if it cannot be opened (permissions, disk).
        """
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        with _classified(path, "open"):
            db = await aiosqlite.connect(path, isolation_level=None)
        try:
            with _classified(path, "open"):
                buffer = await cls._prepare(
                    db, path, synchronous=synchronous, retention_s=retention_s, clock=clock
                )
        except BaseException:
            await db.close()
            raise
        try:
            yield buffer
        finally:
            async with buffer._lock:
                await db.close()

    @classmethod
    async def _prepare(
        cls,
        db: aiosqlite.Connection,
        path: Path,
        *,
        synchronous: Literal["full", "normal"],
        retention_s: float,
        clock: Callable[[], float],
    ) -> SqliteBuffer:
        await db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        problems = [str(row[0]) for row in await db.execute_fetchall("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise BufferCorrupt(f"{path}: quick_check failed: {'; '.join(problems[:5])}")
        (mode,) = _one(await db.execute_fetchall("PRAGMA journal_mode = WAL"))
        if str(mode).lower() != "wal":
            raise BufferUnavailable(f"{path}: cannot use WAL journal mode (got {mode!r})")
        await db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        await db.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
        await _migrate(db, path)
        (last_seq,) = _one(
            await db.execute_fetchall("SELECT value FROM meta WHERE key = 'last_seq'")
        )
        priorities = await db.execute_fetchall(
            "SELECT DISTINCT priority FROM events WHERE acked_at IS NULL"
        )
        return cls(
            db,
            path,
            retention_s=retention_s,
            clock=clock,
            last_seq=int(last_seq),
            priorities={int(row[0]) for row in priorities},
        )

    async def append(self, records: Sequence[Record]) -> AppendResult:
        """Accept the records not yet held, in one transaction; see the module docstring."""
        batch: dict[str, Record] = {}
        for record in records:
            batch.setdefault(record.id, record)
        # Before the transaction: if it commits but this call is cancelled, lease still
        # finds these priorities. If it rolls back, a stale entry costs one empty query.
        self._priorities.update(record.priority for record in batch.values())
        async with self._transaction("append") as db:
            last_seq = self._last_seq
            if last_seq is None:
                (value,) = _one(
                    await db.execute_fetchall("SELECT value FROM meta WHERE key = 'last_seq'")
                )
                last_seq = int(value)
            ids = list(batch)
            for start in range(0, len(ids), _PARAMS_PER_STATEMENT):
                chunk = ids[start : start + _PARAMS_PER_STATEMENT]
                rows = await db.execute_fetchall(
                    f"SELECT id FROM events WHERE id IN ({_placeholders(len(chunk))})", chunk
                )
                for (held_id,) in rows:
                    del batch[held_id]
            if batch:
                now = self._clock()
                await db.executemany(
                    f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (last_seq + offset, r.id, r.kind, r.priority, r.body, now)
                        for offset, r in enumerate(batch.values(), start=1)
                    ],
                )
                last_seq += len(batch)
                await db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (last_seq,))
        self._last_seq = last_seq
        return AppendResult(
            accepted=len(batch), duplicates=len(records) - len(batch), last_seq=last_seq
        )

    async def lease(self, limit: int) -> list[StoredRecord]:
        """Up to `limit` pending records not leased since the last rewind, in lease order."""
        leased: list[StoredRecord] = []
        rewinds = self._rewinds
        async with self._lock:
            with _classified(self.path, "lease"):
                for priority in sorted(self._priorities, reverse=True):
                    if len(leased) >= limit:
                        break
                    rows = await self._db.execute_fetchall(
                        f"SELECT {_COLUMNS} FROM events"
                        " WHERE acked_at IS NULL AND priority = ? AND seq > ?"
                        " ORDER BY seq LIMIT ?",
                        (priority, self._leased_up_to.get(priority, 0), limit - len(leased)),
                    )
                    batch = [StoredRecord(*row) for row in rows]
                    # A rewind while this query ran wins: these rows count as not leased.
                    if batch and self._rewinds == rewinds:
                        self._leased_up_to[priority] = batch[-1].seq
                    leased += batch
        return leased

    def rewind(self) -> None:
        """Forget all leases: every record not acked is leased again, in lease order."""
        self._leased_up_to.clear()
        self._rewinds += 1

    async def ack(self, seqs: Sequence[int]) -> None:
        """Mark these records delivered. Unknown, acked or dead-lettered seqs are ignored."""
        if not seqs:
            return
        now = self._clock()
        async with self._transaction("ack") as db:
            for chunk in _chunks(seqs):
                await db.execute(
                    "UPDATE events SET acked_at = ?"
                    f" WHERE acked_at IS NULL AND seq IN ({_placeholders(len(chunk))})",
                    (now, *chunk),
                )

    async def dead_letter(self, seqs: Sequence[int], reason: str) -> None:
        """Move these pending records to `dead_letters` with the reason, in one transaction.

        Unknown, acked or already dead-lettered seqs are ignored.
        """
        if not seqs:
            return
        now = self._clock()
        async with self._transaction("dead_letter") as db:
            for chunk in _chunks(seqs):
                marks = _placeholders(len(chunk))
                await db.execute(
                    f"INSERT INTO dead_letters ({_COLUMNS}, reason, dead_at)"
                    f" SELECT {_COLUMNS}, ?, ? FROM events"
                    f" WHERE acked_at IS NULL AND seq IN ({marks})",
                    (reason, now, *chunk),
                )
                await db.execute(
                    f"DELETE FROM events WHERE acked_at IS NULL AND seq IN ({marks})", tuple(chunk)
                )

    async def purge(self, now: float | None = None) -> int:
        """Delete acked records older than the retention window; return how many.

        Deletes in transactions of at most 10,000 rows, releasing the lock between them so that
        appends and acks are never held up for long.
        """
        cutoff = (self._clock() if now is None else now) - self._retention_s
        deleted = 0
        while True:
            async with self._lock:
                with _classified(self.path, "purge"):
                    cursor = await self._db.execute(
                        "DELETE FROM events WHERE seq IN"
                        " (SELECT seq FROM events WHERE acked_at < ? LIMIT ?)",
                        (cutoff, _PURGE_ROWS_PER_TRANSACTION),
                    )
            deleted += cursor.rowcount
            if cursor.rowcount < _PURGE_ROWS_PER_TRANSACTION:
                return deleted

    async def stats(self) -> BufferStats:
        """Exact counts, from one consistent snapshot of the file."""
        async with self._transaction("stats", write=False) as db:
            by_priority = list(
                await db.execute_fetchall(
                    "SELECT priority, count(*), min(seq) FROM events"
                    " WHERE acked_at IS NULL GROUP BY priority"
                )
            )
            oldest_seq = min((int(row[2]) for row in by_priority), default=None)
            oldest_at, acked, dead, last_seq = _one(
                await db.execute_fetchall(
                    "SELECT (SELECT accepted_at FROM events WHERE seq = ?),"
                    " (SELECT count(*) FROM events WHERE acked_at IS NOT NULL),"
                    " (SELECT count(*) FROM dead_letters),"
                    " (SELECT value FROM meta WHERE key = 'last_seq')",
                    (oldest_seq,),
                )
            )
        pending = {int(row[0]): int(row[1]) for row in by_priority}
        return BufferStats(
            pending=sum(pending.values()),
            pending_by_priority=pending,
            # The oldest by acceptance order: the lowest pending seq.
            oldest_pending_at=None if oldest_at is None else float(oldest_at),
            acked_retained=int(acked),
            dead_letters=int(dead),
            last_seq=int(last_seq),
            file_bytes=await asyncio.to_thread(self._file_bytes),
        )

    def _file_bytes(self) -> int:
        total = 0
        for file in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                total += file.stat().st_size
            except FileNotFoundError:
                pass
        return total

    @asynccontextmanager
    async def _transaction(
        self, operation: str, *, write: bool = True
    ) -> AsyncIterator[aiosqlite.Connection]:
        """Hold the lock for one transaction: COMMIT if the body returns, else ROLLBACK.

        aiosqlite runs calls in order on its thread, so even when this task is cancelled the
        ROLLBACK queued here runs before any later caller's BEGIN.
        """
        async with self._lock:
            with _classified(self.path, operation):
                try:
                    # Inside the try: a cancelled BEGIN has still begun on aiosqlite's thread.
                    await self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    yield self._db
                    await self._db.execute("COMMIT")
                except BaseException:
                    # A cancelled COMMIT may still have committed: re-read last_seq next time.
                    self._last_seq = None
                    await self._db.rollback()
                    raise


async def _migrate(db: aiosqlite.Connection, path: Path) -> None:
    (version,) = _one(await db.execute_fetchall("PRAGMA user_version"))
    if version > len(_MIGRATIONS):
        raise BufferCorrupt(
            f"{path}: schema version {version} is newer than this agent knows ({len(_MIGRATIONS)})"
        )
    if version == 0:
        (objects,) = _one(await db.execute_fetchall("SELECT count(*) FROM sqlite_master"))
        if objects:
            raise BufferCorrupt(f"{path}: a SQLite database, but not an edge-agent buffer")
    for target in range(version + 1, len(_MIGRATIONS) + 1):
        script = _MIGRATIONS[target - 1]
        try:
            await db.executescript(
                f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {target}; COMMIT;"
            )
        except BaseException:
            await db.rollback()
            raise
        log.info("buffer %s: schema migrated to version %d", path, target)


@contextmanager
def _classified(path: Path, operation: str) -> Iterator[None]:
    """Wrap sqlite3 errors by what the caller must do; leave bugs (SQL, constraints) as they are."""
    try:
        yield
    except sqlite3.Error as error:
        code = getattr(error, "sqlite_errorcode", -1) & 0xFF
        if code in _CORRUPT_CODES:
            raise BufferCorrupt(f"{path}: {operation}: {error}") from error
        if code in _UNAVAILABLE_CODES:
            raise BufferUnavailable(f"{path}: {operation}: {error}") from error
        raise


def _one(rows: Any) -> tuple[Any, ...]:
    """The single row of a result."""
    (row,) = rows
    return tuple(row)


def _chunks(values: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), _PARAMS_PER_STATEMENT):
        yield values[start : start + _PARAMS_PER_STATEMENT]


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)
