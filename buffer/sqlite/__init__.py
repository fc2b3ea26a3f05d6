"""The SQLite store-and-forward buffer: one file, one writer, nothing accepted is ever lost.

`SqliteBuffer` implements `buffer.base.Buffer` on a single SQLite file in WAL mode, driven through
aiosqlite so that every SQLite call runs on aiosqlite's own thread, never on the event loop.

# Where each part lives

One module per seam of this docstring; `SqliteBuffer` (in `buffer`) composes them, each a
mixin over the shared state of `core`:

```
core.py          the in-memory state, one transaction at a time (`_transaction`), the counts
acked.py         the acked seqs in memory (`AckedRanges`): runs, and the gaps between them
schema.py        the migrations (`MIGRATIONS`), the columns, how ids are stored (`stored_id`)
opening.py       open, quick_check, pragmas, the lease connection; salvage and `move_aside`
capacity.py      room making, the overflow policies, eviction, the disk checks, `purge`
leasing.py       `lease` (lanes, priorities, shares), `rewind`, `ack`
dead_letters.py  `dead_letter`, `set_aside`, `dead_letters`, `retry_dead_letters`
source_state.py  source state written with the records, the identity history
buffer.py        `SqliteBuffer`: `append` (where the seams meet), `stats`, `retained`,
                 `holdings`
holdings.py      what the file holds of a seq range (retained, pending, dead, gone)
statements.py    SQL building blocks and how sqlite3 errors are classified
```

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
   errors do not). `last_seq` lives in `meta`, not in `max(log.seq)`, so it survives purging
   every row and it never restarts.
2. An id is held at most once. A record whose id is in `log` (pending, or acked and still
   retained) or that repeats an earlier record of the same batch is a duplicate: skipped, counted,
   given no `seq`. Once an acked row is purged, or a row is dead-lettered, its id is forgotten.
   The check reads `held_ids`, an in-memory index of a key and the seq of exactly the rows of
   `log`, and confirms a key hit against the row (see "Why the duplicate check reads
   memory"), so this holds across restarts and crashes.
3. A row of `log` is never updated after its append. It is *pending* while no `acks` row covers
   its seq. `ack` inserts the runs of consecutive seqs it settles into `acks` (one row per run,
   with its `acked_at`); nothing ever removes a run while its rows are there, and runs never
   overlap (an ack takes only seqs not yet acked). Pending rows leave `log` only through
   `dead_letter` or an eviction (capacity, below); acked rows only through `purge` (past
   `retention_s`, or over `retained_max_bytes`, oldest first) or when the disk is short, each
   time with their run (or the part of it deleted) in the same transaction.
4. `lease` hands out pending rows each at most once until `rewind`: within one lane
   (`after_seq < seq <= up_to_seq`) and one priority in `seq` order; across priorities either
   strictly highest first or split by weights (`shares`, see `buffer.base`).
5. One transaction at a time: every method that writes holds an `asyncio.Lock` for the whole
   of its transaction (aiosqlite multiplexes one connection). `lease` is the exception: it
   reads on a second, query-only connection under its own lock, so it sees committed rows only
   and never waits for a writer's COMMIT (an ack's fsync); see "Why leases read on their own
   connection".
6. Capacity counts pending bytes only (`length(body)` of rows not acked), kept in memory per
   priority and re-read after any transaction that did not finish cleanly. Every record given
   up for room is counted in `evictions` in the same transaction that gave it up.
7. The acked seqs are also held in memory (`acked.AckedRanges`: the union of the `acks` runs,
   merged), built at open and re-read, with the counts, after any transaction that did not
   finish cleanly; a transaction that changes `acks` changes them after it commits. Leasing,
   eviction and the oldest-pending figures read only the seqs between those runs.

# On-disk layout (schema version 7, in `PRAGMA user_version`)

```
log           seq INTEGER PRIMARY KEY      the rowid: rows are stored in seq order
              id TEXT NOT NULL             not indexed on disk (schema version 6); see below
              kind, priority, body BLOB, accepted_at REAL      never updated after the append
  log_lane    (priority, seq)              lease, eviction, the oldest pending per priority
acks          first_seq INTEGER PRIMARY KEY, last_seq, acked_at    one row per run acked at
              once (schema version 7): the seqs first_seq..last_seq are delivered
events        a VIEW of `log` with the columns the table had up to version 6, `acked_at` computed
              from `acks` (NULL = pending), for readers outside this package; INSTEAD OF
              triggers let a tool insert or delete a row through it
meta          key TEXT PRIMARY KEY, value  ('last_seq', n)
dead_letters  number INTEGER PRIMARY KEY       the order they were set aside (schema version 3)
              seq UNIQUE, accepted_at          NULL for records never accepted (`set_aside`)
              id, kind, priority, body, reason, dead_at
evictions     priority, kind, reason, count          (schema version 2)
source_state  key TEXT PRIMARY KEY, value TEXT, updated_at REAL   (schema version 4)
identities    from_seq INTEGER PRIMARY KEY, site TEXT, agent TEXT  (schema version 5)

temp.held_ids (key, seq) PRIMARY KEY, WITHOUT ROWID   in memory only, never in the file
              key: a 16-byte id's first 8 bytes, any other id whole
```

Every on-disk key follows time: the rowid (seq), `log_lane` (priority, seq) and
`acks.first_seq` all grow at their right edge, so a commit of n rows dirties about
n x row size / page size pages, however large the table. Version 5 had `UNIQUE` on `id`: a
B-tree keyed by a random UUID, where each row of a commit dirtied a leaf page of its own once
the index outgrew the cache (about 10 KB written per 240-byte event at 1,000,000 rows,
growing with the table; version 6: 555 B, flat; `bench.buffer_store`, docs/buffer.md).

Up to version 6 an ack rewrote each row to set `acked_at` and moved it from one partial index
to another (about 450 of the ~1,000 bytes written per event at ingest). From version 7 an ack
writes one `acks` row per run of consecutive seqs, a few dozen bytes for a message's worth of
records, and the purge deletes acked runs by seq range. The lane index is full, not partial
(it holds acked rows until they are purged), so a scan of it could meet acked rows: every scan
reads only the gaps between the acked runs held in memory (`acked.AckedRanges.next_gap`), one
index seek per gap, and a lease cursor moves past the runs it stepped over, so neither a
rewind nor a restart with a long retained tail reads an acked row. `events` costs nothing to
keep: a view is a query, evaluated only when someone reads it (each row's `acked_at` is one
seek in `acks`).

An id that is a UUID in canonical text form (what `events.ids` makes) is stored as its 16
bytes (`stored_id`), anything else as text: that halves the id in the row and in its
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

Plus the `-wal` and `-shm` files SQLite keeps next to it. Schema
changes are appended to `MIGRATIONS` (`schema`); opening a file applies the missing ones, each
in its own transaction together with its `user_version` bump. Opening also runs
`PRAGMA quick_check`, which reads the whole file (about 1 s per GB from a warm cache), once, at
startup.

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

# Why the duplicate check reads memory

A random key cannot be appended to; so the only index keyed by the id lives in memory, where
a random insert costs CPU (a few microseconds) and no I/O: `held_ids`, a TEMP table of the
writing connection (`temp_store = MEMORY`), `buffer.sqlite.schema.HELD_IDS`. It is derived
data, never written to the file, so it cannot be lost or disagree with it:

- opening builds it from `log` (`BUILD_HELD_IDS`, in seq order: a few seconds per
  million rows, on top of the `quick_check` that reads the whole file anyway);
- `append` and `retry_dead_letters`, the only statements that insert into `log`, add their
  rows in the same transaction (`ADD_HELD_IDS`); a TEMP trigger removes a row's pair whatever
  deletes the row (purge, eviction, dead letter, a disk-full ack); a ROLLBACK undoes both.

It holds a key, not the id: a UUID id (16 bytes as stored) by its first 8 bytes, any other id
whole (`schema.held_key`). A key names the rows that *may* hold an id: the lookup
(`FIND_HELD_IDS`) joins each hit to its row by seq and returns the stored ids, and only an
offered id among those is a duplicate. Two ids that share a key (60 random bits: about one
chance in two million that any two of a million held ids do) cost a rowid lookup, never a
record; a true duplicate costs one rowid lookup too.

It costs memory: about 19 bytes per held row (pending or retained), 19 MB per million (the
whole id took 28), and CPU on the SQLite thread (a lookup and an insert per event in a B-tree
that outgrows the CPU caches). A re-observed fact (OPC UA re-sends the current values on
every re-subscribe) is recognised exactly as before, however old, while its row is held; the
tests in `tests/integration/test_buffer_held_ids.py` show it across a restart, a crash image
and ids that share a key.

# Why leases read on their own connection

An ack is a write transaction that ends in an fsync; on the one connection, a lease had to
wait for it, and publishing stalled behind recording. A second connection (query-only, its own
aiosqlite thread) lets leasing go on meanwhile. It sees committed rows only, which is what a
lease may hand out anyway. The lease cursors stay right: rows are committed in seq order, so a
row not yet visible has a seq above every cursor; a row that comes back below a cursor
(`retry_dead_letters`) comes with a `rewind`. A lane that a lease found empty is not queried
again until `last_seq` moves (taken before the query, so every row up to it was visible) or a
rewind. `ack` takes seq ranges (a message's seqs, and several messages' together, are mostly
consecutive), finds the runs of rows there and counts them per priority in SQL, not per row in
Python, and inserts one `acks` row per run.

# Why leases live in memory

A lease only says "this record is on its way to the broker". After a crash or a reconnect the
broker may or may not have it, and only an ack proves delivery, so every record not acked must be
sent again anyway. Keeping leases in memory (a cursor per priority and lane: the highest `seq`
handed out, or the end of an acked run it stepped over) costs no writes on the hot path, and a
restart, like `rewind`, makes everything not acked pending again. Delivery is at least once; the
id makes it effectively once for the consumer.

# Errors

- `BufferCorrupt`: the file is not a usable buffer (not SQLite, failed `PRAGMA quick_check`,
  foreign or newer schema, or corruption found later). Stop; the file needs a person.
- `BufferUnavailable`: the operation failed and changed nothing (I/O error, locked, read-only).
  Retry with backoff. `BufferFull` (a subclass): no room for these records and none may be
  given up; hold them (backpressure) and retry.
- Anything else from sqlite3 (a constraint or SQL error) is a bug in this package and propagates
  as is.
"""

from buffer.base import DeadLetter
from buffer.sqlite.buffer import SqliteBuffer
from buffer.sqlite.opening import move_aside
from buffer.sqlite.schema import ID_TEXT_SQL, id_text, stored_id

__all__ = ["ID_TEXT_SQL", "DeadLetter", "SqliteBuffer", "id_text", "move_aside", "stored_id"]
