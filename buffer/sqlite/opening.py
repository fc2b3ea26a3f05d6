"""Opening a buffer file: checks, pragmas, migrations, the lease connection, and salvage.

`OpeningMixin.open` is the only way to a `SqliteBuffer` (see the package docstring, "Startup
safety"):

- a writable open creates the directory, runs `PRAGMA quick_check` (the whole file, once),
  switches to WAL with the configured `synchronous`, applies the missing migrations
  (`buffer.sqlite.schema`), reads `last_seq` and the counts, and opens the second, query-only
  connection that leases read on;
- with `recover_corrupt`, a file that fails those checks is moved aside (`move_aside`: renamed
  with its `-wal` and `-shm`, never deleted) and a fresh file is started whose `last_seq`
  continues from what the old file's `meta` still says (`salvage_last_seq`), if anything;
- a read-only open (`edge-agent buffer stats`, listings while the agent runs) checks nothing
  and migrates nothing: it refuses a file of another schema version;
- leaving the context closes both connections and truncates the WAL into the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, Self

import aiosqlite

from buffer.base import BufferCorrupt, BufferUnavailable, Capacity
from buffer.sqlite.core import SqliteBufferCore
from buffer.sqlite.schema import BUILD_HELD_IDS, HELD_IDS, MIGRATIONS, migrate
from buffer.sqlite.statements import classified, one

log = logging.getLogger(__name__)

_BUSY_TIMEOUT_MS: Final = 5_000
# SQLite keeps the WAL at its high-water size after a checkpoint; cap what it keeps.
_JOURNAL_SIZE_LIMIT: Final = 64 * 1024 * 1024


class OpeningMixin(SqliteBufferCore):
    """`open` and what it takes to get there; see the module docstring (and the package's)."""

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
    ) -> AsyncIterator[Self]:
        """Open (creating if needed), check and migrate the buffer file at `path`.

        `synchronous` trades power-cut safety for throughput (see the package docstring).
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
                salvaged = await asyncio.to_thread(salvage_last_seq, path)
                moved = await asyncio.to_thread(move_aside, path, clock())
                log.error(
                    "buffer %s is corrupt (%s): moved aside to %s; starting a fresh buffer "
                    "with seq continuing after %s",
                    path,
                    error,
                    moved,
                    salvaged if salvaged is not None else "0 (unreadable)",
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
    ) -> Self:
        with classified(path, "open"):
            db = await aiosqlite.connect(path, isolation_level=None)
        try:
            with classified(path, "open"):
                await db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                problems = [str(row[0]) for row in await db.execute_fetchall("PRAGMA quick_check")]
                if problems != ["ok"]:
                    raise BufferCorrupt(f"{path}: quick_check failed: {'; '.join(problems[:5])}")
                (mode,) = one(await db.execute_fetchall("PRAGMA journal_mode = WAL"))
                if str(mode).lower() != "wal":
                    raise BufferUnavailable(f"{path}: cannot use WAL journal mode (got {mode!r})")
                await db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
                await db.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
                if max_page_count is not None:
                    await db.execute(f"PRAGMA max_page_count = {int(max_page_count)}")
                fresh = await migrate(db, path)
                if fresh and initial_last_seq:
                    await db.execute(
                        "UPDATE meta SET value = ? WHERE key = 'last_seq'", (initial_last_seq,)
                    )
                (last_seq,) = one(
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
                # The duplicate check's index, in memory, built from the file (`HELD_IDS`).
                await db.executescript(HELD_IDS)
                await db.execute(BUILD_HELD_IDS)
                # Text keys (whole text ids) sort before blob keys: this reads only the text ids.
                buffer._text_uuid_ids = bool(
                    await db.execute_fetchall(
                        "SELECT 1 FROM temp.held_ids WHERE key < x'' AND length(key) = 36 LIMIT 1"
                    )
                )
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
    ) -> Self:
        if not await asyncio.to_thread(path.exists):
            raise BufferUnavailable(f"{path}: no buffer file here")
        with classified(path, "open"):
            db = await aiosqlite.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        try:
            with classified(path, "open"):
                await db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
                (version,) = one(await db.execute_fetchall("PRAGMA user_version"))
                if version != len(MIGRATIONS):
                    raise BufferCorrupt(
                        f"{path}: schema version {version}, this tool reads version "
                        f"{len(MIGRATIONS)} (start the agent once to migrate it)"
                    )
                (last_seq,) = one(
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


def salvage_last_seq(path: Path) -> int | None:
    """The last_seq a damaged file still states, if it can be read at all."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
            return int(row[0]) if row is not None else None
    except (sqlite3.Error, ValueError, TypeError):
        return None
