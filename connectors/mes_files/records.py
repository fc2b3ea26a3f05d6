"""Reading one MES file into records: pure code, no I/O beyond the bytes it is given.

A file is identified by the SHA-256 of its content; a record by that digest and its line
number (`record_key`), so the same file read again (after a crash) yields the same keys and
the same event ids downstream. A row that cannot be read (a required cell empty, a number or
time that does not parse) is a `RowReject` with its line number and reason; the other rows
are unaffected. A file that cannot be read at all (not valid text, a missing column, JSON that
is not an array of objects) raises `FileUnreadable`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime

from connectors.base import Value
from connectors.mes_files.config import MesFilesSettings
from connectors.records import RowError, read_record


class FileUnreadable(ValueError):
    """The whole file cannot be read as configured; the message says why."""


@dataclass(frozen=True, slots=True)
class Record:
    line: int  # CSV: the physical line the row ends on (header = 1); JSON: 1-based item number
    timestamp: datetime  # UTC
    fields: tuple[tuple[str, Value], ...]  # event field -> value, in config order


@dataclass(frozen=True, slots=True)
class RowReject:
    line: int
    reason: str
    raw: str  # the row as read (CSV: its cells joined by the delimiter; JSON: the item)


@dataclass(frozen=True, slots=True)
class ParsedFile:
    digest: str  # SHA-256 of the content, hex
    records: list[Record]
    rejects: list[RowReject]


def record_key(digest: str, line: int) -> str:
    """The fact a record stands for: this file content, this line."""
    return f"{digest}:{line}"


def parse_file(data: bytes, settings: MesFilesSettings, modified_at: datetime) -> ParsedFile:
    """`modified_at`: the file's mtime, the time of its rows when there is no time column."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode(settings.encoding)
    except UnicodeDecodeError as error:
        raise FileUnreadable(f"not {settings.encoding} text: {error}") from error
    rows = _csv_rows(text, settings) if settings.format == "csv" else _json_rows(text)
    records: list[Record] = []
    rejects: list[RowReject] = []
    for line, row, raw in rows:
        try:
            if "\x00" in row:
                raise RowError(str(row["\x00"]), "row")
            record = read_record(row, settings, received_at=modified_at)
        except RowError as error:
            rejects.append(RowReject(line, str(error), raw))
        else:
            records.append(Record(line, record.timestamp, record.fields))
    return ParsedFile(digest, records, rejects)


def _csv_rows(
    text: str, settings: MesFilesSettings
) -> list[tuple[int, dict[str, object], str]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=settings.delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise FileUnreadable("empty file: no header row") from None
    except csv.Error as error:
        raise FileUnreadable(f"line 1: {error}") from error
    header = [name.strip() for name in header]
    missing = [name for name in settings.column_names() if name not in header]
    if missing:
        raise FileUnreadable(
            f"column(s) {', '.join(map(repr, missing))} not in the header "
            f"({', '.join(map(repr, header))})"
        )
    rows: list[tuple[int, dict[str, object], str]] = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise FileUnreadable(f"line {reader.line_num}: {error}") from error
        if not any(cell.strip() for cell in cells):
            continue  # blank line
        raw = settings.delimiter.join(cells)
        if len(cells) != len(header):
            row: dict[str, object] = {"\x00": f"{len(cells)} cells, header has {len(header)}"}
        else:
            row = dict(zip(header, cells, strict=True))
        rows.append((reader.line_num, row, raw))
    return rows


def _json_rows(text: str) -> list[tuple[int, dict[str, object], str]]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise FileUnreadable(f"not JSON: {error}") from error
    if not isinstance(items, list):
        raise FileUnreadable("expected a JSON array of objects")
    rows: list[tuple[int, dict[str, object], str]] = []
    for number, item in enumerate(items, start=1):
        raw = json.dumps(item, ensure_ascii=False)
        row = item if isinstance(item, dict) else {"\x00": "item is not an object"}
        rows.append((number, row, raw))
    return rows
