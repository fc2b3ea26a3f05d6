"""SQL building blocks every part of the buffer uses, and how sqlite3's errors are classified.

- Statements stay within `PARAMS_PER_STATEMENT` host parameters (SQLite's own limit is 999 on
  old builds): `chunks` cuts a list of seqs, `seq_conditions` turns seqs into `BETWEEN` runs
  and one `IN` list, `placeholders` writes the `?, ?, ...`.
- `classified` turns a sqlite3 error into what the caller must do (`buffer.base`):
  `BufferCorrupt` (stop, the file needs a person), `BufferUnavailable` (retry; `DiskFull` is
  the one the buffer answers itself, by making room), and leaves a bug (an SQL or constraint
  error) as it is.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from buffer.base import BufferCorrupt, BufferUnavailable

# Bound on host parameters per statement (SQLite's own limit is 999 on old builds).
PARAMS_PER_STATEMENT: Final = 500

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


class DiskFull(BufferUnavailable):
    """SQLITE_FULL: the disk (or max_page_count) has no room for this transaction."""


@contextmanager
def classified(path: Path, operation: str) -> Iterator[None]:
    """Wrap sqlite3 errors by what the caller must do; leave bugs (SQL, constraints) as they are."""
    try:
        yield
    except sqlite3.Error as error:
        code = getattr(error, "sqlite_errorcode", -1) & 0xFF
        if code in _CORRUPT_CODES:
            raise BufferCorrupt(f"{path}: {operation}: {error}") from error
        if code == sqlite3.SQLITE_FULL:
            raise DiskFull(f"{path}: {operation}: {error}") from error
        if code in _UNAVAILABLE_CODES:
            raise BufferUnavailable(f"{path}: {operation}: {error}") from error
        raise


def seq_ranges(seqs: Sequence[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if ranges and ranges[-1][1] == seq - 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


def seq_conditions(seqs: Sequence[int]) -> Iterator[tuple[str, tuple[int, ...]]]:
    """SQL conditions that match exactly these seqs, as (where, params), each within the
    parameter bound: runs of consecutive seqs as `seq BETWEEN`, lone seqs in one `seq IN`."""
    return range_conditions(seq_ranges(sorted(set(seqs))))


def range_conditions(
    ranges: Sequence[tuple[int, int]],
) -> Iterator[tuple[str, tuple[int, ...]]]:
    """`seq_conditions` of sorted, disjoint (first, last) runs."""
    for start in range(0, len(ranges), PARAMS_PER_STATEMENT // 2):
        part = ranges[start : start + PARAMS_PER_STATEMENT // 2]
        lone = [first for first, last in part if first == last]
        runs = [(first, last) for first, last in part if first != last]
        terms = ["seq BETWEEN ? AND ?"] * len(runs)
        params = [seq for run in runs for seq in run]
        if lone:
            terms.append(f"seq IN ({placeholders(len(lone))})")
            params += lone
        yield " OR ".join(terms), tuple(params)


def one(rows: Any) -> tuple[Any, ...]:
    """The single row of a result."""
    (row,) = rows
    return tuple(row)


def chunks(values: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), PARAMS_PER_STATEMENT):
        yield values[start : start + PARAMS_PER_STATEMENT]


def placeholders(count: int) -> str:
    return ", ".join("?" * count)
