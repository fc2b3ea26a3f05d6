"""Text for a terminal, shared by the hub tools (`remote`, `fleet`): aligned tables and ages.

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


def ago(moment: str | None, now: float | None = None) -> str:
    """`42 s ago` for an ISO 8601 time; `-` for none; the text itself if it is not a time."""
    if not moment:
        return "-"
    try:
        at = datetime.fromisoformat(moment)
    except ValueError:
        return moment
    seconds = (now if now is not None else time.time()) - at.timestamp()
    return f"{max(seconds, 0):.0f} s ago"
