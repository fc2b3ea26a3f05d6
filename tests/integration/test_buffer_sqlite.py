"""SqliteBuffer on real files: examples, a kill -9 test and a model-based (stateful) test."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import tomllib
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from buffer.base import AppendResult, BufferCorrupt, BufferFull, Capacity, Record, StoredRecord
from buffer.sqlite import ID_TEXT_SQL, SqliteBuffer

ROOT = Path(__file__).resolve().parents[2]
RETENTION_S = 100.0


class FakeClock:
    """A clock the test moves by hand, so accepted_at, acked_at and purge are exact."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def records(prefix: str, count: int, priority: int = 0) -> list[Record]:
    return [
        Record(f"{prefix}-{n}", "reading", priority, f"{prefix}{n}".encode()) for n in range(count)
    ]


async def lease_all(buffer: SqliteBuffer) -> list[StoredRecord]:
    return await buffer.lease(1_000_000)


# --- append: acceptance, duplicates, seq -----------------------------------------------------


async def test_append_assigns_gap_free_seqs(tmp_path: Path) -> None:
    async with SqliteBuffer.open(tmp_path / "buffer.db") as buffer:
        assert await buffer.append(records("a", 3)) == AppendResult(3, 0, 3)
        assert await buffer.append(records("b", 2)) == AppendResult(2, 0, 5)
        assert await buffer.append([]) == AppendResult(0, 0, 5)
        leased = await lease_all(buffer)
    assert [r.seq for r in leased] == [1, 2, 3, 4, 5]
    assert [r.id for r in leased] == ["a-0", "a-1", "a-2", "b-0", "b-1"]
    assert leased[0] == StoredRecord(1, "a-0", "reading", 0, b"a0", leased[0].accepted_at)


async def test_duplicates_use_no_seq_within_a_batch_across_batches_and_after_reopen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "buffer.db"
    async with SqliteBuffer.open(path) as buffer:
        first = Record("x", "reading", 0, b"first")
        batch = [first, Record("y", "reading", 0, b""), Record("x", "reading", 0, b"second")]
        assert await buffer.append(batch) == AppendResult(2, 1, 2)
        assert await buffer.append([Record("y", "reading", 0, b""), Record("z", "r", 0, b"")]) == (
            AppendResult(1, 1, 3)
        )
        await buffer.ack([1])  # acked but retained: still a duplicate
    async with SqliteBuffer.open(path) as buffer:
        assert await buffer.append([first, Record("w", "reading", 0, b"")]) == AppendResult(1, 1, 4)
        assert [(r.seq, r.id) for r in await lease_all(buffer)] == [(2, "y"), (3, "z"), (4, "w")]


async def test_a_batch_larger_than_one_statement_is_checked_in_chunks(tmp_path: Path) -> None:
    async with SqliteBuffer.open(tmp_path / "buffer.db") as buffer:
        assert await buffer.append(records("a", 1_200)) == AppendResult(1_200, 0, 1_200)
        again = records("a", 1_200) + records("b", 300)
        assert await buffer.append(again) == AppendResult(300, 1_200, 1_500)


async def test_seq_continues_after_reopen_and_after_everything_is_purged(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    clock = FakeClock()
    async with SqliteBuffer.open(path, retention_s=RETENTION_S, clock=clock) as buffer:
        await buffer.append(records("a", 4))
    async with SqliteBuffer.open(path, retention_s=RETENTION_S, clock=clock) as buffer:
        assert await buffer.append(records("b", 2)) == AppendResult(2, 0, 6)
        await buffer.ack(range(1, 7))
        clock.now += RETENTION_S + 1
        assert await buffer.purge() == 6
        assert (await buffer.stats()).pending == 0
        # Purged ids are forgotten: "a-0" is new again, with a new seq.
        assert await buffer.append(records("a", 1)) == AppendResult(1, 0, 7)
    async with SqliteBuffer.open(path, retention_s=RETENTION_S, clock=clock) as buffer:
        await buffer.ack([7])
        clock.now += RETENTION_S + 1
        assert await buffer.purge() == 1
    async with SqliteBuffer.open(path, retention_s=RETENTION_S, clock=clock) as buffer:
        assert await buffer.append(records("c", 1)) == AppendResult(1, 0, 8)


async def test_concurrent_callers_get_one_transaction_each(tmp_path: Path) -> None:
    async with SqliteBuffer.open(tmp_path / "buffer.db") as buffer:
        results = await asyncio.gather(
            *(buffer.append(records(f"t{n}", 50, priority=n % 3)) for n in range(10)),
            *(buffer.lease(7) for _ in range(10)),
        )
        appended = [r for r in results if isinstance(r, AppendResult)]
        leased = [record for r in results if isinstance(r, list) for record in r]
        leased += await lease_all(buffer)
    assert sorted(r.last_seq for r in appended) == list(range(50, 501, 50))
    assert sorted(r.seq for r in leased) == list(range(1, 501))


async def test_a_cancelled_append_leaves_the_buffer_consistent(tmp_path: Path) -> None:
    async with SqliteBuffer.open(tmp_path / "buffer.db") as buffer:
        for attempt in range(60):  # cancel at every point of the transaction, COMMIT included
            batch = records(f"c{attempt}", 20)
            task = asyncio.create_task(buffer.append(batch))
            for _ in range(attempt):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            # Accepted or not, offering the batch again is safe and seq stays gap-free.
            result = await buffer.append(batch)
            assert result.accepted + result.duplicates == 20
            assert result.last_seq == 20 * (attempt + 1)
        assert sorted(r.seq for r in await lease_all(buffer)) == list(range(1, 1_201))


async def test_a_rewind_during_a_lease_wins(tmp_path: Path) -> None:
    async with SqliteBuffer.open(tmp_path / "buffer.db") as buffer:
        await buffer.append(records("a", 3))
        leasing = asyncio.create_task(buffer.lease(10))
        await asyncio.sleep(0)  # the lease is now waiting for its query
        buffer.rewind()
        first = await leasing
        assert [r.seq for r in first] == [1, 2, 3]
        assert await buffer.lease(10) == first


# --- lease, rewind, ack ------------------------------------------------------------------------


async def test_lease_orders_by_priority_then_seq(tmp_path: Path) -> None:
    async with SqliteBuffer.open(tmp_path / "buffer.db") as buffer:
        await buffer.append(records("low", 2, priority=0))  # seq 1, 2
        await buffer.append(records("high", 2, priority=5))  # seq 3, 4
        await buffer.append(records("mid", 2, priority=2))  # seq 5, 6
        await buffer.append(records("high2", 1, priority=5))  # seq 7
        leased = await lease_all(buffer)
    assert [(r.priority, r.seq) for r in leased] == [
        (5, 3),
        (5, 4),
        (5, 7),
        (2, 5),
        (2, 6),
        (0, 1),
        (0, 2),
    ]


async def test_lease_hands_each_record_out_once(tmp_path: Path) -> None:
    async with SqliteBuffer.open(tmp_path / "buffer.db") as buffer:
        await buffer.append(records("a", 5, priority=1) + records("b", 5, priority=0))
        first, second, third = await buffer.lease(4), await buffer.lease(4), await buffer.lease(4)
        assert await buffer.lease(4) == []
        assert await buffer.lease(0) == []
        # A record appended after the cursors moved is leased next, in priority order.
        await buffer.append(records("c", 1, priority=1))
        assert [r.id for r in await buffer.lease(4)] == ["c-0"]
    seqs = [r.seq for r in first + second + third]
    assert len(first) == len(second) == 4
    assert seqs == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


async def test_rewind_leases_again_only_what_is_not_acked(tmp_path: Path) -> None:
    async with SqliteBuffer.open(tmp_path / "buffer.db") as buffer:
        await buffer.append(records("a", 3, priority=0) + records("b", 3, priority=1))
        leased = await lease_all(buffer)
        assert [r.seq for r in leased] == [4, 5, 6, 1, 2, 3]
        await buffer.ack([4, 2])
        buffer.rewind()
        assert [r.seq for r in await lease_all(buffer)] == [5, 6, 1, 3]
        assert await lease_all(buffer) == []


async def test_acked_records_are_never_leased(tmp_path: Path) -> None:
    async with SqliteBuffer.open(tmp_path / "buffer.db") as buffer:
        await buffer.append(records("a", 4))
        await buffer.ack([1, 3])  # acked before ever being leased
        assert [r.seq for r in await lease_all(buffer)] == [2, 4]
        await buffer.ack([2, 4])
        buffer.rewind()
        assert await lease_all(buffer) == []


async def test_ack_of_unknown_or_acked_seqs_is_harmless(tmp_path: Path) -> None:
    clock = FakeClock()
    async with SqliteBuffer.open(tmp_path / "buffer.db", clock=clock) as buffer:
        await buffer.append(records("a", 2))
        await buffer.ack([1])
        clock.now += 10
        await buffer.ack([1, 99, -1])
        await buffer.ack([])
        stats = await buffer.stats()
        assert (stats.pending, stats.acked_retained) == (1, 1)
        # The second ack did not move acked_at: purge at exactly retention after the first.
        assert await buffer.purge(now=1_000.0 + 86_400 + 0.5) == 1


async def test_leases_do_not_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    async with SqliteBuffer.open(path) as buffer:
        await buffer.append(records("a", 4))
        assert len(await lease_all(buffer)) == 4
        await buffer.ack([2])
    async with SqliteBuffer.open(path) as buffer:
        assert [r.seq for r in await lease_all(buffer)] == [1, 3, 4]


# --- purge, dead letters, stats ----------------------------------------------------------------


async def test_purge_deletes_only_acked_rows_past_retention(tmp_path: Path) -> None:
    clock = FakeClock()
    async with SqliteBuffer.open(tmp_path / "b.db", retention_s=RETENTION_S, clock=clock) as buf:
        await buf.append(records("a", 4))
        await buf.ack([1])  # acked at 1000
        clock.now = 1_050.0
        await buf.ack([2])  # acked at 1050
        assert await buf.purge(now=1_100.0) == 0  # 1000 is not < 1100 - 100
        assert await buf.purge(now=1_100.5) == 1
        clock.now = 1_150.5
        assert await buf.purge() == 1
        assert await buf.purge(now=1_000_000.0) == 0  # seq 3, 4 are pending: never purged
        stats = await buf.stats()
        assert (stats.pending, stats.acked_retained) == (2, 0)
        # A purged id is no longer a duplicate.
        assert await buf.append(records("a", 1)) == AppendResult(1, 0, 5)


async def test_purge_works_through_many_chunks(tmp_path: Path) -> None:
    clock = FakeClock()
    async with SqliteBuffer.open(tmp_path / "b.db", retention_s=RETENTION_S, clock=clock) as buf:
        await buf.append(records("a", 25_001))
        await buf.ack(range(1, 25_001))
        clock.now += RETENTION_S + 1
        assert await buf.purge() == 25_000
        stats = await buf.stats()
        assert (stats.pending, stats.acked_retained, stats.last_seq) == (1, 0, 25_001)


async def test_purge_trims_the_oldest_delivered_to_retained_max_bytes(tmp_path: Path) -> None:
    clock = FakeClock()
    capacity = Capacity(retained_max_bytes=250)
    async with SqliteBuffer.open(
        tmp_path / "b.db", retention_s=RETENTION_S, clock=clock, capacity=capacity
    ) as buf:
        bodies = [Record(f"r{n}", "reading", 0, bytes(100)) for n in range(10)]
        await buf.append(bodies)  # seq 1-10, 100 bytes each
        for seq in (3, 1, 2, 5, 4, 6):  # delivered in this order, one clock tick apart
            await buf.ack([seq])
            clock.now += 1
        assert (await buf.stats()).retained_bytes == 600
        # Within the time window, but over the size cap: the earliest delivered go first,
        # exactly as many as needed (600 -> 200 <= 250), none of the pending ones.
        assert await buf.purge() == 4
        stats = await buf.stats()
        assert (stats.retained_bytes, stats.acked_retained, stats.pending) == (200, 2, 4)
        assert stats.evictions == {}  # trimming the replay window is retention, not a loss
        since = 0.0
        kept = [r.seq for chunk in [c async for c in buf.retained(since=since)] for r in chunk]
        assert kept == [4, 6]
        assert stats.oldest_retained_at == 1_000.0  # all accepted at 1000
        assert await buf.purge() == 0  # under the cap: nothing more
    # The cap comes from `[buffer] retention_max_bytes` in the agent's config.
    from agent.store import capacity as configured_capacity
    from config.schema import AgentConfig
    from testkit.durability import simulated_agent_config

    text = simulated_agent_config(
        hub_url="mqtt://127.0.0.1:1",
        state_dir=tmp_path,
        extra_buffer='retention_max_bytes = "2 KiB"',
    )
    config = AgentConfig.model_validate(tomllib.loads(text))
    assert configured_capacity(config).retained_max_bytes == 2048


async def test_dead_letter_moves_pending_rows_aside_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    clock = FakeClock()
    async with SqliteBuffer.open(path, clock=clock) as buffer:
        await buffer.append(records("a", 4))
        await buffer.ack([4])
        clock.now = 1_234.0
        await buffer.dead_letter([2, 3, 4, 99], "payload too large")  # 4 is acked: ignored
        await buffer.dead_letter([2], "again")  # already moved: ignored
        assert [r.seq for r in await lease_all(buffer)] == [1]
        stats = await buffer.stats()
        assert (stats.pending, stats.acked_retained, stats.dead_letters) == (1, 1, 2)
        # Its id left events, so the same id is accepted again (with a new seq).
        assert await buffer.append(records("a", 3)) == AppendResult(2, 1, 6)
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT seq, id, body, reason, dead_at FROM dead_letters ORDER BY seq")
        assert rows.fetchall() == [
            (2, "a-1", b"a1", "payload too large", 1_234.0),
            (3, "a-2", b"a2", "payload too large", 1_234.0),
        ]
    db.close()


async def test_set_aside_stores_never_accepted_records_as_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    clock = FakeClock()
    async with SqliteBuffer.open(path, clock=clock) as buffer:
        await buffer.append(records("a", 3))
        await buffer.dead_letter([2], "too large")
        clock.now = 1_500.0
        await buffer.set_aside(records("bad", 2, priority=1), "unknown unit 'furlong'")
        await buffer.set_aside([], "nothing")
        stats = await buffer.stats()
        # No seq used, nothing pending, both kinds counted.
        assert (stats.last_seq, stats.pending, stats.dead_letters) == (3, 2, 3)
        letters = await buffer.dead_letters()
        assert [(d.seq, d.id, d.accepted_at, d.reason) for d in letters] == [
            (2, "a-1", 1_000.0, "too large"),
            (None, "bad-0", None, "unknown unit 'furlong'"),
            (None, "bad-1", None, "unknown unit 'furlong'"),
        ]
        assert letters[1].dead_at == 1_500.0 and letters[1].priority == 1
        # Their ids were never held: the same id is accepted normally, with the next seq.
        assert await buffer.append(records("bad", 1, priority=1)) == AppendResult(1, 0, 4)
        # Retry (by seq or all) puts back only what had been accepted, with its own seq.
        assert await buffer.retry_dead_letters([2]) == (1, 0)
        assert await buffer.retry_dead_letters() == (0, 0)
        assert buffer.last_seq == 4
        leased = await lease_all(buffer)
        assert [(r.seq, r.id) for r in leased] == [(4, "bad-0"), (1, "a-0"), (2, "a-1"), (3, "a-2")]
        assert [d.id for d in await buffer.dead_letters()] == ["bad-0", "bad-1"]


async def test_set_aside_survives_reopening_and_lists_in_the_cli_order(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    async with SqliteBuffer.open(path) as buffer:
        await buffer.set_aside(records("x", 1), "rejected")
    async with SqliteBuffer.open(path, read_only=True) as reader:
        assert [(d.seq, d.id) for d in await reader.dead_letters()] == [(None, "x-0")]
        assert (await reader.stats()).dead_letters == 1


async def test_uuid_ids_are_stored_as_bytes_and_text_ids_of_older_files_still_deduplicate(
    tmp_path: Path,
) -> None:
    """An older agent stored every id as text; ids are UUID bytes now. Both are recognised,
    and both come back as the same text."""
    path = tmp_path / "buffer.db"
    old_id, new_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "old")), str(uuid.uuid4())
    async with SqliteBuffer.open(path) as buffer:
        await buffer.append([Record(new_id, "reading", 0, b"new"), Record("plain", "r", 0, b"")])
    with sqlite3.connect(path) as db:  # a row as the older agent wrote it
        db.execute(
            "INSERT INTO events (seq, id, kind, priority, body, accepted_at) VALUES"
            " (3, ?, 'reading', 0, x'00', 1.0)", (old_id,)
        )
        db.execute("UPDATE meta SET value = 3 WHERE key = 'last_seq'")
        stored = dict(db.execute("SELECT seq, typeof(id) FROM events").fetchall())
        as_text = dict(db.execute(f"SELECT seq, {ID_TEXT_SQL} FROM events").fetchall())
    db.close()
    assert stored == {1: "blob", 2: "text", 3: "text"}
    assert as_text == {1: new_id, 2: "plain", 3: old_id}
    async with SqliteBuffer.open(path) as buffer:
        again = [Record(i, "reading", 0, b"") for i in (old_id, new_id, "plain")]
        assert await buffer.append(again) == AppendResult(0, 3, 3)
        assert [(r.seq, r.id) for r in await lease_all(buffer)] == [
            (1, new_id), (2, "plain"), (3, old_id)
        ]


async def test_a_version_2_file_is_migrated_keeping_its_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    db = sqlite3.connect(path, isolation_level=None)
    from buffer.sqlite.schema import MIGRATIONS as _MIGRATIONS

    for version, script in enumerate(_MIGRATIONS[:2], start=1):
        db.executescript(f"BEGIN; {script}; PRAGMA user_version = {version}; COMMIT;")
    db.execute(
        "INSERT INTO dead_letters VALUES (7, 'old', 'reading', 0, x'01', 10.0, 'refused', 11.0)"
    )
    db.execute("UPDATE meta SET value = 7 WHERE key = 'last_seq'")
    db.close()
    async with SqliteBuffer.open(path) as buffer:
        await buffer.set_aside(records("new", 1), "rejected")
        assert [(d.seq, d.id, d.size) for d in await buffer.dead_letters()] == [
            (7, "old", 1), (None, "new-0", 4),
        ]
        assert await buffer.retry_dead_letters([7]) == (1, 0)
        assert [r.seq for r in await lease_all(buffer)] == [7]
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA user_version").fetchone() == (7,)
    check.close()


# --- source state ------------------------------------------------------------------------------


async def test_source_state_commits_with_the_records_and_survives_reopening(
    tmp_path: Path,
) -> None:
    path = tmp_path / "buffer.db"
    clock = FakeClock(now=100.0)
    async with SqliteBuffer.open(path, clock=clock) as buffer:
        await buffer.append(records("a", 2), {"db/cursor": "5", "db/idem/k1": "[1]"})
        # Written even when every record is a duplicate, and on an empty batch; None deletes.
        clock.now = 200.0
        assert (await buffer.append(records("a", 2), {"db/cursor": "7"})).duplicates == 2
        await buffer.append([], {"web/idem/k2": "x", "db/idem/k1": None})
        assert await buffer.source_state("db/") == {"db/cursor": "7"}
    async with SqliteBuffer.open(path, clock=clock) as buffer:
        assert await buffer.source_state("") == {"db/cursor": "7", "web/idem/k2": "x"}
        assert await buffer.source_state("db/c") == {"db/cursor": "7"}
        assert await buffer.source_state("d%") == {}  # a prefix, not a LIKE pattern
        # Only entries under the prefix written before the cut-off go.
        assert await buffer.drop_source_state("web/", older_than=150.0) == 0
        assert await buffer.drop_source_state("web/", older_than=250.0) == 1
        assert await buffer.source_state("") == {"db/cursor": "7"}


async def test_source_state_of_a_failed_append_is_not_written(tmp_path: Path) -> None:
    """The state and the records are one transaction: a batch refused (BufferFull) leaves the
    stored state as it was."""
    capacity = Capacity(max_pending_bytes=10, policies={0: "block"})
    async with SqliteBuffer.open(tmp_path / "buffer.db", capacity=capacity) as buffer:
        await buffer.append(records("a", 1), {"s/cursor": "1"})
        with pytest.raises(BufferFull):
            await buffer.append([Record("big", "reading", 0, b"x" * 64)], {"s/cursor": "2"})
        assert await buffer.source_state("s/") == {"s/cursor": "1"}


async def test_stats_are_exact(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    clock = FakeClock(now=500.0)
    async with SqliteBuffer.open(path, clock=clock) as buffer:
        empty = await buffer.stats()
        assert (empty.pending, empty.pending_by_priority, empty.oldest_pending_at) == (0, {}, None)
        assert (empty.acked_retained, empty.dead_letters, empty.last_seq) == (0, 0, 0)
        await buffer.append(records("p0", 3, priority=0))  # seq 1-3 at 500
        clock.now = 600.0
        await buffer.append(records("p2", 2, priority=2))  # seq 4-5 at 600
        await buffer.ack([1])
        await buffer.dead_letter([2], "poison")
        stats = await buffer.stats()
        assert stats.pending == 3
        assert stats.pending_by_priority == {0: 1, 2: 2}
        assert stats.oldest_pending_at == 500.0  # seq 3
        assert stats.oldest_pending_by_priority == {0: 500.0, 2: 600.0}
        assert (stats.acked_retained, stats.dead_letters, stats.last_seq) == (1, 1, 5)
        wal = path.with_name(path.name + "-wal")
        assert stats.file_bytes == path.stat().st_size + wal.stat().st_size > 0


async def test_retrying_a_dead_letter_with_a_text_id_finds_the_fact_held_as_bytes(
    tmp_path: Path,
) -> None:
    """Dead letters an older agent set aside hold a UUID id as text; the events table now holds
    it as 16 bytes. A retry must see the same fact in both forms: no duplicate goes out."""
    path = tmp_path / "buffer.db"
    held, fresh = str(uuid.uuid4()), str(uuid.uuid4())
    async with SqliteBuffer.open(path) as buffer:
        await buffer.append([Record(held, "reading", 0, b"again")])
    with sqlite3.connect(path) as db:  # as an agent before 16-byte ids left them
        db.executemany(
            "INSERT INTO dead_letters (seq, id, kind, priority, body, accepted_at, reason,"
            " dead_at) VALUES (?, ?, 'reading', 0, ?, 1.0, 'too large', 2.0)",
            [(7, held, b"old"), (8, fresh, b"old")],
        )
    db.close()
    async with SqliteBuffer.open(path) as buffer:
        assert await buffer.retry_dead_letters() == (1, 1)
        assert [(r.seq, r.id) for r in await lease_all(buffer)] == [(1, held), (8, fresh)]
        # Moved back in the stored form: the same fact offered again is a duplicate.
        assert (await buffer.append([Record(fresh, "reading", 0, b"x")])).duplicates == 1
        assert await buffer.dead_letters() == []


async def test_the_identity_history_starts_where_a_rename_does(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    async with SqliteBuffer.open(path) as buffer:
        await buffer.append(records("a", 3))
        # The first identity covers what is already there.
        assert await buffer.note_identity("plant-a", "edge-01") == [(0, "plant-a", "edge-01")]
        assert await buffer.note_identity("plant-a", "edge-01") == [(0, "plant-a", "edge-01")]
        await buffer.append(records("b", 2))
        assert await buffer.note_identity("plant-b", "edge-01") == [
            (0, "plant-a", "edge-01"), (6, "plant-b", "edge-01"),
        ]
        # Renamed again before anything was accepted: the later name replaces it.
        assert await buffer.note_identity("plant-c", "edge-02") == [
            (0, "plant-a", "edge-01"), (6, "plant-c", "edge-02"),
        ]
    async with SqliteBuffer.open(path, read_only=True) as reader:
        assert await reader.identities() == [(0, "plant-a", "edge-01"), (6, "plant-c", "edge-02")]


# --- opening -----------------------------------------------------------------------------------


async def test_open_creates_the_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "state" / "deeper" / "buffer.db"
    async with SqliteBuffer.open(path) as buffer:
        assert buffer.path == path
        await buffer.append(records("a", 1))
        assert path.with_name("buffer.db-wal").exists()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (7,)
    db.close()


async def test_a_file_of_random_bytes_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    path.write_bytes(random.Random(7).randbytes(20_000))
    with pytest.raises(BufferCorrupt, match=str(path)):
        async with SqliteBuffer.open(path):
            pass


async def test_a_damaged_page_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    async with SqliteBuffer.open(path) as buffer:
        await buffer.append(records("a", 2_000))
    assert not path.with_name("buffer.db-wal").exists()  # checkpointed into the main file
    with path.open("r+b") as file:
        file.seek(4096 * 6)
        file.write(random.Random(7).randbytes(4096 * 4))
    with pytest.raises(BufferCorrupt, match=str(path)):
        async with SqliteBuffer.open(path):
            pass


async def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (n INTEGER)")
    db.close()
    with pytest.raises(BufferCorrupt, match="not an edge-agent buffer"):
        async with SqliteBuffer.open(path):
            pass


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    async with SqliteBuffer.open(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(BufferCorrupt, match="schema version 99"):
        async with SqliteBuffer.open(path):
            pass


# --- kill -9 -----------------------------------------------------------------------------------

BATCH = 50
WRITER = f"""
import asyncio, sys
from pathlib import Path
from buffer.base import Record
from buffer.sqlite import SqliteBuffer

async def main(path, run):
    async with SqliteBuffer.open(Path(path)) as buffer:
        batch = 0
        while True:
            records = [
                Record(f"{{run}}-{{batch}}-{{n}}", "reading", n % 3, b"x" * 100)
                for n in range({BATCH})
            ]
            result = await buffer.append(records)
            print(result.last_seq, flush=True)
            batch += 1

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_every_seq_reported_before_a_kill_survives_it(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    rng = random.Random(3)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reported: list[int] = []
    for run in range(3):
        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WRITER, str(path), str(run),
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert writer.stdout is not None
        for _ in range(rng.randint(5, 40)):
            line = await asyncio.wait_for(writer.stdout.readline(), timeout=30)
            assert line, "the writer exited early"
            reported.append(int(line))
        await asyncio.sleep(rng.uniform(0, 0.02))  # land somewhere inside a transaction
        writer.send_signal(signal.SIGKILL)
        reported += [int(line) for line in (await writer.stdout.read()).split()]
        assert await writer.wait() == -signal.SIGKILL

        async with SqliteBuffer.open(path) as buffer:
            stats = await buffer.stats()
            leased = await lease_all(buffer)
        assert stats.last_seq >= max(reported)
        assert stats.last_seq % BATCH == 0  # a batch is all there or not at all
        assert sorted(r.seq for r in leased) == list(range(1, stats.last_seq + 1))
        assert len({r.id for r in leased}) == len(leased)


# --- model-based -------------------------------------------------------------------------------


@dataclass
class ModelRow:
    record: StoredRecord
    acked_at: float | None = None


record_strategy = st.builds(
    Record,
    id=st.sampled_from([f"id{n}" for n in range(15)]),  # a small pool, so duplicates happen
    kind=st.sampled_from(["reading", "state"]),
    priority=st.integers(0, 2),
    body=st.binary(max_size=8),
)


class SqliteBufferMachine(RuleBasedStateMachine):
    """SqliteBuffer against a dict, across appends, leases, acks, purges and reopens."""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.directory = Path(tempfile.mkdtemp(prefix="buffer-model-"))
        self.clock = FakeClock()
        self.files = AsyncExitStack()
        self.rows: dict[int, ModelRow] = {}
        self.last_seq = 0
        self.leased: set[int] = set()
        self.dead_letters = 0
        self.buffer = self._open()

    def _open(self) -> SqliteBuffer:
        return self.runner.run(
            self.files.enter_async_context(
                SqliteBuffer.open(
                    self.directory / "buffer.db", retention_s=RETENTION_S, clock=self.clock
                )
            )
        )

    def teardown(self) -> None:
        try:
            self.runner.run(self.files.aclose())
        finally:
            self.runner.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    @rule(batch=st.lists(record_strategy, max_size=6))
    def append(self, batch: list[Record]) -> None:
        held = {row.record.id for row in self.rows.values()}
        accepted = 0
        for record in batch:
            if record.id in held:
                continue
            held.add(record.id)
            accepted += 1
            self.last_seq += 1
            self.rows[self.last_seq] = ModelRow(
                StoredRecord(
                    self.last_seq,
                    record.id,
                    record.kind,
                    record.priority,
                    record.body,
                    self.clock.now,
                )
            )
        expected = AppendResult(accepted, len(batch) - accepted, self.last_seq)
        assert self.runner.run(self.buffer.append(batch)) == expected

    @rule(limit=st.integers(0, 8))
    def lease(self, limit: int) -> None:
        eligible = [
            row.record
            for seq, row in self.rows.items()
            if row.acked_at is None and seq not in self.leased
        ]
        expected = sorted(eligible, key=lambda r: (-r.priority, r.seq))[:limit]
        self.leased.update(r.seq for r in expected)
        assert self.runner.run(self.buffer.lease(limit)) == expected

    @rule()
    def rewind(self) -> None:
        self.buffer.rewind()
        self.leased.clear()

    def seqs(self) -> st.SearchStrategy[int]:
        """Mostly seqs the buffer holds; sometimes unknown, purged or dead-lettered ones."""
        anything = st.integers(0, self.last_seq + 2)
        return st.one_of(st.sampled_from(sorted(self.rows)), anything) if self.rows else anything

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        seqs = data.draw(st.lists(self.seqs(), max_size=5))
        for seq in seqs:
            row = self.rows.get(seq)
            if row is not None and row.acked_at is None:
                row.acked_at = self.clock.now
        self.runner.run(self.buffer.ack(seqs))

    @rule(data=st.data())
    def dead_letter(self, data: st.DataObject) -> None:
        seqs = data.draw(st.lists(self.seqs(), max_size=3))
        for seq in set(seqs):
            row = self.rows.get(seq)
            if row is not None and row.acked_at is None:
                del self.rows[seq]
                self.dead_letters += 1
        self.runner.run(self.buffer.dead_letter(seqs, "poison"))

    @rule(seconds=st.sampled_from([1.0, 30.0, 99.5, 150.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def purge(self) -> None:
        cutoff = self.clock.now - RETENTION_S
        old = [s for s, r in self.rows.items() if r.acked_at is not None and r.acked_at < cutoff]
        for seq in old:
            del self.rows[seq]
        assert self.runner.run(self.buffer.purge()) == len(old)

    @rule()
    def reopen(self) -> None:
        self.runner.run(self.files.aclose())
        self.leased.clear()
        self.buffer = self._open()

    @invariant()
    def stats_match(self) -> None:
        stats = self.runner.run(self.buffer.stats())
        pending = [row.record for row in self.rows.values() if row.acked_at is None]
        by_priority: dict[int, int] = {}
        for record in pending:
            by_priority[record.priority] = by_priority.get(record.priority, 0) + 1
        assert stats.pending == len(pending)
        assert stats.pending_by_priority == by_priority
        oldest = min(pending, key=lambda r: r.seq, default=None)
        assert stats.oldest_pending_at == (None if oldest is None else oldest.accepted_at)
        assert stats.acked_retained == len(self.rows) - len(pending)
        assert stats.dead_letters == self.dead_letters
        assert stats.last_seq == self.last_seq
        assert stats.file_bytes > 0


SqliteBufferMachine.TestCase.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=None
)
TestSqliteBufferModel = SqliteBufferMachine.TestCase
