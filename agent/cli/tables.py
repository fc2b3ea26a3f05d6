"""Text for a terminal, shared by the CLI's commands (`remote`, `fleet`, `status`): aligned
tables and ages.

Pure functions of their arguments (the clock is a parameter where it matters), so tests can
render an answer without a broker.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any


def table(rows: list[list[str]]) -> str:
    """The rows as columns padded to their widest cell, two spaces apart, no trailing blanks."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def age_text(seconds: Any) -> str:
    """`12 s` for a number of seconds, `-` for anything else (None: no such age)."""
    return f"{seconds:.0f} s" if isinstance(seconds, int | float) else "-"


RECENT_S = 3600.0  # younger than this: how long ago; older: the moment itself
SKEW_S = 60.0  # a moment up to this far ahead (the other clock is fast) still reads as now


def ago(moment: object, now: float | None = None, *, unknown: str = "-") -> str:
    """When `moment` (an ISO 8601 time) was, for an operator: `42 s ago` within the last hour;
    `at 2026-12-03T15:23:49+00:00` (the text as written, to match against a journal) for an
    older one, one further ahead than a skewed clock explains, or text that is not a time;
    `unknown` for none (None, an empty or non-text value)."""
    if not isinstance(moment, str) or not moment:
        return unknown
    try:
        at = datetime.fromisoformat(moment)
    except ValueError:
        return f"at {moment}"
    seconds = (now if now is not None else time.time()) - at.timestamp()
    if -SKEW_S < seconds < RECENT_S:
        return f"{max(seconds, 0):.0f} s ago"
    return f"at {moment}"
