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
   Pending rows leave `events` only through `dead_letter` or an eviction (capacity, below);
   acked rows only through `purge` (past `retention_s`, or over `retained_max_bytes`, oldest
   first) or when the disk is short.
4. `lease` hands out pending rows each at most once until `rewind`: within one lane
   (`after_seq < seq <= up_to_seq`) and one priority in `seq` order; across priorities either
   strictly highest first or split by weights (`shares`, see `buffer.base`).
5. One transaction at a time: every method that writes holds an `asyncio.Lock` for the whole
   of its transaction (aiosqlite multiplexes one connection). `lease` is the exception: it
   reads on a second, query-only connection under its own lock, so it sees committed rows only
   and never waits for a writer's COMMIT (an ack's fsync); see "Why leases read on their own
   connection".
6. Capacity counts pending bytes only (`length(body)` of rows with `acked_at IS NULL`), kept in
   memory per priority and re-read after any transaction that did not finish cleanly. Every
   record given up for room is counted in `evictions` in the same transaction that gave it up.

# On-disk layout (schema version 5, in `PRAGMA user_version`)

```
events        seq INTEGER PRIMARY KEY      the rowid: rows are stored in seq order
              id TEXT NOT NULL UNIQUE      the duplicate check (an index on id); see below
              kind, priority, body BLOB, accepted_at REAL, acked_at REAL (NULL = pending)
  events_pending  (priority, seq) WHERE acked_at IS NULL      lease and the pending counts
  events_acked    (acked_at) WHERE acked_at IS NOT NULL       purge and the retained count
meta          key TEXT PRIMARY KEY, value  ('last_seq', n)
dead_letters  number INTEGER PRIMARY KEY       the order they were set aside (schema version 3)
              seq UNIQUE, accepted_at          NULL for records never accepted (`set_aside`)
              id, kind, priority, body, reason, dead_at
evictions     priority, kind, reason, count          (schema version 2)
source_state  key TEXT PRIMARY KEY, value TEXT, updated_at REAL   (schema version 4)
identities    from_seq INTEGER PRIMARY KEY, site TEXT, agent TEXT  (schema version 5)
```

An id that is a UUID in canonical text form (what `events.ids` makes) is stored as its 16
bytes (`stored_id`), anything else as text: that halves the id in the row and in its UNIQUE
index (about 45 bytes a row). SQLite keeps a BLOB as a BLOB in a TEXT column, so this needs no
schema change; rows written before hold the text form, and `append` looks a UUID id up in both
forms, so a file from before still recognises its ids (until its old rows are purged). Readers
turn the column back into text with `id_text` or the SQL expression `ID_TEXT_SQL`. The body is
opaque here; `events.wire` stores it without what the row or the agent already holds.

`source_state` is what a source must remember together with the events it produced: a
database cursor, an idempotency key it answered. `append(records, state=...)` writes it in the
same transaction as the records, so the two never disagree after a crash: a cursor never runs
ahead of (or behind) the events of the rows it passed.

`identities` says under which site and agent id the records from `from_seq` on were accepted
(`note_identity`, called by each agent generation before it accepts anything). Stored bodies
leave the site and agent out (`events.wire`); whoever publishes them splices them back in from
this history, so renaming a site or an agent relabels only what is accepted after the rename.

A dead letter with a `seq` was accepted and then given up (`dead_letter`): its seq is a gap the
consumer sees, and the row names it. One without (`set_aside`: a reading the pipeline rejected)
never had a seq and never held its id. `retry_dead_letters` puts the first kind back with its
own seq; the second kind stays (never accepted, and kept for a person, not for the hub).

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

# When it is full

`Capacity` (see `buffer.base`): a batch that would take pending bytes over `max_pending_bytes`
goes through each priority's overflow policy inside the same transaction, so an eviction and the
records it made room for commit together or not at all. Delivered rows do not count against the
limit; they are trimmed by `purge` (time, then `retained_max_bytes`) and are the first to go when
the *disk* is short: below `disk_free_reserve_bytes` free (checked with statvfs, at most once a
second) or when SQLite reports SQLITE_FULL (a full disk, or `max_page_count`). Deleting rows
does not shrink the file, it frees pages that the next insert reuses; so when the disk is short
the buffer deletes delivered rows first, and when there are none it treats the current pending
bytes as the limit. A batch that still does not fit, with a priority whose policy is `block`,
raises `BufferFull` and accepts nothing. A row evicted while it was leased may still reach the
hub (its PUBACK then acks nothing); the overflow report names its seq either way.

# Startup safety

`open(..., recover_corrupt=True)`: a file that fails the checks above is renamed (with its
`-wal` and `-shm`) to `<name>.corrupt-<UTC timestamp>` (never deleted), the event is logged and
kept in `recovered_from`, and a fresh file is started. Its `last_seq` starts where the old
file's `meta` said, if that can still be read, so `seq` continues (the records lost with the
old file are a gap the log names); otherwise at 0.

# Why leases read on their own connection

An ack is a write transaction that ends in an fsync; on the one connection, a lease had to
wait for it, and publishing stalled behind recording. A second connection (query-only, its own
aiosqlite thread) lets leasing go on meanwhile. It sees committed rows only, which is what a
lease may hand out anyway. The lease cursors stay right: rows are committed in seq order, so a
row not yet visible has a seq above every cursor; a row that comes back below a cursor
(`retry_dead_letters`) comes with a `rewind`. A lane that a lease found empty is not queried
again until `last_seq` moves (taken before the query, so every row up to it was visible) or a
rewind. `ack` marks rows by seq ranges (a message's seqs, and several messages' together, are
mostly consecutive) and counts them per priority in SQL, not per row in Python.

# Why leases live in memory

A lease only says "this record is on its way to the broker". After a crash or a reconnect the
broker may or may not have it, and only an ack proves delivery, so every record not acked must be
sent again anyway. Keeping leases in memory (a cursor per priority and lane: the highest `seq`
handed out) costs no writes on the hot path, and a restart, like `rewind`, makes everything not
acked pending again. Delivery is at least once; the id makes it effectively once for the consumer.

# Errors

- `BufferCorrupt`: the file is not a usable buffer (not SQLite, failed `PRAGMA quick_check`,
  foreign or newer schema, or corruption found later). Stop; the file needs a person.
- `BufferUnavailable`: the operation failed and changed nothing (I/O error, locked, read-only).
  Retry with backoff. `BufferFull` (a subclass): no room for these records and none may be
  given up; hold them (backpressure) and retry.
- Anything else from sqlite3 (a constraint or SQL error) is a bug in this module and propagates
  as is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import aiosqlite

from buffer.base import (
    AppendResult,
    BufferCorrupt,
    BufferFull,
    BufferStats,
    BufferUnavailable,
    Capacity,
    Overflow,
    OverflowReason,
    Record,
    StoredRecord,
)

__all__ = ["DeadLetter", "SqliteBuffer", "move_aside"]

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
    """
    CREATE TABLE evictions (
        priority INTEGER NOT NULL,
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (priority, kind, reason)
    );
    """,
    # Version 3: dead letters may never have been accepted (`set_aside`): no seq, no
    # accepted_at. `seq` stops being the rowid; `number` orders them as they were set aside.
    """
    CREATE TABLE dead_letters_v3 (
        number INTEGER PRIMARY KEY,
        seq INTEGER UNIQUE,
        id TEXT NOT NULL,
        kind TEXT NOT NULL,
        priority INTEGER NOT NULL,
        body BLOB NOT NULL,
        accepted_at REAL,
        reason TEXT NOT NULL,
        dead_at REAL NOT NULL
    );
    INSERT INTO dead_letters_v3 (seq, id, kind, priority, body, accepted_at, reason, dead_at)
        SELECT seq, id, kind, priority, body, accepted_at, reason, dead_at FROM dead_letters
        ORDER BY seq;
    DROP TABLE dead_letters;
    ALTER TABLE dead_letters_v3 RENAME TO dead_letters;
    """,
    # Version 4: state a source commits together with its records (`append(state=...)`).
    """
    CREATE TABLE source_state (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # Version 5: the site and agent id records were accepted under (`note_identity`).
    """
    CREATE TABLE identities (
        from_seq INTEGER PRIMARY KEY,
        site TEXT NOT NULL,
        agent TEXT NOT NULL
    );
    """,
)

_BUSY_TIMEOUT_MS: Final = 5_000
# SQLite keeps the WAL at its high-water size after a checkpoint; cap what it keeps.
_JOURNAL_SIZE_LIMIT: Final = 64 * 1024 * 1024
# Bound on host parameters per statement (SQLite's own limit is 999 on old builds).
_PARAMS_PER_STATEMENT: Final = 500
_PURGE_ROWS_PER_TRANSACTION: Final = 10_000
_EVICT_ROWS_PER_STATEMENT: Final = 512
_DISK_CHECK_INTERVAL_S: Final = 1.0
# Deleted rows free pages for reuse, not always exactly as many bytes as the new rows need.
_DISK_SHORT_SLACK: Final = 2
_DISK_FULL_ATTEMPTS: Final = 5
# An overflow report names at most this many seq ranges; more make another report.
_RANGES_PER_OVERFLOW: Final = 256
_REPLAY_ROWS_PER_QUERY: Final = 1_000

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
# `id` as text whichever way it is stored (see `stored_id`), computed by SQLite, not Python.
ID_TEXT_SQL: Final = (
    "CASE WHEN typeof(id) = 'blob' THEN lower(substr(hex(id), 1, 8) || '-' ||"
    " substr(hex(id), 9, 4) || '-' || substr(hex(id), 13, 4) || '-' || substr(hex(id), 17, 4)"
    " || '-' || substr(hex(id), 21)) ELSE id END"
)
# The columns of a StoredRecord, as read.
_READ_COLUMNS: Final = f"seq, {ID_TEXT_SQL} AS id, kind, priority, body, accepted_at"
_NO_UPPER_BOUND: Final = 2**62


class _DiskFull(BufferUnavailable):
    """SQLITE_FULL: the disk (or max_page_count) has no room for this transaction."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead letter as listed (body left out); `seq` and `accepted_at` are None for a record
    set aside before it was accepted."""

    seq: int | None
    id: str
    kind: str
    priority: int
    size: int
    accepted_at: float | None
    reason: str
    dead_at: float


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
        self._disk_checked_at = -_DISK_CHECK_INTERVAL_S
        self._disk_short = False
        # "disk full" was logged and no append has succeeded since (log it once per episode).
        self._disk_full_said = False

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: Path,
        *,
        synchronous: Literal["full", "normal"] = "full",
        retention_s: float = 86_400,
        clock: Callable[[], float] = time.time,
        capacity: Capacity | None = None,
        recover_corrupt: bool = False,
        read_only: bool = False,
        max_page_count: int | None = None,
    ) -> AsyncIterator[SqliteBuffer]:
        """Open (creating if needed), check and migrate the buffer file at `path`.

        `synchronous` trades power-cut safety for throughput (see the module docstring).
        `retention_s` is how long acked records are kept. `clock` stamps accepted_at, acked_at
        and dead_at, and is `purge`'s default `now`. `capacity`: see `buffer.base.Capacity`.
        `recover_corrupt`: move a corrupt file aside and start afresh instead of raising.
        `read_only`: for inspection while another process owns the file (`stats`, listings);
        no check, no migration, no writes. `max_page_count` caps the file (SQLite's pragma; it
        is how tests make a disk full).

        Raises BufferCorrupt if the file is not SQLite, fails `PRAGMA quick_check` or holds a
        foreign or newer schema; BufferUnavailable if it cannot be opened (permissions, disk).
        """
        capacity = capacity or Capacity()
        if read_only:
            buffer = await cls._open_read_only(path, clock=clock, capacity=capacity)
        else:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            options = {
                "synchronous": synchronous,
                "retention_s": retention_s,
                "clock": clock,
                "capacity": capacity,
                "max_page_count": max_page_count,
            }
            recovered: tuple[Path, str] | None = None
            try:
                buffer = await cls._connect(path, **options)  # type: ignore[arg-type]
            except BufferCorrupt as error:
                if not recover_corrupt:
                    raise
                salvaged = await asyncio.to_thread(_salvage_last_seq, path)
                moved = await asyncio.to_thread(move_aside, path, clock())
                log.error(
                    "buffer %s is corrupt (%s): moved aside to %s; starting a fresh buffer "
                    "with seq continuing after %s",
                    path, error, moved, salvaged if salvaged is not None else "0 (unreadable)",
                )
                recovered = (moved, str(error))
                buffer = await cls._connect(path, initial_last_seq=salvaged, **options)  # type: ignore[arg-type]
            buffer.recovered_from = recovered
        try:
            yield buffer
        finally:
            async with buffer._lock, buffer._lease_lock:
                if buffer._reader is not buffer._db:
                    await buffer._reader.close()
                    # Fold the WAL back into the file and empty it (SQLite deletes it on the
                    # last close, but not while another process, e.g. a stats reader, has the
                    # file open): what stays on disk is the buffer, not its journal.
                    with contextlib.suppress(sqlite3.Error):
                        await buffer._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                await buffer._db.close()

    @classmethod
    async def _connect(
        cls,
        path: Path,
        *,
        synchronous: Literal["full", "normal"],
        retention_s: float,
        clock: Callable[[], float],
        capacity: Capacity,
        max_page_count: int | None,
        initial_last_seq: int | None = None,
    ) -> SqliteBuffer:
        with _classified(path, "open"):
            db = await aiosqlite.connect(path, isolation_level=None)
        try:
            with _classified(path, "open"):
                await db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                problems = [str(row[0]) for row in await db.execute_fetchall("PRAGMA quick_check")]
                if problems != ["ok"]:
                    raise BufferCorrupt(f"{path}: quick_check failed: {'; '.join(problems[:5])}")
                (mode,) = _one(await db.execute_fetchall("PRAGMA journal_mode = WAL"))
                if str(mode).lower() != "wal":
                    raise BufferUnavailable(f"{path}: cannot use WAL journal mode (got {mode!r})")
                await db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
                await db.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
                if max_page_count is not None:
                    await db.execute(f"PRAGMA max_page_count = {int(max_page_count)}")
                fresh = await _migrate(db, path)
                if fresh and initial_last_seq:
                    await db.execute(
                        "UPDATE meta SET value = ? WHERE key = 'last_seq'", (initial_last_seq,)
                    )
                (last_seq,) = _one(
                    await db.execute_fetchall("SELECT value FROM meta WHERE key = 'last_seq'")
                )
                buffer = cls(
                    db,
                    path,
                    retention_s=retention_s,
                    clock=clock,
                    last_seq=int(last_seq),
                    capacity=capacity,
                )
                await buffer._refresh_counts()
                # Text sorts before blobs in the id index: this reads only the text ids.
                buffer._text_uuid_ids = bool(await db.execute_fetchall(
                    "SELECT 1 FROM events WHERE id < x'' AND length(id) = 36 LIMIT 1"
                ))
                # Leases read on their own connection (see "Why leases read on their own
                # connection"); it only ever sees committed rows.
                buffer._reader = await aiosqlite.connect(path, isolation_level=None)
                try:
                    await buffer._reader.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                    await buffer._reader.execute("PRAGMA query_only = ON")
                except BaseException:
                    await buffer._reader.close()
                    raise
        except BaseException:
            await db.close()
            raise
        return buffer

    @classmethod
    async def _open_read_only(
        cls, path: Path, *, clock: Callable[[], float], capacity: Capacity
    ) -> SqliteBuffer:
        if not await asyncio.to_thread(path.exists):
            raise BufferUnavailable(f"{path}: no buffer file here")
        with _classified(path, "open"):
            db = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        try:
            with _classified(path, "open"):
                await db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                (version,) = _one(await db.execute_fetchall("PRAGMA user_version"))
                if version != len(_MIGRATIONS):
                    raise BufferCorrupt(
                        f"{path}: schema version {version}, this tool reads version "
                        f"{len(_MIGRATIONS)} (start the agent once to migrate it)"
                    )
                (last_seq,) = _one(
                    await db.execute_fetchall("SELECT value FROM meta WHERE key = 'last_seq'")
                )
                buffer = cls(
                    db,
                    path,
                    retention_s=0,
                    clock=clock,
                    last_seq=int(last_seq),
                    capacity=capacity,
                    read_only=True,
                )
                await buffer._refresh_counts()
        except BaseException:
            await db.close()
            raise
        return buffer

    @property
    def last_seq(self) -> int:
        return self._known_last_seq

    # -- append ---------------------------------------------------------------------------------

    async def append(
        self, records: Sequence[Record], state: Mapping[str, str | None] | None = None
    ) -> AppendResult:
        """Accept the records not yet held, in one transaction; see the module docstring.
        `state`: source state entries written in the same transaction (None deletes a key);
        they are written even when every record is a duplicate."""
        batch: dict[str, Record] = {}
        for record in records:
            batch.setdefault(record.id, record)
        # Before the transaction: if it commits but this call is cancelled, lease still
        # finds these priorities. If it rolls back, a stale entry costs one empty query.
        self._priorities.update(record.priority for record in batch.values())
        incoming = sum(len(r.body) for r in batch.values())
        slack = _DISK_SHORT_SLACK
        disk_short = False
        if await self._disk_is_short():
            # Delivered rows go first, in their own transaction: freed pages stay free.
            disk_short = await self._drop_retained_now(incoming * slack) < incoming
        for _attempt in range(_DISK_FULL_ATTEMPTS):
            try:
                result = await self._append(
                    batch, len(records), state or {}, disk_short=disk_short, slack=slack
                )
            except _DiskFull as error:
                if not self._disk_full_said:  # once per episode; the caller counts retries
                    self._disk_full_said = True
                    log.warning("buffer %s: disk full (%s); making room", self.path, error)
                if await self._drop_retained_now(incoming * slack) < incoming:
                    disk_short = True  # pending records must make the room
                slack *= 2  # freed rows and new rows do not map to pages one to one
                continue
            if self._disk_full_said:
                self._disk_full_said = False
                log.warning("buffer %s: the disk has room again", self.path)
            return result
        raise BufferFull(f"{self.path}: the disk is full and nothing more may be evicted")

    async def _drop_retained_now(self, target: int) -> int:
        async with self._transaction("drop_retained") as db:
            return await self._drop_retained(db, target)

    async def _append(
        self,
        batch: dict[str, Record],
        offered: int,
        state: Mapping[str, str | None],
        *,
        disk_short: bool,
        slack: int,
    ) -> AppendResult:
        batch = dict(batch)
        overflow: list[Overflow] = []
        async with self._transaction("append") as db:
            last_seq = self._last_seq
            if last_seq is None:
                (value,) = _one(
                    await db.execute_fetchall("SELECT value FROM meta WHERE key = 'last_seq'")
                )
                last_seq = int(value)
            keys = {record_id: stored_id(record_id) for record_id in batch}
            # A UUID id is looked up as stored now (16 bytes) and as older agents stored it
            # (text): a file written before the upgrade still recognises its ids.
            lookups = list(keys.values())
            if self._text_uuid_ids:
                lookups += [i for i, key in keys.items() if key is not i]
            for start in range(0, len(lookups), _PARAMS_PER_STATEMENT):
                chunk = lookups[start : start + _PARAMS_PER_STATEMENT]
                rows = await db.execute_fetchall(
                    f"SELECT id FROM events WHERE id IN ({_placeholders(len(chunk))})", chunk
                )
                for (held_id,) in rows:
                    batch.pop(id_text(held_id), None)
            duplicates = offered - len(batch)
            kept = list(batch.values())
            if kept:
                kept, overflow = await self._make_room(
                    db, kept, disk_short=disk_short, slack=slack
                )
            if kept:
                now = self._clock()
                await db.executemany(
                    f"INSERT INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (last_seq + offset, keys[r.id], r.kind, r.priority, r.body, now)
                        for offset, r in enumerate(kept, start=1)
                    ],
                )
                last_seq += len(kept)
                await db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (last_seq,))
            if overflow:
                await _count_evictions(db, overflow)
            if state:
                await _write_state(db, state, self._clock())
        self._last_seq = self._known_last_seq = last_seq
        for record in kept:
            self._pending_count[record.priority] = self._pending_count.get(record.priority, 0) + 1
            self._pending_bytes[record.priority] = (
                self._pending_bytes.get(record.priority, 0) + len(record.body)
            )
        return AppendResult(
            accepted=len(kept), duplicates=duplicates, last_seq=last_seq, overflow=tuple(overflow)
        )

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
            for chunk in _chunks(taken):
                await db.execute(
                    f"DELETE FROM events WHERE seq IN ({_placeholders(len(chunk))})", tuple(chunk)
                )
        reports: list[Overflow] = []
        for kind, kind_seqs in sorted(seqs.items()):
            ranges = _ranges(kind_seqs)
            for start in range(0, len(ranges), _RANGES_PER_OVERFLOW):
                part = ranges[start : start + _RANGES_PER_OVERFLOW]
                count = sum(last - first + 1 for first, last in part)
                reports.append(Overflow(priority, kind, "evicted", count, tuple(part)))
        return freed, reports

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
            await _count_retained_drops(db, dropped)
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

    # -- lease, ack, dead letters ---------------------------------------------------------------

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
        upper = _NO_UPPER_BOUND if up_to_seq is None else up_to_seq
        # Leases take turns among themselves, not with writers: they read committed rows on
        # `_reader` (or hold the writers' lock too when there is only one connection).
        lock = self._lock if self._reader is self._db else contextlib.nullcontext()
        async with self._lease_lock, lock:
            with _classified(self.path, "lease"):
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
                    # One statement per round: a part per priority, highest first, each asking
                    # for as much as it could get; what goes over `limit` is cut below, lowest
                    # priority first, and stays unleased.
                    parts: list[tuple[int, int, int]] = []  # (priority, after, room)
                    room_left = limit - len(leased)
                    if room_left <= 0:
                        break
                    for priority, quota in quotas.items():
                        if self._exhausted(priority, after_seq, upper):
                            continue
                        cursor = self._leased_up_to.get((priority, after_seq), 0)
                        parts.append((priority, max(after_seq, cursor), min(quota, room_left)))
                    if not parts:
                        continue
                    # Taken before the query starts its snapshot: every row up to it is seen.
                    last_seq = self._last_seq
                    rows = await self._reader.execute_fetchall(
                        " UNION ALL ".join(
                            f"SELECT * FROM (SELECT {_COLUMNS} FROM events"
                            " WHERE acked_at IS NULL"
                            " AND priority = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?)"
                            for _ in parts
                        ),
                        [v for p, after, room in parts for v in (p, after, upper, room)],
                    )
                    order = {part[0]: index for index, part in enumerate(parts)}
                    # Stable: each part keeps its seq order.
                    ordered = sorted(rows, key=lambda row: order[row[3]])
                    batch = [
                        StoredRecord(seq, id_text(key), kind, priority, body, accepted_at)
                        for seq, key, kind, priority, body, accepted_at in ordered[:room_left]
                    ]
                    cut = {row[3] for row in ordered[room_left:]}
                    # A rewind while this query ran wins: these rows count as not leased.
                    if self._rewinds == rewinds:
                        got: dict[int, int] = defaultdict(int)
                        for record in batch:
                            got[record.priority] += 1
                            self._leased_up_to[(record.priority, after_seq)] = record.seq
                        for priority, _after, room in parts:
                            if got[priority] < room and priority not in cut and (
                                last_seq is not None
                            ):
                                # Nothing more of this priority in the lane up to last_seq.
                                self._lane_drained[(priority, after_seq, upper)] = last_seq
                    leased += batch
        return leased

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

    async def ack(self, seqs: Sequence[int]) -> None:
        """Mark these records delivered. Unknown, acked or dead-lettered seqs are ignored."""
        if not seqs:
            return
        now = self._clock()
        settled: list[Any] = []
        try:
            async with self._transaction("ack") as db:
                # By seq ranges (a PUBACKed message, and the messages acked together, are
                # mostly runs of consecutive seqs): one statement per few hundred ranges, and
                # the counts come back per priority, not per row.
                for where, params in _seq_conditions(seqs):
                    settled += await db.execute_fetchall(
                        "SELECT priority, count(*), coalesce(sum(length(body)), 0) FROM events"
                        f" WHERE acked_at IS NULL AND ({where}) GROUP BY priority",
                        params,
                    )
                    await db.execute(
                        f"UPDATE events SET acked_at = ? WHERE acked_at IS NULL AND ({where})",
                        (now, *params),
                    )
        except _DiskFull:
            # Marking rows takes pages (index entries); deleting them frees pages. Delivered
            # is delivered: when the disk is full these are not retained for replay.
            settled = []
            async with self._transaction("ack") as db:
                for chunk in _chunks(seqs):
                    settled += await db.execute_fetchall(
                        "DELETE FROM events"
                        f" WHERE acked_at IS NULL AND seq IN ({_placeholders(len(chunk))})"
                        " RETURNING priority, length(body), kind",
                        tuple(chunk),
                    )
                dropped: dict[tuple[int, str], int] = defaultdict(int)
                for priority, _size, kind in settled:
                    dropped[(int(priority), str(kind))] += 1
                await _count_retained_drops(db, dropped)
            log.warning(
                "buffer %s: disk full: %d delivered record(s) not kept for replay",
                self.path, len(settled),
            )
            self._settle([(row[0], 1, row[1]) for row in settled], retained=False)
            return
        self._settle(settled, retained=True)

    async def dead_letter(self, seqs: Sequence[int], reason: str) -> None:
        """Move these pending records to `dead_letters` with the reason, in one transaction.

        Unknown, acked or already dead-lettered seqs are ignored.
        """
        if not seqs:
            return
        now = self._clock()
        settled: list[Any] = []
        async with self._transaction("dead_letter") as db:
            for chunk in _chunks(seqs):
                marks = _placeholders(len(chunk))
                await db.execute(
                    f"INSERT INTO dead_letters ({_COLUMNS}, reason, dead_at)"
                    f" SELECT {_COLUMNS}, ?, ? FROM events"
                    f" WHERE acked_at IS NULL AND seq IN ({marks})",
                    (reason, now, *chunk),
                )
                settled += await db.execute_fetchall(
                    f"DELETE FROM events WHERE acked_at IS NULL AND seq IN ({marks})"
                    " RETURNING priority, 1, length(body)",
                    tuple(chunk),
                )
        self._settle(settled, retained=False)

    async def set_aside(self, records: Sequence[Record], reason: str) -> None:
        """Store records that were never accepted as dead letters with the reason, in one
        transaction: no seq (the gap-free sequence numbers accepted records only), no
        accepted_at, and their id is not held (the same id may be accepted later).

        Raises BufferUnavailable (nothing stored) on I/O errors or a full disk.
        """
        if not records:
            return
        now = self._clock()
        async with self._transaction("set_aside") as db:
            await db.executemany(
                "INSERT INTO dead_letters"
                " (seq, id, kind, priority, body, accepted_at, reason, dead_at)"
                " VALUES (NULL, ?, ?, ?, ?, NULL, ?, ?)",
                [(stored_id(r.id), r.kind, r.priority, r.body, reason, now) for r in records],
            )

    def _settle(self, rows: Sequence[Any], *, retained: bool) -> None:
        """Count rows that stopped being pending: (priority, how many, their bytes) each."""
        for priority, count, size in rows:
            key = int(priority)
            self._pending_count[key] = self._pending_count.get(key, 0) - int(count)
            self._pending_bytes[key] = self._pending_bytes.get(key, 0) - int(size)
            if retained:
                self._retained_bytes += int(size)

    async def dead_letters(self, limit: int = 1_000) -> list[DeadLetter]:
        """The dead letters, oldest first (bodies left out)."""
        async with self._lock:
            with _classified(self.path, "dead_letters"):
                rows = await self._db.execute_fetchall(
                    f"SELECT seq, {ID_TEXT_SQL}, kind, priority, length(body), accepted_at,"
                    " reason, dead_at FROM dead_letters ORDER BY number LIMIT ?",
                    (limit,),
                )
        return [DeadLetter(*row) for row in rows]

    async def retry_dead_letters(self, seqs: Sequence[int] | None = None) -> tuple[int, int]:
        """Put dead letters that had been accepted (all, or those with these seqs) back in the
        queue with their own seq and id.

        Records set aside before acceptance (`set_aside`, no seq) stay where they are: they
        were never accepted, and what they hold is for a person to read (the pipeline stores
        a description of a rejected reading there, not an event).
        Returns (moved back, dropped because their id is held again, i.e. the same fact was
        accepted again since). Capacity is not checked: a person asked for these records.
        """
        async with self._transaction("retry_dead_letters") as db:
            where, params = "WHERE seq IS NOT NULL", tuple[int, ...]()
            if seqs is not None:
                where, params = f"WHERE seq IN ({_placeholders(len(seqs))})", tuple(seqs)
            rows = list(await db.execute_fetchall(
                f"SELECT {_COLUMNS} FROM dead_letters {where}", params
            ))
            wanted = len(rows)
            # Held again: looked up in both stored forms (a dead letter set aside by an older
            # agent has its UUID id as text, the events table as 16 bytes, and the UNIQUE
            # index does not see those as equal).
            texts = {id_text(row[1]) for row in rows}
            lookups = [*{stored_id(text) for text in texts}, *texts]
            held: set[str] = set()
            for start in range(0, len(lookups), _PARAMS_PER_STATEMENT):
                chunk = lookups[start : start + _PARAMS_PER_STATEMENT]
                found = await db.execute_fetchall(
                    f"SELECT id FROM events WHERE id IN ({_placeholders(len(chunk))})", chunk
                )
                held.update(id_text(held_id) for (held_id,) in found)
            back = []
            for seq, record_id, kind, priority, body, accepted_at in rows:
                text = id_text(record_id)
                if text not in held:
                    held.add(text)  # the same fact twice among the dead letters: once
                    back.append((seq, stored_id(text), kind, priority, body, accepted_at))
            cursor = await db.executemany(
                f"INSERT OR IGNORE INTO events ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", back
            )
            moved = max(cursor.rowcount, 0)
            priorities = await db.execute_fetchall(
                f"SELECT DISTINCT priority FROM dead_letters {where}", params
            )
            await db.execute(f"DELETE FROM dead_letters {where}", params)
        self._priorities.update(int(row[0]) for row in priorities)
        self._counts_valid = False
        self.rewind()
        return moved, int(wanted) - moved

    async def retained(
        self, *, since: float, until: float | None = None, kind: str | None = None
    ) -> AsyncIterator[list[StoredRecord]]:
        """Delivered records still retained, accepted in [since, until), in seq order, in chunks.

        `kind` matches a stored kind exactly or its unversioned name (`telemetry` matches
        `telemetry.v1`)."""
        after = 0
        while True:
            clauses = ["acked_at IS NOT NULL", "seq > ?", "accepted_at >= ?"]
            params: list[Any] = [after, since]
            if until is not None:
                clauses.append("accepted_at < ?")
                params.append(until)
            if kind is not None:
                clauses.append("(kind = ? OR kind LIKE ? ESCAPE '\\')")
                params += [kind, kind.replace("_", "\\_").replace("%", "\\%") + ".v%"]
            async with self._lock:
                with _classified(self.path, "retained"):
                    rows = await self._db.execute_fetchall(
                        f"SELECT {_READ_COLUMNS} FROM events WHERE {' AND '.join(clauses)}"
                        " ORDER BY seq LIMIT ?",
                        (*params, _REPLAY_ROWS_PER_QUERY),
                    )
            records = [StoredRecord(*row) for row in rows]
            if not records:
                return
            yield records
            after = records[-1].seq

    # -- housekeeping and stats -----------------------------------------------------------------

    async def source_state(self, prefix: str) -> dict[str, str]:
        """The committed source state entries whose key starts with `prefix`."""
        async with self._transaction("source_state", write=False) as db:
            rows = await db.execute_fetchall(
                "SELECT key, value FROM source_state WHERE substr(key, 1, ?) = ?",
                (len(prefix), prefix),
            )
        return {str(key): str(value) for key, value in rows}

    async def note_identity(self, site: str, agent: str) -> list[tuple[int, str, str]]:
        """Record that records from the next seq on are accepted as `site`/`agent`, unless
        that is already the latest identity; return the whole history, `(from_seq, site,
        agent)` ascending. A file's first identity covers every record before it (from seq 0:
        agents before schema version 5 spliced their current identity in, as this one does)."""
        async with self._transaction("note_identity") as db:
            history = await _identities(db)
            if not history or history[-1][1:] != (site, agent):
                (value,) = _one(
                    await db.execute_fetchall("SELECT value FROM meta WHERE key = 'last_seq'")
                )
                from_seq = int(value) + 1 if history else 0
                await db.execute(
                    "INSERT OR REPLACE INTO identities (from_seq, site, agent) VALUES (?, ?, ?)",
                    (from_seq, site, agent),
                )
                history = await _identities(db)
        return history

    async def identities(self) -> list[tuple[int, str, str]]:
        """The identity history (`note_identity`), `(from_seq, site, agent)` ascending."""
        async with self._transaction("identities", write=False) as db:
            return await _identities(db)

    async def drop_source_state(self, prefix: str, older_than: float) -> int:
        """Delete the entries under `prefix` last written before `older_than` (epoch s)."""
        async with self._transaction("drop_source_state") as db:
            cursor = await db.execute(
                "DELETE FROM source_state WHERE substr(key, 1, ?) = ? AND updated_at < ?",
                (len(prefix), prefix, older_than),
            )
            return int(cursor.rowcount)

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
                with _classified(self.path, "purge"):
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
                for chunk in _chunks(taken):
                    await db.execute(
                        f"DELETE FROM events WHERE seq IN ({_placeholders(len(chunk))})",
                        tuple(chunk),
                    )
            if not taken:
                break
            deleted += len(taken)
            self._retained_bytes -= freed
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
            # One rowid lookup per priority (its lowest pending seq came from the index above).
            oldest_by_priority: dict[int, float] = {}
            for priority, _count, first_seq in by_priority:
                (accepted_at,) = _one(await db.execute_fetchall(
                    "SELECT accepted_at FROM events WHERE seq = ?", (first_seq,)
                ))
                oldest_by_priority[int(priority)] = float(accepted_at)
            oldest_at, acked, dead, last_seq, oldest_retained = _one(
                await db.execute_fetchall(
                    "SELECT (SELECT accepted_at FROM events WHERE seq = ?),"
                    " (SELECT count(*) FROM events WHERE acked_at IS NOT NULL),"
                    " (SELECT count(*) FROM dead_letters),"
                    " (SELECT value FROM meta WHERE key = 'last_seq'),"
                    " (SELECT accepted_at FROM events WHERE acked_at IS NOT NULL"
                    "  ORDER BY acked_at LIMIT 1)",
                    (oldest_seq,),
                )
            )
            evictions = {
                (int(priority), str(kind), str(reason)): int(count)
                for priority, kind, reason, count in await db.execute_fetchall(
                    "SELECT priority, kind, reason, count FROM evictions"
                )
            }
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
            pending_bytes=sum(self._pending_bytes.values()),
            retained_bytes=self._retained_bytes,
            oldest_retained_at=None if oldest_retained is None else float(oldest_retained),
            evictions=evictions,
            oldest_pending_by_priority=oldest_by_priority,
        )

    @property
    def pending_bytes(self) -> int:
        return sum(self._pending_bytes.values())

    def _file_bytes(self) -> int:
        total = 0
        for file in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                total += file.stat().st_size
            except FileNotFoundError:
                pass
        return total

    async def _refresh_counts(self) -> None:
        """Re-read pending and retained counts from the file (the caller holds the lock)."""
        rows = await self._db.execute_fetchall(
            "SELECT priority, count(*), coalesce(sum(length(body)), 0) FROM events"
            " WHERE acked_at IS NULL GROUP BY priority"
        )
        self._pending_count = {int(p): int(n) for p, n, _ in rows}
        self._pending_bytes = {int(p): int(b) for p, _, b in rows}
        self._priorities |= set(self._pending_count)
        (retained,) = _one(
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
            with _classified(self.path, operation):
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


async def _migrate(db: aiosqlite.Connection, path: Path) -> bool:
    """Bring the file to the current schema; True when it was created just now."""
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
    return bool(version == 0)


async def _identities(db: aiosqlite.Connection) -> list[tuple[int, str, str]]:
    rows = await db.execute_fetchall(
        "SELECT from_seq, site, agent FROM identities ORDER BY from_seq"
    )
    return [(int(seq), str(site), str(agent)) for seq, site, agent in rows]


async def _write_state(
    db: aiosqlite.Connection, state: Mapping[str, str | None], now: float
) -> None:
    await db.executemany(
        "DELETE FROM source_state WHERE key = ?",
        [(key,) for key, value in state.items() if value is None],
    )
    await db.executemany(
        "INSERT INTO source_state (key, value, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        [(key, value, now) for key, value in state.items() if value is not None],
    )


async def _count_evictions(db: aiosqlite.Connection, overflow: Sequence[Overflow]) -> None:
    await db.executemany(
        "INSERT INTO evictions (priority, kind, reason, count) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET count = count + excluded.count",
        [(o.priority, o.kind, o.reason, o.count) for o in overflow],
    )


async def _count_retained_drops(
    db: aiosqlite.Connection, dropped: Mapping[tuple[int, str], int]
) -> None:
    """Count delivered records dropped before their retention ended (reason `retained`)."""
    await db.executemany(
        "INSERT INTO evictions (priority, kind, reason, count) VALUES (?, ?, 'retained', ?)"
        " ON CONFLICT DO UPDATE SET count = count + excluded.count",
        [(priority, kind, count) for (priority, kind), count in dropped.items()],
    )


def move_aside(path: Path, now: float) -> Path:
    """Rename a buffer file (and its -wal and -shm) to `<name>.corrupt-<UTC time>`; never
    deletes anything. Returns the new path of the main file."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("-wal", "-shm", ""):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(target.with_name(target.name + suffix))
    return target


def _salvage_last_seq(path: Path) -> int | None:
    """The last_seq a damaged file still states, if it can be read at all."""
    try:
        with contextlib_closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
            return int(row[0]) if row is not None else None
    except (sqlite3.Error, ValueError, TypeError):
        return None


@contextmanager
def contextlib_closing(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    try:
        yield db
    finally:
        db.close()


@contextmanager
def _classified(path: Path, operation: str) -> Iterator[None]:
    """Wrap sqlite3 errors by what the caller must do; leave bugs (SQL, constraints) as they are."""
    try:
        yield
    except sqlite3.Error as error:
        code = getattr(error, "sqlite_errorcode", -1) & 0xFF
        if code in _CORRUPT_CODES:
            raise BufferCorrupt(f"{path}: {operation}: {error}") from error
        if code == sqlite3.SQLITE_FULL:
            raise _DiskFull(f"{path}: {operation}: {error}") from error
        if code in _UNAVAILABLE_CODES:
            raise BufferUnavailable(f"{path}: {operation}: {error}") from error
        raise


def _ranges(seqs: Sequence[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if ranges and ranges[-1][1] == seq - 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


def stored_id(record_id: str) -> str | bytes:
    """The id as the `id` columns store it: a UUID in its canonical text form (lower case,
    hyphens: what `events.ids` makes) as its 16 bytes, anything else as the text itself.
    Text and bytes never compare equal in SQLite, so the two kinds cannot collide."""
    if len(record_id) == 36:
        try:
            value = uuid.UUID(record_id)
        except ValueError:
            return record_id
        if str(value) == record_id:
            return value.bytes
    return record_id


def id_text(stored: str | bytes) -> str:
    """An `id` column's value back as the record's id (`ID_TEXT_SQL` does it in SQL)."""
    if isinstance(stored, bytes):
        h = stored.hex()  # str(uuid.UUID(bytes=...)), at a third of the cost
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return stored


def _seq_conditions(seqs: Sequence[int]) -> Iterator[tuple[str, tuple[int, ...]]]:
    """SQL conditions that match exactly these seqs, as (where, params), each within the
    parameter bound: runs of consecutive seqs as `seq BETWEEN`, lone seqs in one `seq IN`."""
    ranges = _ranges(sorted(set(seqs)))
    for start in range(0, len(ranges), _PARAMS_PER_STATEMENT // 2):
        part = ranges[start : start + _PARAMS_PER_STATEMENT // 2]
        lone = [first for first, last in part if first == last]
        runs = [(first, last) for first, last in part if first != last]
        terms = ["seq BETWEEN ? AND ?"] * len(runs)
        params = [seq for run in runs for seq in run]
        if lone:
            terms.append(f"seq IN ({_placeholders(len(lone))})")
            params += lone
        yield " OR ".join(terms), tuple(params)


def _one(rows: Any) -> tuple[Any, ...]:
    """The single row of a result."""
    (row,) = rows
    return tuple(row)


def _chunks(values: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), _PARAMS_PER_STATEMENT):
        yield values[start : start + _PARAMS_PER_STATEMENT]


def _placeholders(count: int) -> str:
    return ", ".join("?" * count)
