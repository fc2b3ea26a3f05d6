"""The buffer file's schema: its migrations, the columns a record is read with, how ids are stored.

The layout itself (tables, indexes, what each column means) is drawn in the package docstring
(`buffer.sqlite`). Here:

- `MIGRATIONS[n]` takes a file from `PRAGMA user_version` n to n + 1. Append only: a shipped
  migration never changes, so every file reaches the same schema by the same steps. `migrate`
  applies the missing ones, each in its own transaction together with its `user_version` bump,
  and refuses a file that is newer than this code or that is some other application's database.
- From version 7 the records live in `log`, never updated after the append; an ack inserts
  seq runs into `acks`; `events` is a view with the columns the table had (`acked_at`
  computed from `acks`), for readers outside the package.
- `HELD_IDS` is the duplicate check's index (from version 6): in memory, built at open,
  kept in step with `log` in the same transactions, keyed by an 8-byte prefix of each id
  (`held_key`) that a lookup (`FIND_HELD_IDS`) confirms against the stored row (see its
  comment).
- An id is stored as `stored_id` says (a canonical UUID as its 16 bytes, anything else as its
  text) and read back with `id_text`, or in SQL with `ID_TEXT_SQL`.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Final

import aiosqlite

from buffer.base import BufferCorrupt
from buffer.sqlite.statements import one

log = logging.getLogger(__name__)

# Schema migrations: MIGRATIONS[n] takes a file from user_version n to n + 1. Append only.
MIGRATIONS: Final[tuple[str, ...]] = (
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
    # Version 6: no UNIQUE index on `events.id` (a random-key B-tree write per event, the
    # costliest of all): the duplicate check reads `HELD_IDS`, an index kept in memory.
    # Every row, pending, retained or acked, is copied in seq order; the other two indexes
    # (keys that follow time) are the same as before.
    """
    CREATE TABLE events_v6 (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        kind TEXT NOT NULL,
        priority INTEGER NOT NULL,
        body BLOB NOT NULL,
        accepted_at REAL NOT NULL,
        acked_at REAL
    );
    INSERT INTO events_v6 (seq, id, kind, priority, body, accepted_at, acked_at)
        SELECT seq, id, kind, priority, body, accepted_at, acked_at FROM events ORDER BY seq;
    DROP TABLE events;
    ALTER TABLE events_v6 RENAME TO events;
    CREATE INDEX events_pending ON events (priority, seq) WHERE acked_at IS NULL;
    CREATE INDEX events_acked ON events (acked_at) WHERE acked_at IS NOT NULL;
    """,
    # Version 7: an ack writes no row of the records' table. The records move to `log`,
    # never updated after the append; an ack inserts its runs of seqs into `acks`. Every
    # row keeps its seq and id; each run of consecutive seqs acked at the same time becomes
    # one `acks` row with that `acked_at` (gaps and islands: `seq - row_number()` is constant
    # along a run), so every purge time is kept. `events` stays readable (and insertable, for
    # tools and tests that wrote rows by hand) as a view with the columns it had.
    """
    CREATE TABLE log (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        kind TEXT NOT NULL,
        priority INTEGER NOT NULL,
        body BLOB NOT NULL,
        accepted_at REAL NOT NULL
    );
    INSERT INTO log (seq, id, kind, priority, body, accepted_at)
        SELECT seq, id, kind, priority, body, accepted_at FROM events ORDER BY seq;
    CREATE TABLE acks (
        first_seq INTEGER PRIMARY KEY,
        last_seq INTEGER NOT NULL,
        acked_at REAL NOT NULL
    );
    INSERT INTO acks (first_seq, last_seq, acked_at)
        SELECT min(seq), max(seq), acked_at FROM (
            SELECT seq, acked_at,
                   seq - row_number() OVER (PARTITION BY acked_at ORDER BY seq) AS run
            FROM events WHERE acked_at IS NOT NULL
        ) GROUP BY acked_at, run ORDER BY 1;
    DROP TABLE events;
    CREATE INDEX log_lane ON log (priority, seq);
    CREATE VIEW events AS
        SELECT seq, id, kind, priority, body, accepted_at,
               (SELECT CASE WHEN acks.last_seq >= log.seq THEN acks.acked_at END FROM acks
                WHERE acks.first_seq <= log.seq ORDER BY acks.first_seq DESC LIMIT 1)
               AS acked_at
        FROM log;
    CREATE TRIGGER events_insert INSTEAD OF INSERT ON events
    BEGIN
        INSERT INTO log (seq, id, kind, priority, body, accepted_at)
            VALUES (NEW.seq, NEW.id, NEW.kind, NEW.priority, NEW.body, NEW.accepted_at);
        INSERT INTO acks (first_seq, last_seq, acked_at)
            SELECT last_insert_rowid(), last_insert_rowid(), NEW.acked_at
            WHERE NEW.acked_at IS NOT NULL;
    END;
    CREATE TRIGGER events_delete INSTEAD OF DELETE ON events
    BEGIN
        DELETE FROM log WHERE seq = OLD.seq;
    END;
    """,
)

# The duplicate check's index (schema version 6 on): a TEMP table of the connection that
# writes, so it lives in memory (`temp_store = MEMORY`), is never journalled, synced or
# checkpointed, and cannot disagree with the file: it is built from `log` when the file is
# opened (`BUILD_HELD_IDS`) and changes inside the transactions that change `log` (a
# ROLLBACK undoes both). Rows enter `log` in two places only, `append` and
# `retry_dead_letters`, which add them with `ADD_HELD_IDS` (one statement per batch: a
# per-row trigger costs about 3 µs an event); rows leave it in many (purge, eviction, dead
# letters, a disk-full ack), so a TEMP trigger removes them, whichever statement deletes.
#
# It holds a key per row, not the id (`held_key`, `HELD_KEY_SQL`): a 16-byte id (a UUID) by
# its first 8 bytes, any other id whole. So a hit names a row that *may* hold the id; the
# lookup (`FIND_HELD_IDS`) joins it to that row by seq and returns the stored ids, which the
# caller compares with the ones it offered: a key shared by two ids (two UUIDs alike in their
# first 8 bytes, 60 random bits: about one chance in two million that any two of a million
# held ids do) costs a rowid lookup and never drops a new record; a true duplicate costs one
# rowid lookup too. Keyed (key, seq), WITHOUT ROWID: 8 bytes of id a row in memory where the
# whole id took 16. A text key sorts before every blob key, as text ids did.
HELD_KEY_SQL: Final = "CASE WHEN typeof({id}) = 'blob' THEN substr({id}, 1, 8) ELSE {id} END"
HELD_IDS: Final = f"""
    PRAGMA temp_store = MEMORY;
    CREATE TEMP TABLE held_ids (key NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (key, seq))
        WITHOUT ROWID;
    CREATE TEMP TRIGGER held_ids_removed AFTER DELETE ON main.log
    BEGIN
        DELETE FROM held_ids WHERE key = {HELD_KEY_SQL.format(id="old.id")} AND seq = old.seq;
    END;
"""
# In seq order, not sorted by key: sorting first (to fill the B-tree left to right) saved
# nothing measurable in pages and held the sorter in memory (`temp_store = MEMORY`): at a
# million rows the RSS grew by 69 MB with the sort, 22 MB without (`bench.buffer_store`).
BUILD_HELD_IDS: Final = (
    f"INSERT INTO temp.held_ids (key, seq) SELECT {HELD_KEY_SQL.format(id='id')}, seq FROM main.log"
)
# The rows an append just inserted: those above the last_seq it started from.
ADD_HELD_IDS: Final = (
    f"INSERT INTO temp.held_ids (key, seq) SELECT {HELD_KEY_SQL.format(id='id')}, seq"
    " FROM main.log WHERE seq > ?"
)
# The stored ids of the rows whose key is among `{keys}` (placeholders): a superset of the
# offered ids that are held; compare them (see above). One rowid lookup per hit, none per miss.
FIND_HELD_IDS: Final = (
    "SELECT log.id FROM temp.held_ids JOIN main.log ON log.seq = held_ids.seq"
    " WHERE held_ids.key IN ({keys})"
)

COLUMNS: Final = "seq, id, kind, priority, body, accepted_at"
# `id` as text whichever way it is stored (see `stored_id`), computed by SQLite, not Python.
ID_TEXT_SQL: Final = (
    "CASE WHEN typeof(id) = 'blob' THEN lower(substr(hex(id), 1, 8) || '-' ||"
    " substr(hex(id), 9, 4) || '-' || substr(hex(id), 13, 4) || '-' || substr(hex(id), 17, 4)"
    " || '-' || substr(hex(id), 21)) ELSE id END"
)
# The columns of a StoredRecord, as read.
READ_COLUMNS: Final = f"seq, {ID_TEXT_SQL} AS id, kind, priority, body, accepted_at"


async def migrate(db: aiosqlite.Connection, path: Path) -> bool:
    """Bring the file to the current schema; True when it was created just now."""
    (version,) = one(await db.execute_fetchall("PRAGMA user_version"))
    if version > len(MIGRATIONS):
        raise BufferCorrupt(
            f"{path}: schema version {version} is newer than this agent knows ({len(MIGRATIONS)})"
        )
    if version == 0:
        (objects,) = one(await db.execute_fetchall("SELECT count(*) FROM sqlite_master"))
        if objects:
            raise BufferCorrupt(f"{path}: a SQLite database, but not an edge-agent buffer")
    for target in range(version + 1, len(MIGRATIONS) + 1):
        script = MIGRATIONS[target - 1]
        if version:  # a copy of the records (versions 6, 7) takes a while on a large file
            log.info("buffer %s: migrating the schema to version %d", path, target)
        try:
            await db.executescript(
                f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {target}; COMMIT;"
            )
        except BaseException:
            await db.rollback()
            raise
        if version:
            log.info("buffer %s: schema migrated to version %d", path, target)
    if version == 0:
        log.info("buffer %s: created (schema version %d)", path, len(MIGRATIONS))
    return bool(version == 0)


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


def held_key(stored: str | bytes) -> str | bytes:
    """The key `held_ids` holds for a stored id (what `HELD_KEY_SQL` computes in SQL)."""
    return stored[:8] if isinstance(stored, bytes) else stored


def id_text(stored: str | bytes) -> str:
    """An `id` column's value back as the record's id (`ID_TEXT_SQL` does it in SQL)."""
    if isinstance(stored, bytes):
        h = stored.hex()  # str(uuid.UUID(bytes=...)), at a third of the cost
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return stored
