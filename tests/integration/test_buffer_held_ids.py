"""The duplicate check without a UNIQUE index on `events.id` (schema version 6).

The ids a buffer holds are kept in `held_ids`, an in-memory TEMP index of the writing
connection (`buffer.sqlite.schema.HELD_IDS`), rebuilt from the file at every open, keyed by
an 8-byte prefix of each UUID id. These tests show the contract of `buffer.base` still holds:
a re-observed id never takes a new seq, across a clean restart and a crash image; ids that
share a key are told apart by their stored rows (a shared key never drops a new record); an
id leaves the index exactly when its row leaves `events` (purge, eviction, dead letter) and
not when a transaction rolls back; and a file
written with the version 5 schema (the UNIQUE index) is migrated keeping every pending,
retained and dead-lettered record with its seq.
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from buffer.base import AppendResult, BufferFull, Capacity, Record, SeqHoldings, StoredRecord
from buffer.sqlite import SqliteBuffer
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


def expected_key(stored: object) -> object:
    """The key the index must hold for a stored id: a 16-byte id by its first 8 bytes, any
    other id whole (written out here, independently of `buffer.sqlite.schema.held_key`)."""
    return stored[:8] if isinstance(stored, bytes) else stored


async def held_pairs(buffer: SqliteBuffer) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(the in-memory index, the table) as (key, seq) pairs in seq order: white box, on
    purpose."""
    db = buffer._db
    index = await db.execute_fetchall("SELECT key, seq FROM temp.held_ids ORDER BY seq")
    table = await db.execute_fetchall("SELECT id, seq FROM main.events ORDER BY seq")
    return [tuple(row) for row in index], [(expected_key(i), seq) for i, seq in table]


def alike(count: int) -> list[Record]:
    """Records whose UUID ids share their first 8 bytes (and so their `held_ids` key): what
    two UUIDv5 ids do once in about 10^18 pairs (60 random bits), made to happen here."""
    head = uuid.uuid5(uuid.NAMESPACE_URL, "alike").bytes[:8]
    return [
        Record(str(uuid.UUID(bytes=head + n.to_bytes(8, "big"))), "reading", 0, f"s{n}".encode())
        for n in range(count)
    ]


async def test_a_reobserved_id_takes_no_new_seq_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    clock = FakeClock()
    first = facts("a", 6)
    async with SqliteBuffer.open(path, clock=clock) as buffer:
        assert await buffer.append(first) == AppendResult(6, 0, 6)
        await buffer.ack([1, 2, 3])  # delivered, retained: still held
    async with SqliteBuffer.open(path, clock=clock) as buffer:
        # The OPC UA server re-sends current values after the reconnect: all six again, and
        # two new facts among them.
        again = [*first, *facts("b", 2)]
        assert await buffer.append(again) == AppendResult(2, 6, 8)
        assert [r.seq for r in await buffer.lease(100)] == [4, 5, 6, 7, 8]
        index, table = await held_pairs(buffer)
        assert index == table


async def test_a_reobserved_id_takes_no_new_seq_after_a_crash(tmp_path: Path) -> None:
    """A crash image (the file and its WAL as a kill -9 leaves them, the index never written
    anywhere) still knows every committed id."""
    path, image = tmp_path / "buffer.db", tmp_path / "image" / "buffer.db"
    image.parent.mkdir()
    held = facts("a", 300)
    async with SqliteBuffer.open(path) as buffer:
        await buffer.append(held[:200])
        await buffer.append(held[200:])
        await buffer.ack(list(range(1, 101)))
        # Between transactions: a copy now is what a crash leaves (committed, in the WAL).
        assert path.with_name("buffer.db-wal").exists()
        for suffix in ("", "-wal"):
            shutil.copy(path.with_name(path.name + suffix), image.with_name(image.name + suffix))
    async with SqliteBuffer.open(image) as crashed:
        assert crashed.last_seq == 300
        result = await crashed.append([*reversed(held), *facts("new", 1)])
        assert result == AppendResult(1, 300, 301)


async def test_an_id_is_forgotten_exactly_when_its_row_leaves(tmp_path: Path) -> None:
    clock = FakeClock()
    capacity = Capacity(max_pending_bytes=10, policies={1: "evict_oldest"})
    async with SqliteBuffer.open(
        tmp_path / "buffer.db", clock=clock, retention_s=100, capacity=capacity
    ) as buffer:
        kept, lettered, evicted = facts("k", 2), facts("d", 1), facts("e", 3, priority=1)
        assert (await buffer.append([*kept, *lettered])).last_seq == 3
        await buffer.ack([1])
        await buffer.dead_letter([3], "poison")
        # Priority 1 evicts its oldest for room (capacity: 10 bytes of bodies).
        await buffer.append(evicted)
        over = await buffer.append(facts("f", 3, priority=1))
        assert [(o.reason, o.seq_ranges) for o in over.overflow] == [("evicted", ((4, 5),))]
        # Purged after the retention: row 1 leaves, its id is no longer held.
        clock.now += 200
        assert await buffer.purge() == 1
        index, table = await held_pairs(buffer)
        assert index == table
        # Dead-lettered, evicted and purged ids are accepted again, with new seqs; the
        # pending one (seq 2) is still a duplicate.
        gone = [kept[0], lettered[0], evicted[0]]
        result = await buffer.append([*gone, kept[1]])
        assert (result.accepted, result.duplicates) == (3, 1)
        # A retried dead letter is held again under its own seq.
        await buffer.dead_letter([result.last_seq - 1], "again")  # the re-accepted "d/0"
        assert await buffer.retry_dead_letters([result.last_seq - 1]) == (1, 0)
        assert (await buffer.append(lettered)).duplicates == 1
        index, table = await held_pairs(buffer)
        assert index == table


async def test_ids_sharing_a_key_are_told_apart_by_their_rows(tmp_path: Path) -> None:
    """A key hit is only a candidate: the stored id decides. A new id whose key is held is
    accepted (never dropped as a duplicate), the held one stays a duplicate, across a restart,
    in a retry of dead letters, and once its namesake has left."""
    path = tmp_path / "buffer.db"
    clock = FakeClock()
    first, second, third, fourth = alike(4)
    async with SqliteBuffer.open(path, clock=clock, retention_s=10) as buffer:
        assert await buffer.append([first]) == AppendResult(1, 0, 1)
        # One batch: the held one (a duplicate), a new one with its key, twice (once).
        assert await buffer.append([first, second, second]) == AppendResult(1, 2, 2)
        index, table = await held_pairs(buffer)
        assert index == table and len({key for key, _seq in index}) == 1
    async with SqliteBuffer.open(path, clock=clock, retention_s=10) as buffer:
        assert await buffer.append([second, third, first]) == AppendResult(1, 2, 3)
        # A dead letter comes back although two other ids with its key are held.
        await buffer.dead_letter([3], "poison")
        assert await buffer.append([fourth]) == AppendResult(1, 0, 4)
        assert await buffer.retry_dead_letters([3]) == (1, 0)
        assert (await buffer.append([third])).duplicates == 1
        # Delivered and purged: that id alone is forgotten, its key-mates are still held.
        await buffer.ack([1])
        clock.now += 100
        assert await buffer.purge() == 1
        assert await buffer.append([first, second, third, fourth]) == AppendResult(1, 3, 5)
        index, table = await held_pairs(buffer)
        assert index == table and len(index) == 4
        assert [r.id for r in await buffer.lease(10)] == [
            r.id for r in (second, third, fourth, first)
        ]


async def test_a_rolled_back_append_leaves_no_id_held(tmp_path: Path) -> None:
    """The ids are added to the index before the source state is written; when that write
    finds the file full (`max_page_count`), the ROLLBACK takes the ids back out too."""
    path = tmp_path / "buffer.db"
    async with SqliteBuffer.open(path) as buffer:
        await buffer.append(facts("a", 1))
    with sqlite3.connect(path) as db:
        (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.close()
    async with SqliteBuffer.open(path, max_page_count=int(pages) + 2) as buffer:
        offered = facts("x", 2)
        with pytest.raises(BufferFull):  # no room for a 200 kB cursor, nothing to evict
            await buffer.append(offered, state={"mes/cursor": "c" * 200_000})
        index, table = await held_pairs(buffer)
        assert index == table and len(table) == 1
        assert await buffer.append(offered) == AppendResult(2, 0, 3)


async def test_events_has_no_index_on_id(tmp_path: Path) -> None:
    """The point of version 6: a row costs no random-key B-tree write (only keys that follow
    time: the rowid and, from version 7, where `events` is a view of `log`, the lane index)."""
    path = tmp_path / "buffer.db"
    async with SqliteBuffer.open(path) as buffer:
        await buffer.append(facts("a", 2))
    with sqlite3.connect(path) as db:
        indexes = {str(row[1]) for row in db.execute("PRAGMA index_list(log)")}
        columns = [str(row[2]) for row in db.execute("PRAGMA index_info(log_lane)")]
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
    db.close()
    assert indexes == {"log_lane"}
    assert columns == ["priority", "seq"]


def version_5_file(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """A buffer file as the version 5 code wrote it, through its own schema statements
    (`MIGRATIONS[:5]`, append only: exactly the scripts that agent ran), with every kind of
    row; returns what it wrote."""
    pending: list[tuple[Any, ...]] = [  # seq, id, kind, priority, body, accepted_at
        (2, uuid.uuid5(uuid.NAMESPACE_URL, "p/2").bytes, "telemetry.v1", 0, b"p2", 10.0),
        (4, "MES-4", "workorder.completed.v1", 5, b"p4", 11.0),  # a text id
        (7, str(uuid.uuid5(uuid.NAMESPACE_URL, "p/7")), "telemetry.v1", 0, b"p7", 12.0),
        (9, uuid.uuid5(uuid.NAMESPACE_URL, "p/9").bytes, "machine.alarm.v1", 5, b"p9", 13.0),
    ]
    retained: list[tuple[Any, ...]] = [  # ... acked_at
        (1, uuid.uuid5(uuid.NAMESPACE_URL, "r/1").bytes, "telemetry.v1", 0, b"r1", 9.0, 20.0),
        (3, uuid.uuid5(uuid.NAMESPACE_URL, "r/3").bytes, "telemetry.v1", 0, b"r3", 9.5, 21.0),
        (8, uuid.uuid5(uuid.NAMESPACE_URL, "r/8").bytes, "machine.alarm.v1", 5, b"r8", 12.5, 22.0),
    ]
    dead: list[
        tuple[Any, ...]
    ] = [  # number, seq, id, kind, priority, body, accepted_at, reason, dead_at
        (
            1,
            5,
            uuid.uuid5(uuid.NAMESPACE_URL, "d/5").bytes,
            "telemetry.v1",
            0,
            b"d5",
            11.5,
            "too large",
            30.0,
        ),
        (2, None, "bad-row", "record.rejected.v1", 0, b"bad", None, "unknown unit", 31.0),
    ]
    db = sqlite3.connect(path, isolation_level=None)
    for version, script in enumerate(MIGRATIONS[:5], start=1):
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
    # seq 6 was evicted, 10 purged after delivery: gone.
    db.execute("UPDATE meta SET value = 10 WHERE key = 'last_seq'")
    db.execute("INSERT INTO evictions VALUES (0, 'telemetry.v1', 'evicted', 1)")
    db.execute("INSERT INTO source_state VALUES ('mes/cursor', '42', 15.0)")
    db.execute("INSERT INTO identities VALUES (0, 'plant-a', 'edge-01')")
    db.execute("COMMIT")
    db.close()
    return {"pending": pending, "retained": retained, "dead": dead}


async def test_a_version_5_file_keeps_every_record_and_seq(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    wrote = version_5_file(path)
    text = {row[0]: _text(row[1]) for row in [*wrote["pending"], *wrote["retained"]]}
    async with SqliteBuffer.open(path, clock=FakeClock(25.0), retention_s=100) as buffer:
        assert buffer.last_seq == 10
        leased = await buffer.lease(100)
        # Priority 5 first, each in seq order: every pending record, with its own seq.
        assert leased == [
            StoredRecord(seq, text[seq], kind, priority, body, accepted_at)
            for seq, _id, kind, priority, body, accepted_at in sorted(
                wrote["pending"],
                key=lambda row: (-int(row[3]), int(row[0])),
            )
        ]
        replay = [r for chunk in [c async for c in buffer.retained(since=0)] for r in chunk]
        assert [(r.seq, r.id, r.body) for r in replay] == [
            (row[0], text[row[0]], row[4]) for row in sorted(wrote["retained"])
        ]
        letters = await buffer.dead_letters()
        assert [(d.seq, d.id, d.reason) for d in letters] == [
            (5, _text(wrote["dead"][0][2]), "too large"),
            (None, "bad-row", "unknown unit"),
        ]
        assert await buffer.holdings(1, 12) == SeqHoldings(
            first=1,
            last=12,
            retained=((1, 1), (3, 3), (8, 8)),
            pending=((2, 2), (4, 4), (7, 7), (9, 9)),
            dead_letters=((5, 5),),
            gone=((6, 6), (10, 10)),
            not_accepted=((11, 12),),
        )
        stats = await buffer.stats()
        assert (stats.pending, stats.acked_retained, stats.dead_letters) == (4, 3, 2)
        assert stats.pending_by_priority == {0: 2, 5: 2}
        assert stats.evictions == {(0, "telemetry.v1", "evicted"): 1}
        assert await buffer.source_state("mes/") == {"mes/cursor": "42"}
        assert await buffer.identities() == [(0, "plant-a", "edge-01")]
        # Every held id is still a duplicate (text and 16-byte forms); new facts go on at 11.
        again = [Record(text[seq], "telemetry.v1", 0, b"") for seq in sorted(text)]
        assert await buffer.append([*again, *facts("n", 1)]) == AppendResult(1, 7, 11)
        # The retried dead letter comes back with its seq 5 and is held again.
        assert await buffer.retry_dead_letters([5]) == (1, 0)
        dead_id = _text(wrote["dead"][0][2])
        assert (await buffer.append([Record(dead_id, "telemetry.v1", 0, b"")])).duplicates == 1
        await buffer.ack([2, 4, 5, 7, 9, 11])
        clock_later = 25.0 + 1_000
        assert await buffer.purge(now=clock_later) == 3 + 6
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


def _text(stored: object) -> str:
    if isinstance(stored, bytes):
        return str(uuid.UUID(bytes=stored))
    assert isinstance(stored, str)
    return stored
