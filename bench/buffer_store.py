"""The buffer's storage cost, older schemas (versions 5 and 6) against the current one, in one run.

The layouts are driven with the statements their store runs, on plain sqlite3 in WAL mode with
`synchronous = FULL` (the agent's default), in this process, so CPU and I/O are this process's;
the current one (version 7) through the real `SqliteBuffer`:

- version 5: `events.id` UNIQUE (a B-tree keyed by a random UUID: each event's insert dirties a
  page of its own once the index outgrows the cache), the duplicate check reads that index;
- version 6 as first built (`WHOLE_ID`): no index on `events.id`; the duplicate check reads
  `held_ids`, an in-memory TEMP index of (whole id, seq) (rows added by the append, removed by
  a trigger); its statements are kept here, in this file, for the comparison;
- version 6 as shipped: the same file, `held_ids` keyed by an 8-byte prefix of the id, a hit
  confirmed against the stored row (`buffer.sqlite.schema.HELD_IDS` and its lookups, here
  pointed at version 6's `events` table);
- version 7 (`BufferStore`): the real `SqliteBuffer` (`log` never updated after the append,
  an ack inserts seq ranges into `acks`, the purge deletes acked runs by seq range), driven
  through its public methods on an event loop of this process; its CPU includes aiosqlite's
  thread hops and the Python of the store, which the other layouts do not pay, so compare its
  bytes with theirs, and its CPU only with care;
- two sketches, not stores (`LogStore`, `SegmentStore`): an append-only `log`, ack = one row
  of delivered seq ranges, purge = a range delete (what version 7 became) or a `DROP TABLE`
  of a segment. They keep the whole-id `held_ids` (their point is the file).

Figures, per layout, for the life of an event (append in batches of 500 with the duplicate
check, lease, ack by seq range, purge by retention):

- CPU µs per event (`time.process_time`: every thread of this process);
- bytes written per event: `wchar` (bytes handed to write(): WAL frames and checkpoints) and
  `write_bytes` (what reached the block layer) from /proc/self/io, against the body size;
- the same at ingest only (append, lease and ack; retention never passes, nothing purged);
- append µs per event with 10,000 rows held and with 1,000,000 rows held (retained, delivered:
  a buffer that keeps a day of replay holds millions), and their ratio (target: flat, ±20 %);
- for the layouts with `held_ids`: building it at open, per million rows, and its size per
  row (its pages, and the growth of this process's RSS while it was built); for version 7
  the whole open (quick_check, the counts, the acked runs, `held_ids`).

`bench.run` calls `append_growth` (the current layout's append cost at 10,000 rows held and at
1,000,000, or 200,000 in its quick run) for the targets table.

Run: `.venv/bin/python -m bench.buffer_store [--quick] [--dir DIR]` (`--quick`: 200,000 rows
instead of 1,000,000 for the large table; `--dir`: where the files go, default /var/tmp: a real
disk). About a minute on 2 cores. Prints figures and ratios; asserts nothing about time. The
machine may be shared: compare the ratios, measured side by side in one run. A WAL file costs
each page twice (the WAL frame, then the checkpoint's copy into the file): about 2.3 x the body
is the floor of any layout's append here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from buffer.base import Record
from buffer.sqlite import SqliteBuffer
from buffer.sqlite.schema import (
    ADD_HELD_IDS,
    BUILD_HELD_IDS,
    FIND_HELD_IDS,
    HELD_IDS,
    MIGRATIONS,
)

BATCH = 500
BODY = bytes(range(240))
LIFE_EVENTS = 100_000
APPEND_SAMPLE = 20_000
SMALL_TABLE = 10_000
LARGE_TABLE = 1_000_000
QUICK_LARGE_TABLE = 200_000


@dataclass(frozen=True)
class HeldIds:
    """The statements of one kind of `held_ids`: create, build at open, add after an append,
    and the lookup (`{keys}`: placeholders) with how a stored id becomes its lookup key."""

    create: str
    build: str
    add: str
    find: str
    key: Callable[[bytes], bytes]


# `held_ids` as version 6 was first built: (whole id, seq). Kept here for the comparison.
WHOLE_ID = HeldIds(
    create="""
    PRAGMA temp_store = MEMORY;
    CREATE TEMP TABLE held_ids (id NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (id, seq))
        WITHOUT ROWID;
    CREATE TEMP TRIGGER held_ids_removed AFTER DELETE ON main.events
    BEGIN
        DELETE FROM held_ids WHERE id = old.id AND seq = old.seq;
    END;
    """,
    build="INSERT INTO temp.held_ids (id, seq) SELECT id, seq FROM main.events ORDER BY id",
    add="INSERT INTO temp.held_ids (id, seq) SELECT id, seq FROM main.events WHERE seq > ?",
    find="SELECT id FROM temp.held_ids WHERE id IN ({keys})",
    key=lambda stored: stored,
)


def _on_events(statement: str) -> str:
    """A statement of today's `held_ids` pointed at version 6's `events` table (it reads
    `log` since version 7)."""
    statement = statement.replace("main.log ON log.seq", "main.events ON events.seq")
    return statement.replace("log.id", "events.id").replace("main.log", "main.events")


# Version 6 as shipped: (8-byte key, seq), a hit confirmed against the row.
KEYED = HeldIds(
    _on_events(HELD_IDS),
    _on_events(BUILD_HELD_IDS),
    _on_events(ADD_HELD_IDS),
    _on_events(FIND_HELD_IDS),
    lambda s: s[:8],
)


@dataclass(frozen=True)
class Layout:
    name: str
    version: int
    # None: the duplicate check reads the UNIQUE index of `events.id` (version 5).
    held_ids: HeldIds | None


OLD = Layout("version 5 (UNIQUE id)", 5, None)
WHOLE = Layout("version 6, whole-id held_ids", 6, WHOLE_ID)
V6 = Layout("version 6, 8-byte keys", 6, KEYED)
# The current layout: the real store (its `held_ids` is today's, on `log`).
NEW = Layout(f"version {len(MIGRATIONS)} (SqliteBuffer)", len(MIGRATIONS), KEYED)
# Not schema versions: sketches, for comparison.
LOG = Layout("sketch: log + ack ranges", 0, WHOLE_ID)
SEGMENTS = Layout("sketch: segments + ack ranges", 0, WHOLE_ID)
LAYOUTS = (OLD, WHOLE, V6, NEW, LOG, SEGMENTS)


def open_store(path: Path, layout: Layout) -> Store:
    if layout is NEW:
        return BufferStore(path, layout)
    if layout is LOG:
        return LogStore(path, layout)
    if layout is SEGMENTS:
        return SegmentStore(path, layout)
    return Store(path, layout)


def io_counters() -> dict[str, int]:
    counters: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/io").read_text().splitlines():
            key, _, value = line.partition(":")
            counters[key] = int(value)
    return counters


def rss_bytes() -> int:
    """This process's resident set size (Linux), 0 where it cannot be read."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def ids(start: int, count: int) -> Iterator[bytes]:
    for n in range(start, start + count):
        yield uuid.uuid5(uuid.NAMESPACE_URL, f"bench/{n}").bytes


class Store:
    """One buffer file driven with a layout's statements (see the module docstring)."""

    def __init__(self, path: Path, layout: Layout) -> None:
        self.layout = layout
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")
        (version,) = self.db.execute("PRAGMA user_version").fetchone()
        for target in range(version + 1, layout.version + 1):
            self.db.executescript(
                f"BEGIN; {MIGRATIONS[target - 1]}; PRAGMA user_version = {target}; COMMIT;"
            )
        self.build_s = 0.0
        self.build_rss = 0
        if layout.held_ids:
            self.db.executescript(layout.held_ids.create)
            rss, started = rss_bytes(), time.perf_counter()
            self.db.execute(layout.held_ids.build)
            self.build_s = time.perf_counter() - started
            self.build_rss = rss_bytes() - rss
        (self.last_seq,) = self.db.execute(
            "SELECT value FROM meta WHERE key = 'last_seq'"
        ).fetchone()
        self.cursor = 0

    def append(self, batch: list[bytes], now: float) -> int:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        held = self.held(batch)
        kept = [i for i in batch if i not in held]
        first = self.last_seq + 1
        db.executemany(
            "INSERT INTO events (seq, id, kind, priority, body, accepted_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(first + n, i, "telemetry.v1", 0, BODY, now) for n, i in enumerate(kept)],
        )
        if self.layout.held_ids:
            db.execute(self.layout.held_ids.add, (self.last_seq,))
        self.last_seq += len(kept)
        db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (self.last_seq,))
        db.execute("COMMIT")
        return len(kept)

    def held(self, batch: list[bytes]) -> set[bytes]:
        """The ids of `batch` held (looked up as the layout's store does; a stored id the
        lookup returns that is not in the batch is a key-mate, and changes nothing)."""
        marks = ", ".join("?" * len(batch))
        held_ids = self.layout.held_ids
        if held_ids is None:
            query, keys = f"SELECT id FROM events WHERE id IN ({marks})", batch
        else:
            keys = list({held_ids.key(i) for i in batch})
            query = held_ids.find.format(keys=", ".join("?" * len(keys)))
        return {row[0] for row in self.db.execute(query, keys)}

    def lease_and_ack(self, now: float) -> int:
        db = self.db
        rows = db.execute(
            "SELECT seq, id, kind, priority, body, accepted_at FROM events WHERE acked_at IS NULL"
            " AND priority = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (0, self.cursor, 2**62, BATCH),
        ).fetchall()
        if not rows:
            return 0
        first, last = rows[0][0], rows[-1][0]
        self.cursor = last
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "SELECT priority, count(*), coalesce(sum(length(body)), 0) FROM events"
            " WHERE acked_at IS NULL AND (seq BETWEEN ? AND ?) GROUP BY priority",
            (first, last),
        ).fetchall()
        db.execute(
            "UPDATE events SET acked_at = ? WHERE acked_at IS NULL AND (seq BETWEEN ? AND ?)",
            (now, first, last),
        )
        db.execute("COMMIT")
        return len(rows)

    def purge(self, cutoff: float) -> int:
        deleted = 0
        while True:
            self.db.execute("BEGIN IMMEDIATE")
            rows = self.db.execute(
                "DELETE FROM events WHERE seq IN"
                " (SELECT seq FROM events WHERE acked_at < ? LIMIT ?)"
                " RETURNING length(body)",
                (cutoff, 10_000),
            ).fetchall()
            self.db.execute("COMMIT")
            deleted += len(rows)
            if len(rows) < 10_000:
                return deleted

    def fill_retained(self, count: int) -> None:
        """`count` delivered rows, written fast (one transaction, no sync): the table a
        buffer with a long replay window holds; not measured."""
        self.db.execute("PRAGMA synchronous = OFF")
        self.db.execute("BEGIN")
        start = self.last_seq + 1
        self.db.executemany(
            "INSERT INTO events (seq, id, kind, priority, body, accepted_at, acked_at)"
            " VALUES (?, ?, 'telemetry.v1', 0, ?, 1.0, 2.0)",
            ((start + n, i, BODY) for n, i in enumerate(ids(10**9 + start, count))),
        )
        if self.layout.held_ids:
            self.db.execute(self.layout.held_ids.add, (self.last_seq,))
        self.last_seq += count
        self.db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (self.last_seq,))
        self.db.execute("COMMIT")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.execute("PRAGMA synchronous = FULL")
        self.cursor = self.last_seq

    def held_ids_bytes(self) -> int:
        if not self.layout.held_ids:
            return 0
        (pages,) = self.db.execute("PRAGMA temp.page_count").fetchone()
        (size,) = self.db.execute("PRAGMA temp.page_size").fetchone()
        return int(pages) * int(size)

    def close(self) -> None:
        self.db.close()


class BufferStore(Store):
    """Version 7: the real `SqliteBuffer`, driven through its methods on an event loop of
    this thread (its SQLite calls run on aiosqlite's threads of this process)."""

    def __init__(self, path: Path, layout: Layout) -> None:
        self.layout = layout
        self.path = path
        self.now = 0.0
        self.loop = asyncio.new_event_loop()
        self.context = SqliteBuffer.open(path, retention_s=0.0, clock=lambda: self.now)
        rss, started = rss_bytes(), time.perf_counter()
        self.buffer = self.loop.run_until_complete(self.context.__aenter__())
        self.build_s = time.perf_counter() - started
        self.build_rss = rss_bytes() - rss
        self.last_seq = self.buffer.last_seq
        self.cursor = 0

    def append(self, batch: list[bytes], now: float) -> int:
        self.now = now
        records = [Record(str(uuid.UUID(bytes=i)), "telemetry.v1", 0, BODY) for i in batch]
        result = self.loop.run_until_complete(self.buffer.append(records))
        self.last_seq = result.last_seq
        return result.accepted

    def lease_and_ack(self, now: float) -> int:
        self.now = now
        leased = self.loop.run_until_complete(self.buffer.lease(BATCH))
        self.loop.run_until_complete(self.buffer.ack([record.seq for record in leased]))
        return len(leased)

    def purge(self, cutoff: float) -> int:
        return self.loop.run_until_complete(self.buffer.purge(now=cutoff))  # retention 0

    def fill_retained(self, count: int) -> None:
        """As `Store.fill_retained`, on the file beside the open buffer (which is closed and
        reopened before anything is measured): rows in `log`, one acked run in `acks`."""
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN")
        start = self.last_seq + 1
        db.executemany(
            "INSERT INTO log (seq, id, kind, priority, body, accepted_at)"
            " VALUES (?, ?, 'telemetry.v1', 0, ?, 1.0)",
            ((start + n, i, BODY) for n, i in enumerate(ids(10**9 + start, count))),
        )
        db.execute("INSERT INTO acks VALUES (?, ?, 2.0)", (start, start + count - 1))
        db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (start + count - 1,))
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()

    def held_ids_bytes(self) -> int:
        rows = self.loop.run_until_complete(
            self.buffer._db.execute_fetchall(
                "SELECT (SELECT page_count FROM pragma_page_count('temp')),"
                " (SELECT page_size FROM pragma_page_size('temp'))"
            )
        )
        ((pages, size),) = rows
        return int(pages) * int(size)

    def close(self) -> None:
        self.loop.run_until_complete(self.context.__aexit__(None, None, None))
        self.loop.close()


class LogStore(Store):
    """A sketch of the next step (issue 18 item 1), not the store: an append-only `log` that is
    never updated, ack = one row of delivered seq ranges (`acks`), purge = a range delete.
    Measured beside the two real layouts to show what the row rewrite of an ack costs."""

    def __init__(self, path: Path, layout: Layout) -> None:
        self.layout = layout
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")
        self.db.executescript(_LOG_SCHEMA)
        self.db.executescript(WHOLE_ID.create.replace("main.events", "main.log"))
        rss, started = rss_bytes(), time.perf_counter()
        self.db.execute(WHOLE_ID.build.replace("main.events", "main.log"))
        self.build_s = time.perf_counter() - started
        self.build_rss = rss_bytes() - rss
        (self.last_seq,) = self.db.execute(
            "SELECT value FROM meta WHERE key = 'last_seq'"
        ).fetchone()
        self.cursor = 0

    def append(self, batch: list[bytes], now: float) -> int:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        held = self.held(batch)
        kept = [i for i in batch if i not in held]
        first = self.last_seq + 1
        db.executemany(
            "INSERT INTO log (seq, id, kind, priority, body, accepted_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(first + n, i, "telemetry.v1", 0, BODY, now) for n, i in enumerate(kept)],
        )
        db.execute(WHOLE_ID.add.replace("main.events", "main.log"), (self.last_seq,))
        self.last_seq += len(kept)
        db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (self.last_seq,))
        db.execute("COMMIT")
        return len(kept)

    def lease_and_ack(self, now: float) -> int:
        db = self.db
        rows = db.execute(
            "SELECT seq, id, kind, priority, body, accepted_at FROM log"
            " WHERE priority = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (0, self.cursor, 2**62, BATCH),
        ).fetchall()
        if not rows:
            return 0
        first, last = rows[0][0], rows[-1][0]
        self.cursor = last
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO acks (first, last, priority, acked_at) VALUES (?, ?, 0, ?)",
            (first, last, now),
        )
        db.execute("COMMIT")
        return len(rows)

    def purge(self, cutoff: float) -> int:
        self.db.execute("BEGIN IMMEDIATE")
        deleted = 0
        for first, last in self.db.execute(
            "SELECT first, last FROM acks WHERE acked_at < ?", (cutoff,)
        ).fetchall():
            cursor = self.db.execute(
                "DELETE FROM log WHERE seq BETWEEN ? AND ? AND priority = 0", (first, last)
            )
            deleted += cursor.rowcount
        self.db.execute("DELETE FROM acks WHERE acked_at < ?", (cutoff,))
        self.db.execute("COMMIT")
        return deleted

    def fill_retained(self, count: int) -> None:
        self.db.execute("PRAGMA synchronous = OFF")
        self.db.execute("BEGIN")
        start = self.last_seq + 1
        self.db.executemany(
            "INSERT INTO log (seq, id, kind, priority, body, accepted_at)"
            " VALUES (?, ?, 'telemetry.v1', 0, ?, 1.0)",
            ((start + n, i, BODY) for n, i in enumerate(ids(10**9 + start, count))),
        )
        self.db.execute("INSERT INTO acks VALUES (?, ?, 0, 2.0)", (start, start + count - 1))
        self.last_seq += count
        self.db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (self.last_seq,))
        self.db.execute("COMMIT")
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.execute("PRAGMA synchronous = FULL")
        self.cursor = self.last_seq


_LOG_SCHEMA = """
    CREATE TABLE IF NOT EXISTS log (
        seq INTEGER PRIMARY KEY, id NOT NULL, kind TEXT NOT NULL, priority INTEGER NOT NULL,
        body BLOB NOT NULL, accepted_at REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS log_lane ON log (priority, seq);
    CREATE TABLE IF NOT EXISTS acks (
        first INTEGER PRIMARY KEY, last INTEGER NOT NULL, priority INTEGER NOT NULL,
        acked_at REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS acks_by_time ON acks (acked_at);
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
    INSERT OR IGNORE INTO meta (key, value) VALUES ('last_seq', 0);
"""


class SegmentStore(LogStore):
    """The sketch of `LogStore` with the log cut in tables of `SEGMENT` seqs, purged by
    DROP TABLE once every row of a segment is delivered and past retention: SQLite frees a
    dropped table's pages without writing them, where a DELETE rewrites every page it empties.
    """

    SEGMENT = 10_000

    def __init__(self, path: Path, layout: Layout) -> None:
        self.layout = layout
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = FULL")
        # Builds with SQLITE_SECURE_DELETE (Debian's libsqlite3, which Python here uses) zero
        # every freed page, so a DROP TABLE writes as much as a DELETE (1,170 B an event over
        # its life against 634 B with FAST, measured): the design needs FAST (zeroes only
        # what it writes anyway). Row deletes (the other layouts) cost the same either way.
        self.db.execute("PRAGMA secure_delete = FAST")
        self.db.executescript(
            _LOG_SCHEMA.split("CREATE TABLE IF NOT EXISTS acks")[0]
            .replace("CREATE INDEX IF NOT EXISTS log_lane ON log (priority, seq);", "")
            .replace("CREATE TABLE IF NOT EXISTS log (", "CREATE TABLE IF NOT EXISTS log_0 (")
        )
        self.db.executescript(
            "CREATE TABLE IF NOT EXISTS acks (first INTEGER PRIMARY KEY, last INTEGER NOT NULL,"
            " priority INTEGER NOT NULL, acked_at REAL NOT NULL);"
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);"
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('last_seq', 0);"
            + WHOLE_ID.create.split("CREATE TEMP TRIGGER")[0]
        )
        self.segments = sorted(
            int(str(name).removeprefix("log_"))
            for (name,) in self.db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'log_%'"
            )
        )
        rss, started = rss_bytes(), time.perf_counter()
        for segment in self.segments:
            self.db.execute(
                f"INSERT INTO temp.held_ids (id, seq) SELECT id, seq FROM log_{segment}"
            )
        self.build_s = time.perf_counter() - started
        self.build_rss = rss_bytes() - rss
        (self.last_seq,) = self.db.execute(
            "SELECT value FROM meta WHERE key = 'last_seq'"
        ).fetchone()
        self.cursor = 0

    def _table(self, seq: int) -> str:
        segment = seq // self.SEGMENT
        if segment not in self.segments:
            self.db.execute(
                f"CREATE TABLE log_{segment} (seq INTEGER PRIMARY KEY, id NOT NULL, kind TEXT,"
                " priority INTEGER, body BLOB, accepted_at REAL)"
            )
            self.segments.append(segment)
        return f"log_{segment}"

    def append(self, batch: list[bytes], now: float) -> int:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        held = self.held(batch)
        rows = [
            (self.last_seq + 1 + n, i, "telemetry.v1", 0, BODY, now)
            for n, i in enumerate(i for i in batch if i not in held)
        ]
        # A batch may straddle a segment boundary: one insert per segment it touches.
        for segment, part in itertools.groupby(rows, key=lambda row: row[0] // self.SEGMENT):
            db.executemany(
                f"INSERT INTO {self._table(segment * self.SEGMENT)} VALUES (?, ?, ?, ?, ?, ?)",
                list(part),
            )
        db.executemany("INSERT INTO temp.held_ids VALUES (?, ?)", [(r[1], r[0]) for r in rows])
        self.last_seq += len(rows)
        db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (self.last_seq,))
        db.execute("COMMIT")
        return len(rows)

    def lease_and_ack(self, now: float) -> int:
        leased: list[tuple[object, ...]] = []
        for segment in self.segments:
            if (segment + 1) * self.SEGMENT <= self.cursor + 1:
                continue
            leased += self.db.execute(
                f"SELECT seq, id, kind, priority, body, accepted_at FROM log_{segment}"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (self.cursor, BATCH - len(leased)),
            ).fetchall()
            if len(leased) >= BATCH:
                break
        if not leased:
            return 0
        first, last = int(leased[0][0]), int(leased[-1][0])  # type: ignore[call-overload]
        self.cursor = last
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("INSERT INTO acks VALUES (?, ?, 0, ?)", (first, last, now))
        self.db.execute("COMMIT")
        return len(leased)

    def purge(self, cutoff: float) -> int:
        deleted = 0
        self.db.execute("BEGIN IMMEDIATE")
        for segment in list(self.segments):
            top = (segment + 1) * self.SEGMENT - 1
            if top > self.last_seq:
                break
            (old, newer) = self.db.execute(
                "SELECT count(*) FILTER (WHERE acked_at < ?), count(*) FILTER (WHERE acked_at >= ?)"
                " FROM acks WHERE first <= ?",
                (cutoff, cutoff, top),
            ).fetchone()
            (covered,) = self.db.execute(
                "SELECT coalesce(sum(min(last, ?) - max(first, ?) + 1), 0) FROM acks"
                " WHERE first <= ? AND last >= ?",
                (top, segment * self.SEGMENT, top, segment * self.SEGMENT),
            ).fetchone()
            (rows,) = self.db.execute(f"SELECT count(*) FROM log_{segment}").fetchone()
            if newer or not old or covered < rows:
                break
            self.db.execute(f"DROP TABLE log_{segment}")
            self.db.execute(
                "DELETE FROM temp.held_ids WHERE seq BETWEEN ? AND ?", (segment * self.SEGMENT, top)
            )
            self.db.execute("DELETE FROM acks WHERE last <= ?", (top,))
            self.segments.remove(segment)
            deleted += int(rows)
        self.db.execute("COMMIT")
        return deleted

    def fill_retained(self, count: int) -> None:
        self.db.execute("PRAGMA synchronous = OFF")
        start = self.last_seq + 1
        for offset in range(0, count, BATCH * 20):
            chunk = list(ids(10**9 + start + offset, min(BATCH * 20, count - offset)))
            self.append(chunk, 1.0)
        self.db.execute("INSERT INTO acks VALUES (?, ?, 0, 2.0)", (start, start + count - 1))
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.execute("PRAGMA synchronous = FULL")
        self.cursor = self.last_seq


def measured(work: Callable[[], object]) -> tuple[float, dict[str, int]]:
    before, cpu = io_counters(), time.process_time()
    work()
    spent = time.process_time() - cpu
    after = io_counters()
    return spent, {key: after.get(key, 0) - before.get(key, 0) for key in after}


def life(layout: Layout, folder: Path) -> dict[str, float]:
    """LIFE_EVENTS events through append, lease, ack and purge (a 1 s clock per batch)."""
    store = open_store(folder / f"life-{LAYOUTS.index(layout)}.db", layout)
    clock = [1_000.0]
    next_id = [0]

    def run() -> None:
        while next_id[0] < LIFE_EVENTS:
            store.append(list(ids(next_id[0], BATCH)), clock[0])
            next_id[0] += BATCH
            store.lease_and_ack(clock[0])
            clock[0] += 1.0
            if next_id[0] % 10_000 == 0:  # retention: 10 s of clock
                store.purge(clock[0] - 10.0)
        store.purge(clock[0] + 1.0)

    cpu, io = measured(run)
    store.close()
    return {
        "cpu_us_per_event": cpu / LIFE_EVENTS * 1e6,
        "wchar_per_event": io.get("wchar", 0) / LIFE_EVENTS,
        "write_bytes_per_event": io.get("write_bytes", 0) / LIFE_EVENTS,
    }


def ingest(layout: Layout, folder: Path) -> dict[str, float]:
    """LIFE_EVENTS events through append, lease and ack, nothing purged: the cost of taking
    an event in and handing it on."""
    store = open_store(folder / f"ingest-{LAYOUTS.index(layout)}.db", layout)
    clock = [1_000.0]

    def run() -> None:
        for start in range(0, LIFE_EVENTS, BATCH):
            store.append(list(ids(start, BATCH)), clock[0])
            store.lease_and_ack(clock[0])
            clock[0] += 1.0

    cpu, io = measured(run)
    store.close()
    return {
        "ingest_cpu_us_per_event": cpu / LIFE_EVENTS * 1e6,
        "ingest_wchar_per_event": io.get("wchar", 0) / LIFE_EVENTS,
    }


def append_cost(
    layout: Layout, folder: Path, held: int, *, with_rss: bool = True
) -> dict[str, float]:
    """µs CPU and bytes written per appended event with `held` delivered rows in the table
    (`with_rss`: also `held_ids`' RSS per row, measured in a fresh process)."""
    path = folder / f"append-{LAYOUTS.index(layout)}-{held}.db"
    store = open_store(path, layout)
    store.fill_retained(held)
    store.close()
    store = open_store(path, layout)  # reopened: `held_ids` built from the file, as at start
    base = 2 * 10**9

    def run() -> None:
        for start in range(0, APPEND_SAMPLE, BATCH):
            store.append(list(ids(base + start, BATCH)), 5.0)

    cpu, io = measured(run)
    figures = {
        "append_us_per_event": cpu / APPEND_SAMPLE * 1e6,
        "append_wchar_per_event": io.get("wchar", 0) / APPEND_SAMPLE,
        "held_ids_build_s_per_million": store.build_s / max(held, 1) * 1e6,
        "held_ids_bytes_per_row": store.held_ids_bytes() / (held + APPEND_SAMPLE),
    }
    store.close()
    if with_rss and layout.held_ids is not None:
        # In a fresh process: this one's heap holds what earlier layouts freed.
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            rss = pool.apply(open_rss, (LAYOUTS.index(layout), path))
        figures["held_ids_rss_per_row (fresh process)"] = rss / (held + APPEND_SAMPLE)
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    return figures


def append_growth(folder: Path, large: int) -> dict[str, Any]:
    """The current layout's append cost (`append_cost`) with `SMALL_TABLE` rows held and with
    `large`, and their ratio: what `bench.run` reports against issue 18's "flat within 20 %"."""
    small = append_cost(NEW, folder, SMALL_TABLE, with_rss=False)
    big = append_cost(NEW, folder, large, with_rss=False)
    return {
        "layout": NEW.name,
        "small_rows": SMALL_TABLE,
        "large_rows": large,
        "small_append_us_per_event": small["append_us_per_event"],
        "large_append_us_per_event": big["append_us_per_event"],
        "growth": big["append_us_per_event"] / small["append_us_per_event"],
    }


def open_rss(layout_index: int, path: Path) -> int:
    """How much this (fresh) process's RSS grew while `held_ids` was built at open."""
    store = open_store(path, LAYOUTS[layout_index])
    try:
        return store.build_rss
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200,000 rows for the large table")
    parser.add_argument(
        "--dir", type=Path, default=Path("/var/tmp"), help="where the files go (a real disk)"
    )
    args = parser.parse_args()
    large = QUICK_LARGE_TABLE if args.quick else LARGE_TABLE
    started = time.monotonic()
    results: dict[str, dict[str, float]] = {}
    # On a real disk: /proc/self/io counts no block I/O on tmpfs.
    with tempfile.TemporaryDirectory(prefix="bench-buffer-", dir=args.dir) as tmp:
        folder = Path(tmp)
        for layout in LAYOUTS:
            figures = life(layout, folder)
            figures["life bytes (wchar) / body"] = figures["wchar_per_event"] / len(BODY)
            figures.update(ingest(layout, folder))
            small = append_cost(layout, folder, SMALL_TABLE)
            big = append_cost(layout, folder, large)
            figures.update({f"{k} @10k": v for k, v in small.items()})
            figures.update({f"{k} @{large // 1000}k": v for k, v in big.items()})
            figures["append growth (large / 10k)"] = (
                big["append_us_per_event"] / small["append_us_per_event"]
            )
            results[layout.name] = figures
    keys = [key for figures in results.values() for key in figures]
    print(f"body {len(BODY)} B; life = {LIFE_EVENTS:,} events; append sample {APPEND_SAMPLE:,}")
    print(
        f"{'figure':44}"
        + "".join(f"{name[:26]:>28}" for name in results)
        + "  ratios to v5 | v7 / v6"
    )
    for key in dict.fromkeys(keys):
        values = [figures.get(key) for figures in results.values()]
        row = "".join(f"{'-':>28}" if v is None else f"{v:28.2f}" for v in values)
        old = values[0]
        ratios = " ".join(f"{v / old:5.2f}" if old and v else "    -" for v in values[1:])
        v6, v7 = results[V6.name].get(key), results[NEW.name].get(key)
        mine = f"{v7 / v6:5.2f}" if v6 and v7 else "    -"
        print(f"{key:44}{row}  {ratios} | {mine}")
    print(
        f"{time.monotonic() - started:.0f} s; load average {os.getloadavg()[0]:.2f}"
        " (2 cores shared with others: read the ratios, measured side by side)"
    )


if __name__ == "__main__":
    main()
