"""The acked seqs, held in memory as disjoint runs: what leasing, eviction and acks skip.

From schema version 7 an ack writes no row of `log`: it inserts seq ranges into `acks`
(package docstring). `AckedRanges` is the union of those ranges, merged (adjacent runs join
whatever their `acked_at`), so a row is pending exactly when its seq is in `log` and not here.
It is derived data: built from `acks` at open and after any transaction that did not finish
cleanly (`SqliteBufferCore._refresh_counts`), and changed only after the transaction that
changed `acks` committed, so it never holds a range the file does not (an ack never inserts a
range that overlaps one already there: the ack subtracts these runs first).

`next_gap` is what keeps a scan off acked rows: from any position it names the next run of
seqs that are not acked and where the acked run after it ends, so a scan of one priority's
rows queries only the gaps (an index seek each) and never reads an acked row.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable


class AckedRanges:
    """Disjoint, non-adjacent, sorted runs of acked seqs (see the module docstring)."""

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        for first, last in sorted(ranges):
            self.add(first, last)

    def __len__(self) -> int:
        """How many runs (not seqs)."""
        return len(self._firsts)

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        index = bisect_right(self._firsts, seq) - 1
        return index >= 0 and self._lasts[index] >= seq

    def runs(self) -> list[tuple[int, int]]:
        return list(zip(self._firsts, self._lasts, strict=True))

    def add(self, first: int, last: int) -> None:
        """Mark `first`..`last` acked, joining the runs it overlaps or touches."""
        low = bisect_left(self._lasts, first - 1)  # the first run ending at first - 1 or later
        high = bisect_right(self._firsts, last + 1)  # runs starting at last + 1 or earlier
        if low < high:
            first = min(first, self._firsts[low])
            last = max(last, self._lasts[high - 1])
        self._firsts[low:high] = [first]
        self._lasts[low:high] = [last]

    def remove(self, first: int, last: int) -> None:
        """Forget `first`..`last` (its rows were deleted: purged, or dropped for room)."""
        low = bisect_left(self._lasts, first)  # the first run ending at `first` or later
        high = bisect_right(self._firsts, last)  # runs starting at `last` or earlier
        if low >= high:
            return
        kept: list[tuple[int, int]] = []
        if self._firsts[low] < first:
            kept.append((self._firsts[low], first - 1))
        if self._lasts[high - 1] > last:
            kept.append((last + 1, self._lasts[high - 1]))
        self._firsts[low:high] = [run[0] for run in kept]
        self._lasts[low:high] = [run[1] for run in kept]

    def next_gap(self, after: int) -> tuple[int, int | None, int | None]:
        """The first run of seqs above `after` that are not acked: (its first seq, its last or
        None when it is unbounded, the last seq of the acked run right after it or None)."""
        start = after + 1
        index = bisect_right(self._firsts, start) - 1
        if index >= 0 and self._lasts[index] >= start:
            start = self._lasts[index] + 1
        index += 1  # runs are not adjacent: this one starts above `start`
        if index < len(self._firsts):
            return start, self._firsts[index] - 1, self._lasts[index]
        return start, None, None

    def not_acked(self, first: int, last: int) -> list[tuple[int, int]]:
        """The parts of `first`..`last` that are not acked, in order."""
        parts: list[tuple[int, int]] = []
        after = first - 1
        while after < last:  # bounded: each turn passes one acked run
            start, end, acked_to = self.next_gap(after)
            if start > last:
                break
            parts.append((start, last if end is None else min(end, last)))
            if end is None or acked_to is None:
                break
            after = acked_to
        return parts
