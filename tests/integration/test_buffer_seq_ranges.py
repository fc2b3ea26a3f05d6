"""The buffer by seq range, on a real SQLite file: `retained(seqs=...)` (what a replay by seq
range sends) and `holdings` (what it says of the rest: pending, dead letters, gone, never
accepted), checked against each row's own state read straight from the file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buffer.base import Capacity, Record, SeqHoldings
from buffer.sqlite import SqliteBuffer


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def records(prefix: str, count: int, kind: str = "reading", priority: int = 0) -> list[Record]:
    return [Record(f"{prefix}-{n}", kind, priority, bytes(10)) for n in range(count)]


async def test_retained_by_seq_range_reads_only_delivered_records_in_the_range(
    tmp_path: Path,
) -> None:
    async with SqliteBuffer.open(tmp_path / "b.db") as buffer:
        await buffer.append(records("a", 3000))
        await buffer.ack([seq for seq in range(1, 3001) if seq != 1500])
        chunks = [chunk async for chunk in buffer.retained(since=0.0, seqs=(2, 2700))]
        seqs = [record.seq for chunk in chunks for record in chunk]
        assert seqs == [seq for seq in range(2, 2701) if seq != 1500]  # pending 1500 is not sent
        assert len(chunks) > 1  # read in chunks, the range bounding each query
        none = [chunk async for chunk in buffer.retained(since=0.0, seqs=(3001, 4000))]
        assert none == []


async def test_holdings_names_every_seq_of_the_range_once(tmp_path: Path) -> None:
    clock = FakeClock()
    capacity = Capacity(max_pending_bytes=60, policies={0: "evict_oldest"})
    async with SqliteBuffer.open(
        tmp_path / "b.db", clock=clock, capacity=capacity, retention_s=10.0
    ) as buffer:
        await buffer.append(records("a", 6))  # seq 1-6, 10 bytes each
        await buffer.ack([1, 2, 3, 4])
        clock.now += 100  # 1-4 past their retention
        await buffer.purge()
        await buffer.ack([5])  # delivered, retained
        await buffer.dead_letter([6], "too large")
        await buffer.append(records("b", 4))  # seq 7-10 pending: 40 bytes
        result = await buffer.append(records("c", 3))  # seq 11-13: 70 > 60, the oldest goes
        assert [o.seq_ranges for o in result.overflow] == [((7, 7),)]
        holdings = await buffer.holdings(1, 20)
    assert holdings == SeqHoldings(
        first=1,
        last=20,
        retained=((5, 5),),
        pending=((8, 13),),
        dead_letters=((6, 6),),
        gone=((1, 4), (7, 7)),
        not_accepted=((14, 20),),
    )


def state_of_each_seq(path: Path, last: int) -> dict[int, str]:
    """Each seq's state, read row by row from the file: the oracle for `holdings`."""
    with sqlite3.connect(path) as db:
        states = {seq: "gone" for seq in range(1, last + 1)}
        for seq, acked_at in db.execute("SELECT seq, acked_at FROM events"):
            states[seq] = "pending" if acked_at is None else "retained"
        for (seq,) in db.execute("SELECT seq FROM dead_letters WHERE seq IS NOT NULL"):
            states[seq] = "dead_letters"
    db.close()
    return states


def expanded(holdings: SeqHoldings) -> dict[int, str]:
    seqs: dict[int, str] = {}
    for name in ("retained", "pending", "dead_letters", "gone", "not_accepted"):
        for low, high in getattr(holdings, name):
            for seq in range(low, high + 1):
                assert seq not in seqs, f"seq {seq} is {seqs[seq]} and {name}"
                seqs[seq] = name
    return seqs


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 6)),
        st.tuples(st.just("ack"), st.integers(1, 40)),
        st.tuples(st.just("dead_letter"), st.integers(1, 40)),
        st.tuples(st.just("purge"), st.integers(0, 0)),
    ),
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=operations, first=st.integers(1, 45), length=st.integers(0, 45))
def test_holdings_agree_with_the_rows_of_the_file(
    tmp_path: Path, operations: list[tuple[str, int]], first: int, length: int
) -> None:
    async def run() -> None:
        path = tmp_path / f"b-{first}-{length}-{len(operations)}.db"
        path.unlink(missing_ok=True)
        clock = FakeClock()
        async with SqliteBuffer.open(path, clock=clock, retention_s=5.0) as buffer:
            for number, (operation, value) in enumerate(operations):
                if operation == "append":
                    await buffer.append(records(f"r{number}", value))
                elif operation == "ack":
                    await buffer.ack([value])
                elif operation == "dead_letter":
                    await buffer.dead_letter([value], "test")
                else:
                    clock.now += 10
                    await buffer.purge()
            holdings = await buffer.holdings(first, first + length)
            last_seq = buffer.last_seq
        states = state_of_each_seq(path, last_seq)
        wanted = {
            seq: states.get(seq, "not_accepted") for seq in range(first, first + length + 1)
        }
        assert expanded(holdings) == wanted

    asyncio.run(run())
