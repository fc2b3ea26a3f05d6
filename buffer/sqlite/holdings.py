"""What the buffer file holds of a seq range (`Buffer.holdings`): the answer a replay by seq
range gives for what it could not send.

Every seq from 1 to `last_seq` was given to exactly one accepted record (package docstring,
invariant 1), and that record is now in exactly one place: a row of `log` (pending unless an
`acks` run covers it, else delivered and retained; read through the `events` view, whose
`acked_at` says which), a row of `dead_letters` (with its `seq`), or nowhere (purged after
delivery, or evicted for room). So the range splits into five kinds without a gap or an
overlap; the SQL reads only the rows in the range (both tables are keyed by seq, and each
row's `acked_at` is one seek in `acks`) and returns runs, not rows (gaps and islands:
`seq - row_number()` is constant along a run of consecutive seqs), so a range of a million
seqs costs a few runs' worth of Python.
"""

from __future__ import annotations

from collections.abc import Iterable

import aiosqlite

from buffer.base import SeqHoldings, SeqRanges

_EVENT_RUNS = """
SELECT min(seq), max(seq), pending FROM (
    SELECT seq, acked_at IS NULL AS pending,
           seq - row_number() OVER (PARTITION BY acked_at IS NULL ORDER BY seq) AS run
    FROM events WHERE seq BETWEEN ? AND ?
) GROUP BY pending, run ORDER BY 1
"""
_DEAD_LETTER_RUNS = """
SELECT min(seq), max(seq) FROM (
    SELECT seq, seq - row_number() OVER (ORDER BY seq) AS run
    FROM dead_letters WHERE seq BETWEEN ? AND ?
) GROUP BY run ORDER BY 1
"""


async def read_holdings(
    db: aiosqlite.Connection, first: int, last: int, last_seq: int
) -> SeqHoldings:
    """`SeqHoldings` of `first`..`last` (inside a read transaction of the caller's)."""
    if not 1 <= first <= last:
        raise ValueError(f"need 1 <= first <= last, got {first}..{last}")
    retained: list[tuple[int, int]] = []
    pending: list[tuple[int, int]] = []
    for low, high, is_pending in await db.execute_fetchall(_EVENT_RUNS, (first, last)):
        (pending if is_pending else retained).append((int(low), int(high)))
    dead = [
        (int(low), int(high))
        for low, high in await db.execute_fetchall(_DEAD_LETTER_RUNS, (first, last))
    ]
    not_accepted = ((max(first, last_seq + 1), last),) if last > last_seq else ()
    held = sorted([*retained, *pending, *dead, *not_accepted])
    return SeqHoldings(
        first=first,
        last=last,
        retained=_merged(retained),
        pending=_merged(pending),
        dead_letters=_merged(dead),
        gone=_complement(held, first, min(last, last_seq)),
        not_accepted=not_accepted,
    )


def _merged(ranges: Iterable[tuple[int, int]]) -> SeqRanges:
    """Adjacent runs joined (a run of one kind may be split where `row_number` restarts)."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return tuple(merged)


def _complement(held: list[tuple[int, int]], first: int, last: int) -> SeqRanges:
    """The seqs of `first`..`last` in none of `held` (sorted, not overlapping)."""
    gone: list[tuple[int, int]] = []
    cursor = first
    for low, high in held:
        if low > cursor and cursor <= last:
            gone.append((cursor, min(low - 1, last)))
        cursor = max(cursor, high + 1)
    if cursor <= last:
        gone.append((cursor, last))
    return tuple(gone)
