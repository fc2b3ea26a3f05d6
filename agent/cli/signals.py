"""Per-signal diagnostics as text: the rows `edge-agent status`, `remote status` and
`opcua watch` print (documents made by `agent.flow.signal_values.LastValues.document`).

Pure functions of their arguments, like `agent.cli.tables`.
"""

from __future__ import annotations

from typing import Any

from agent.cli.tables import table

HEADER = ["SIGNAL", "ADDRESS", "VALUE", "QUALITY", "SOURCE TIME", "CHANGES", "PROBLEM"]


def show(value: object) -> str:
    """A value as an operator reads it: text as is, numbers and booleans as Python writes
    them, none as `-`."""
    if value is None:
        return "-"
    return str(value)


def signal_row(address: str, entry: dict[str, Any]) -> list[str]:
    """One row of `HEADER` for a signal's diagnostics."""
    problem = entry.get("error")
    return [
        str(entry.get("name") or "-"),
        address,
        show(entry.get("value")),
        str(entry.get("quality") or "-"),
        str(entry.get("source_timestamp") or "-"),
        str(entry.get("changes", 0)),
        str(problem) if problem else "-",
    ]


def signals_table(signals: dict[str, dict[str, Any]], not_listed: int = 0) -> str:
    """The signals of one source as an aligned table ('' for none), with a line for the ones
    left out."""
    if not signals and not not_listed:
        return ""
    rows = [HEADER] + [signal_row(address, entry) for address, entry in signals.items()]
    text = table(rows) if signals else ""
    if not_listed:
        text += (
            f"\n({not_listed} more signal(s) not listed)"
            if text
            else (f"({not_listed} signal(s) not listed)")
        )
    return text


def indented(text: str, prefix: str) -> list[str]:
    """`text`'s lines, each after `prefix` (none for an empty text)."""
    return [prefix + line for line in text.splitlines()] if text else []
