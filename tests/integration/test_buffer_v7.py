"""Schema version 7: records in an append-only `log`, acks as seq ranges in `acks`.

What these tests pin, on real SQLite files:

- the dedup contract across a restart: an id held (pending, or acked and retained) and
  offered again after a close and a reopen takes no new seq;
- an ack changes only `acks` rows: no row and no page of `log` or its index is written;
- a restart after acks keeps the lease order (priority, then seq) and skips every acked row;
  a rewind over a long acked tail reads no acked row (the work of a lease does not grow with
  the acked rows it steps over);
- the purge deletes acked runs by seq range (and their `acks` rows) exactly when their
  `acked_at` is past retention, and `events` (a view) reads as before;
- a version 6 file (built with the version 6 statements) keeps every pending, retained and
  dead-lettered record with its seq, id and `acked_at` (so its purge time);
- `AckedRanges`, the in-memory runs, against a plain set of seqs.
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import struct
import uuid
from pathlib import Path
from typing import Any

from buffer.base import AppendResult, Record, SeqHoldings, StoredRecord
from buffer.sqlite import SqliteBuffer
from buffer.sqlite.acked import AckedRanges
from buffer.sqlite.schema import MIGRATIONS


class FakeClock:
    """A clock the test moves by hand (accepted_at, acked_at and purge are then exact)."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def facts(prefix: str, count: int, priority: int = 0) -> list[Record]:
    """Records with UUID ids, as `events.ids` makes them (stored as 16 bytes)."""
    return [
        Record(
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"{prefix}/{n}")),
            "reading",
            priority,
            f"{prefix}{n}".encode(),
        )
        for n in range(count)
    ]


async def lease_all(buffer: SqliteBuffer) -> list[StoredRecord]:
    leased: list[StoredRecord] = []
    for _ in range(1_000):  # bounded
        batch = await buffer.lease(7)
        if not batch:
            return leased
        leased += batch
    raise AssertionError("lease did not run dry")


def read(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        rows = [tuple(row) for row in db.execute(sql)]
    db.close()
    return rows


async def test_a_held_id_offered_after_a_restart_takes_no_new_seq(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    clock = FakeClock()
    pending, retained = facts("p", 3), facts("r", 3)
    async with SqliteBuffer.open(path, clock=clock) as buffer:
        assert await buffer.append(retained) == AppendResult(3, 0, 3)
        assert await buffer.append(pending) == AppendResult(3, 0, 6)
        await buffer.ack([1, 2, 3])
    async with SqliteBuffer.open(path, clock=clock) as buffer:
        again = await buffer.append([*retained, *pending, *facts("new", 1)])
        assert again == AppendResult(accepted=1, duplicates=6, last_seq=7)
        assert [r.seq for r in await lease_all(buffer)] == [4, 5, 6, 7]
    assert read(path, "SELECT count(*) FROM log") == [(7,)]


async def test_an_ack_changes_only_acks_rows(tmp_path: Path) -> None:
    """The point of version 7: the ack writes no row, no page of `log` or its index."""
    path = tmp_path / "buffer.db"
    async with SqliteBuffer.open(path) as buffer:
        await buffer.append(facts("a", 300) + facts("b", 300, priority=2))
        await buffer._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (before,) = next(iter(await buffer._db.execute_fetchall("SELECT total_changes()")))
        # Three runs: 1..100, 150, 300..450 (the last one across both priorities).
        await buffer.ack([*range(1, 101), 150, *range(300, 451)])
        (after,) = next(iter(await buffer._db.execute_fetchall("SELECT total_changes()")))
        written = wal_pages(path)
        pages = {
            str(name): {int(page) for _, page in rows}
            for name, rows in _grouped(
                read(
                    path,
                    "SELECT name, pageno FROM dbstat WHERE name IN ('log', 'log_lane', 'acks')",
                )
            ).items()
        }
        assert after - before == 3  # three rows inserted into `acks`, nothing else changed
        assert read(path, "SELECT first_seq, last_seq FROM acks ORDER BY 1") == [
            (1, 100),
            (150, 150),
            (300, 450),
        ]
        assert written  # the check reads what it should: the ack's commit is in the WAL
        assert not written & (pages["log"] | pages["log_lane"])
        assert written <= pages["acks"]
        stats = await buffer.stats()
        assert (stats.pending, stats.acked_retained) == (600 - 252, 252)


def _grouped(rows: list[tuple[Any, ...]]) -> dict[Any, list[tuple[Any, ...]]]:
    groups: dict[Any, list[tuple[Any, ...]]] = {}
    for row in rows:
        groups.setdefault(row[0], []).append(row)
    return groups


def wal_pages(path: Path) -> set[int]:
    """The page numbers of the frames in the WAL file (its format: a 32-byte header, then
    frames of a 24-byte header, whose first 4 bytes are the page number, and a page)."""
    wal = path.with_name(path.name + "-wal").read_bytes()
    if len(wal) < 32:
        return set()
    (page_size,) = struct.unpack(">I", wal[8:12])
    pages: set[int] = set()
    for offset in range(32, len(wal) - 24, 24 + page_size):
        (page,) = struct.unpack(">I", wal[offset : offset + 4])
        pages.add(page)
    return pages


async def test_a_restart_after_acks_keeps_the_lease_order_and_skips_acked_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "buffer.db"
    mixed = [r for pair in zip(facts("low", 20), facts("high", 20, 5), strict=True) for r in pair]
    async with SqliteBuffer.open(path) as buffer:
        await buffer.append(mixed)  # seqs: odd = priority 0, even = priority 5
        acked = [*range(1, 12), 14, 15, 30, *range(33, 41)]
        await buffer.ack(acked)
    async with SqliteBuffer.open(path) as buffer:
        leased = await lease_all(buffer)
        want = sorted(
            (seq for seq in range(1, 41) if seq not in acked),
            key=lambda seq: (-(5 if seq % 2 == 0 else 0), seq),
        )
        assert [r.seq for r in leased] == want
        assert {r.priority for r in leased if r.seq % 2 == 0} == {5}
        buffer.rewind()
        assert [r.seq for r in await lease_all(buffer)] == want
        await buffer.ack([r.seq for r in leased])
        assert await buffer.lease(100) == []
        assert (await buffer.stats()).pending == 0


async def _lease_steps(path: Path, tail: int) -> int:
    """VM steps (SQLite's progress handler, every 10 instructions) that the lease of the
    pending rows after a rewind takes on a file whose acked rows of priority 0 span `tail`
    seqs, with a stuck pending row of priority 2 below them all."""
    async with SqliteBuffer.open(path) as buffer:
        await buffer.append(facts("stuck", 1, priority=2))
        await buffer.append(facts("tail", tail))
        await buffer.ack(list(range(2, tail + 2)))
        await buffer.append(facts("live", 5))
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        await buffer._reader.set_progress_handler(count, 10)
        buffer.rewind()
        leased = await buffer.lease(10)
        counted = steps[0]
        assert [r.seq for r in leased] == [1, *range(tail + 2, tail + 7)]
        return counted


async def test_a_rewind_over_a_long_acked_tail_reads_no_acked_row(tmp_path: Path) -> None:
    """The lease seeks from gap to gap between acked runs: 50 or 20,000 acked rows between
    the stuck row and the live ones cost it the same work (a scan of the acked rows would
    cost 400 times as much)."""
    short = await _lease_steps(tmp_path / "short.db", 50)
    long = await _lease_steps(tmp_path / "long.db", 20_000)
    assert short > 0
    assert long <= short * 2


async def test_the_purge_deletes_acked_runs_past_retention_and_events_reads_as_before(
    tmp_path: Path,
) -> None:
    path = tmp_path / "buffer.db"
    clock = FakeClock(1_000.0)
    async with SqliteBuffer.open(path, clock=clock, retention_s=100) as buffer:
        await buffer.append(facts("a", 10))
        await buffer.ack([1, 2, 3])
        clock.now = 1_050.0
        await buffer.ack([5, 6])
        clock.now = 1_120.0  # past retention for the first ack only
        assert await buffer.purge() == 3
        assert read(path, "SELECT first_seq, last_seq, acked_at FROM acks") == [(5, 6, 1_050.0)]
        assert read(path, "SELECT seq, acked_at FROM events ORDER BY seq") == [
            (4, None),
            (5, 1_050.0),
            (6, 1_050.0),
            *((seq, None) for seq in range(7, 11)),
        ]
        assert read(path, "SELECT count(*) FROM events WHERE acked_at IS NULL") == [(5,)]
        assert await buffer.holdings(1, 10) == SeqHoldings(
            first=1,
            last=10,
            retained=((5, 6),),
            pending=((4, 4), (7, 10)),
            dead_letters=(),
            gone=((1, 3),),
            not_accepted=(),
        )
        clock.now = 1_200.0
        assert await buffer.purge() == 2
        assert read(path, "SELECT count(*) FROM acks") == [(0,)]
        stats = await buffer.stats()
        assert (stats.pending, stats.acked_retained, stats.retained_bytes) == (5, 0, 0)
        assert [r.seq for r in await lease_all(buffer)] == [4, 7, 8, 9, 10]


def version_6_file(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """A buffer file as the version 6 code wrote it, through its own schema statements
    (`MIGRATIONS[:6]`), with every kind of row; returns what it wrote."""
    pending: list[tuple[Any, ...]] = [  # seq, id, kind, priority, body, accepted_at
        (3, uuid.uuid5(uuid.NAMESPACE_URL, "p/3").bytes, "telemetry.v1", 0, b"p3", 10.0),
        (6, "MES-6", "workorder.completed.v1", 5, b"p6", 11.0),
        (9, uuid.uuid5(uuid.NAMESPACE_URL, "p/9").bytes, "telemetry.v1", 5, b"p9", 12.0),
    ]
    retained: list[tuple[Any, ...]] = [  # ... acked_at
        # 1, 2 acked together; 4 with another time (a run of its own, though 3 is between
        # pending); 7, 8 consecutive but acked at different times: two runs.
        (1, uuid.uuid5(uuid.NAMESPACE_URL, "r/1").bytes, "telemetry.v1", 0, b"r1", 9.0, 20.0),
        (2, uuid.uuid5(uuid.NAMESPACE_URL, "r/2").bytes, "telemetry.v1", 0, b"r2", 9.0, 20.0),
        (4, "MES-4", "workorder.completed.v1", 5, b"r4", 10.5, 21.0),
        (7, uuid.uuid5(uuid.NAMESPACE_URL, "r/7").bytes, "telemetry.v1", 0, b"r7", 11.5, 22.0),
        (8, uuid.uuid5(uuid.NAMESPACE_URL, "r/8").bytes, "telemetry.v1", 0, b"r8", 11.6, 23.0),
    ]
    dead: list[tuple[Any, ...]] = [  # number, seq, id, kind, priority, body, accepted_at, ...
        (
            1,
            5,
            uuid.uuid5(uuid.NAMESPACE_URL, "d/5").bytes,
            "telemetry.v1",
            0,
            b"d5",
            10.8,
            "too large",
            30.0,
        ),
        (2, None, "bad-row", "record.rejected.v1", 0, b"bad", None, "unknown unit", 31.0),
    ]
    db = sqlite3.connect(path, isolation_level=None)
    for version, script in enumerate(MIGRATIONS[:6], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {version}; COMMIT;")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO events (seq, id, kind, priority, body, accepted_at) VALUES (?,?,?,?,?,?)",
        pending,
    )
    db.executemany(
        "INSERT INTO events (seq, id, kind, priority, body, accepted_at, acked_at)"
        " VALUES (?,?,?,?,?,?,?)",
        retained,
    )
    db.executemany("INSERT INTO dead_letters VALUES (?,?,?,?,?,?,?,?,?)", dead)
    # seq 10 was purged after delivery: gone.
    db.execute("UPDATE meta SET value = 10 WHERE key = 'last_seq'")
    db.execute("INSERT INTO evictions VALUES (0, 'telemetry.v1', 'evicted', 1)")
    db.execute("INSERT INTO source_state VALUES ('mes/cursor', '42', 15.0)")
    db.execute("INSERT INTO identities VALUES (0, 'plant-a', 'edge-01')")
    db.execute("COMMIT")
    db.close()
    return {"pending": pending, "retained": retained, "dead": dead}


def _text(stored: object) -> str:
    if isinstance(stored, bytes):
        return str(uuid.UUID(bytes=stored))
    assert isinstance(stored, str)
    return stored


async def test_a_version_6_file_keeps_every_record_its_seq_and_its_purge_time(
    tmp_path: Path,
) -> None:
    path = tmp_path / "buffer.db"
    wrote = version_6_file(path)
    text = {row[0]: _text(row[1]) for row in [*wrote["pending"], *wrote["retained"]]}
    clock = FakeClock(25.0)
    async with SqliteBuffer.open(path, clock=clock, retention_s=100) as buffer:
        assert buffer.last_seq == 10
        # Each run of consecutive seqs acked at the same time is one `acks` row.
        assert read(path, "SELECT first_seq, last_seq, acked_at FROM acks ORDER BY 1") == [
            (1, 2, 20.0),
            (4, 4, 21.0),
            (7, 7, 22.0),
            (8, 8, 23.0),
        ]
        assert read(path, "SELECT seq, acked_at FROM events ORDER BY seq") == [
            (1, 20.0),
            (2, 20.0),
            (3, None),
            (4, 21.0),
            (6, None),
            (7, 22.0),
            (8, 23.0),
            (9, None),
        ]
        assert await buffer.lease(100) == [
            StoredRecord(seq, text[seq], kind, priority, body, accepted_at)
            for seq, _id, kind, priority, body, accepted_at in sorted(
                wrote["pending"], key=lambda row: (-int(row[3]), int(row[0]))
            )
        ]
        replay = [r for chunk in [c async for c in buffer.retained(since=0)] for r in chunk]
        assert [(r.seq, r.id, r.body, r.accepted_at) for r in replay] == [
            (row[0], text[row[0]], row[4], row[5]) for row in wrote["retained"]
        ]
        assert [(d.seq, d.reason) for d in await buffer.dead_letters()] == [
            (5, "too large"),
            (None, "unknown unit"),
        ]
        assert await buffer.holdings(1, 11) == SeqHoldings(
            first=1,
            last=11,
            retained=((1, 2), (4, 4), (7, 8)),
            pending=((3, 3), (6, 6), (9, 9)),
            dead_letters=((5, 5),),
            gone=((10, 10),),
            not_accepted=((11, 11),),
        )
        stats = await buffer.stats()
        assert (stats.pending, stats.acked_retained, stats.dead_letters) == (3, 5, 2)
        assert stats.pending_by_priority == {0: 1, 5: 2}
        assert stats.pending_bytes == 6 and stats.retained_bytes == 10
        assert stats.oldest_pending_at == 10.0 and stats.oldest_retained_at == 9.0
        assert stats.evictions == {(0, "telemetry.v1", "evicted"): 1}
        assert await buffer.source_state("mes/") == {"mes/cursor": "42"}
        assert await buffer.identities() == [(0, "plant-a", "edge-01")]
        # Every held id is still a duplicate; new facts go on at 11.
        again = [Record(text[seq], "telemetry.v1", 0, b"") for seq in sorted(text)]
        assert await buffer.append([*again, *facts("n", 1)]) == AppendResult(1, 8, 11)
        # Each acked_at kept its purge time (retention 100 s): seqs 1, 2 (acked at 20) go
        # at 120.5, seq 4 (21) at 121.5, seqs 7 (22) and 8 (23) at 123.5.
        assert await buffer.purge(now=120.5) == 2
        assert await buffer.purge(now=121.5) == 1
        assert await buffer.purge(now=123.5) == 2
        assert (await buffer.stats()).acked_retained == 0
    check = read(path, "PRAGMA integrity_check")
    assert check == [("ok",)]
    assert read(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]


def test_acked_ranges_match_a_set_of_seqs() -> None:
    """The in-memory runs against a plain set, over random adds and removes (fixed seed)."""
    chance = random.Random(7)
    runs, seqs = AckedRanges(), set[int]()
    for _ in range(2_000):
        first = chance.randint(1, 200)
        last = first + chance.randint(0, 12)
        if chance.random() < 0.6:
            runs.add(first, last)
            seqs.update(range(first, last + 1))
        else:
            runs.remove(first, last)
            seqs.difference_update(range(first, last + 1))
        listed = runs.runs()
        assert {s for a, b in listed for s in range(a, b + 1)} == seqs
        assert all(b + 1 < a2 for (_, b), (a2, _) in itertools.pairwise(listed))
        probe = chance.randint(0, 220)
        start, end, acked_to = runs.next_gap(probe)
        assert start > probe and start not in seqs
        assert all(s in seqs for s in range(probe + 1, start))
        if end is None:
            assert acked_to is None and all(s < start for s in seqs)
        else:
            assert acked_to is not None
            assert all(s not in seqs for s in range(start, end + 1))
            assert all(s in seqs for s in range(end + 1, acked_to + 1))
            assert acked_to + 1 not in seqs
        low = chance.randint(1, 200)
        high = low + chance.randint(0, 30)
        parts = runs.not_acked(low, high)
        assert {s for a, b in parts for s in range(a, b + 1)} == {
            s for s in range(low, high + 1) if s not in seqs
        }


async def test_a_purge_over_many_transactions_deletes_long_and_short_runs(tmp_path: Path) -> None:
    """One run longer than a purge transaction takes (10,000 rows) and 10,000 runs of one
    seq each: all deleted, with every `acks` row, and nothing pending touched."""
    path = tmp_path / "buffer.db"
    clock = FakeClock(1_000.0)
    async with SqliteBuffer.open(path, clock=clock, retention_s=10, synchronous="normal") as buffer:
        for start in range(0, 25_001, 5_000):
            await buffer.append(facts(f"b{start}", 5_000))
        await buffer.ack(list(range(1, 15_001)))
        await buffer.ack(list(range(15_001, 25_001, 2)))
        clock.now += 1
        await buffer.ack(list(range(15_002, 25_001, 2)))
        assert read(path, "SELECT count(*) FROM acks") == [(1 + 10_000,)]
        clock.now += 100
        assert await buffer.purge() == 25_000
        assert read(path, "SELECT count(*) FROM acks") == [(0,)]
        assert buffer._acked.runs() == []
        stats = await buffer.stats()
        assert (stats.pending, stats.acked_retained, stats.retained_bytes) == (5_000, 0, 0)
        assert [r.seq for r in await buffer.lease(3)] == [25_001, 25_002, 25_003]


def _sqlite_memory() -> Any:
    """The SQLite library this Python's sqlite3 module runs on, for its memory figures
    (`sqlite3_memory_highwater`); None where ctypes cannot find it."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("sqlite3")
    if name is None:
        return None
    library = ctypes.CDLL(name)
    library.sqlite3_memory_highwater.restype = ctypes.c_int64
    library.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
    return library


async def test_stats_and_counts_do_not_hold_the_retained_bodies_in_memory(
    tmp_path: Path,
) -> None:
    """`stats()` runs at every status snapshot and `_refresh_counts` at open: neither may sort
    the acked rows with their bodies (a GROUP BY over `acks` joined to `log` did: SQLite's
    memory grew by the size of the retained rows, 70 MB at 300,000 events)."""
    library = _sqlite_memory()
    # Debian's libsqlite3 (what this Python's sqlite3 module links) is the supported platform.
    assert library is not None, "ctypes cannot find libsqlite3 to read its memory high-water mark"
    body = b"x" * 2000
    async with SqliteBuffer.open(tmp_path / "buffer.db") as buffer:
        for _ in range(20):
            await buffer.append(
                [Record(str(uuid.uuid4()), "telemetry", 0, body) for _ in range(500)]
            )
        await buffer.ack(list(range(1, 10_001)))  # 20 MB of bodies, all retained
        library.sqlite3_memory_highwater(1)  # reset the mark
        stats = await buffer.stats()
        during_stats = library.sqlite3_memory_highwater(1)
        await buffer._refresh_counts()
        during_counts = library.sqlite3_memory_highwater(1)
    assert stats.acked_retained == 10_000 and stats.pending == 0
    # A mark of 0 would mean this libsqlite3 keeps no memory statistics: the check below would
    # then prove nothing, so that fails too.
    assert during_stats > 0, "libsqlite3 keeps no memory statistics (SQLITE_DEFAULT_MEMSTATUS=0)"
    # What the connections' page caches and the statements need, not 20 MB of bodies.
    assert during_stats < 8_000_000, during_stats
    assert during_counts < 8_000_000, during_counts
