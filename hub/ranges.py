"""Inclusive seq ranges ``(first, last)``: runs of seqs, merging, complements. Pure code.

Every function returns ranges sorted ascending, not overlapping and not adjacent
(``(1, 3), (5, 9)``, never ``(1, 3), (4, 9)``); inputs may come in any order.
"""

from __future__ import annotations

from collections.abc import Iterable

Range = tuple[int, int]

__all__ = ["Range", "complement", "merged", "runs", "split"]


def runs(seqs: Iterable[int]) -> list[Range]:
    """The runs of consecutive seqs: ``[1, 2, 3, 7]`` -> ``[(1, 3), (7, 7)]``."""
    result: list[Range] = []
    for seq in sorted(set(seqs)):
        if result and seq == result[-1][1] + 1:
            result[-1] = (result[-1][0], seq)
        else:
            result.append((seq, seq))
    return result


def merged(ranges: Iterable[Range]) -> list[Range]:
    """Ranges, overlapping or adjacent, joined."""
    result: list[Range] = []
    for first, last in sorted(ranges):
        if result and first <= result[-1][1] + 1:
            result[-1] = (result[-1][0], max(last, result[-1][1]))
        else:
            result.append((first, last))
    return result


def complement(held: Iterable[Range], first: int, last: int) -> list[Range]:
    """The seqs of ``first``..``last`` in none of ``held`` (overlaps allowed)."""
    missing: list[Range] = []
    cursor = first
    for low, high in merged(held):
        if high < cursor:
            continue
        if low > last:
            break
        if low > cursor:
            missing.append((cursor, low - 1))
        cursor = max(cursor, high + 1)
    if cursor <= last:
        missing.append((cursor, last))
    return missing


def split(span: Range, size: int) -> list[Range]:
    """``span`` cut into consecutive parts of at most ``size`` seqs."""
    first, last = span
    return [(low, min(low + size - 1, last)) for low in range(first, last + 1, size)]
