"""Reading one MES file into records: pure code, no I/O beyond reading the file it is given.

A file is identified by the SHA-256 of its content; a record by that digest and its line
number (`record_key`), so the same file read again (after a crash) yields the same keys and
the same event ids downstream.

Streaming, in two passes over the open file, each holding a bounded amount of it in memory
whatever its size: `check_file` reads it whole once (digest; every byte decodes, every CSV row
tokenises, the header has the columns) so that a file that cannot be read at all raises
`FileUnreadable` before any of its rows is sent; `read_chunks` reads it again from the start
and yields its records in `Chunk`s of at most `rows_per_emit` rows. A JSON document (an array
of objects) cannot be streamed: it is parsed whole, so it is bounded by `max_json_bytes`.

A row that cannot be read (a required cell empty, a number or time that does not parse) is a
`RowReject` with its line number and reason; the other rows are unaffected. A reason names
the line, the column and what was expected, and never quotes the file's content (a file may
hold anything: reasons go to logs and reports).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, BinaryIO

from connectors.base import Value
from connectors.mes_files.config import MesFilesSettings
from connectors.records import RowError, blank, lookup, read_record

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

_READ_BYTES = 2**20  # what one read takes from the file


class FileUnreadable(ValueError):
    """The whole file cannot be read as configured; the message says why (never quoting it)."""


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
    column: str | None = None  # the column at fault, when one is
    # The row's cells by column (None: it has none, e.g. a CSV row with too few cells): what
    # its `record.rejected` event reads business keys from and copies, redacted.
    cells: Mapping[str, object] | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """The next rows of a file, in line order: at most `rows_per_emit` records, and the
    rejects among the same lines."""

    records: list[Record]
    rejects: list[RowReject]


@dataclass(frozen=True, slots=True)
class ParsedFile:
    digest: str  # SHA-256 of the content, hex
    records: list[Record]
    rejects: list[RowReject]


def record_key(digest: str, line: int) -> str:
    """The fact a record stands for: this file content, this line."""
    return f"{digest}:{line}"


def parse_file(data: bytes, settings: MesFilesSettings, modified_at: datetime) -> ParsedFile:
    """A whole file's content at once (small inputs, tests): both passes over `data`."""
    file = io.BytesIO(data)
    digest = check_file(file, settings)
    records: list[Record] = []
    rejects: list[RowReject] = []
    for chunk in read_chunks(file, settings, modified_at):
        records.extend(chunk.records)
        rejects.extend(chunk.rejects)
    return ParsedFile(digest, records, rejects)


def check_file(file: BinaryIO, settings: MesFilesSettings) -> str:
    """The first pass, from the start: the content's SHA-256 (hex), or `FileUnreadable`."""
    reader = _HashingReader(file)
    if settings.format == "json":
        _json_items(reader, settings)
    else:
        with _text(reader, settings) as text:
            _, rows = _csv_rows(text, settings)
            for _ in rows:
                pass
    reader.drain()
    return reader.hash.hexdigest()


def read_chunks(
    file: BinaryIO, settings: MesFilesSettings, modified_at: datetime
) -> Generator[Chunk, None, None]:
    """The second pass, from the start. `modified_at`: the file's mtime, the time of its rows
    when there is no time column. `FileUnreadable` only if the file changed since
    `check_file`."""
    reader = _HashingReader(file)
    if settings.format == "json":
        yield from _chunks(_json_rows(_json_items(reader, settings)), settings, modified_at)
        return
    with _text(reader, settings) as text:
        header, rows = _csv_rows(text, settings)
        yield from _chunks(_csv_cells(header, rows, settings), settings, modified_at)


# A row as the two formats give it: its line, its cells by column (or why it has none), raw.
_Row = tuple[int, Mapping[str, object] | str, str]


def _chunks(rows: Iterator[_Row], settings: MesFilesSettings, at: datetime) -> Iterator[Chunk]:
    step = settings.rows_per_emit
    records: list[Record] = []
    rejects: list[RowReject] = []
    for line, row, raw in rows:
        if isinstance(row, str):
            rejects.append(RowReject(line, row, raw))
        else:
            try:
                record = read_record(row, settings, received_at=at)
            except RowError as error:
                reason = _reason(error, row, settings)
                rejects.append(RowReject(line, reason, raw, error.column, row))
            else:
                records.append(Record(line, record.timestamp, record.fields))
        if len(records) >= step or len(rejects) >= step:
            yield Chunk(records, rejects)
            records, rejects = [], []
    if records or rejects:
        yield Chunk(records, rejects)


def _reason(error: RowError, row: Mapping[str, object], settings: MesFilesSettings) -> str:
    """Why a row is refused, from the column and what it expects: never the cell itself."""
    column = error.column
    is_time = column == settings.time_column
    name = f"{'time column' if is_time else 'column'} {column!r}"
    if blank(lookup(row, column)):
        return f"{name} is empty"
    if is_time:
        return f"{name}: expected {_a_time(settings.time_format)}"
    for spec in settings.columns.values():
        if spec.column == column:
            expected = {
                "str": "text", "int": "a whole number", "float": "a finite number",
                "time": _a_time(spec.format or settings.time_format),
                "date": "a date" + ("" if (spec.format or "iso") == "iso"
                                    else f" in {spec.format!r}"),
                "bool": "a yes/no value",
            }[spec.type]
            return f"{name}: expected {expected}"
    return f"{name}: {type(error).__name__}"  # not a configured column: cannot happen


def _a_time(fmt: str) -> str:
    return "an ISO 8601 time" if fmt == "iso" else f"a time in {fmt!r}"


# -- CSV ------------------------------------------------------------------------------------


def _text(reader: _HashingReader, settings: MesFilesSettings) -> io.TextIOWrapper:
    buffered = io.BufferedReader(reader, _READ_BYTES)
    return io.TextIOWrapper(buffered, encoding=settings.encoding, newline="")


def _csv_rows(
    text: io.TextIOWrapper, settings: MesFilesSettings
) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header (checked against the columns; on line `header_line`, the lines before it
    skipped) and an iterator of (line, cells) after it, blank lines left out."""
    reader = csv.reader(text, delimiter=settings.delimiter)
    at = settings.header_line
    try:
        for _ in range(at - 1):
            next(reader)
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise FileUnreadable(f"no header row (expected on line {at})") from None
    except csv.Error as error:
        raise FileUnreadable(f"line {reader.line_num or 1}: {error}") from error
    except UnicodeDecodeError as error:
        raise FileUnreadable(
            f"line {reader.line_num + 1}: not {settings.encoding} text ({error.reason})"
        ) from None
    missing = [name for name in settings.column_names() if name not in header]
    if missing:
        raise FileUnreadable(
            f"column(s) {', '.join(map(repr, missing))} not in the header "
            f"(line {reader.line_num}, {len(header)} column(s))"
        )

    def rows() -> Iterator[tuple[int, list[str]]]:
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise FileUnreadable(f"line {reader.line_num}: {error}") from error
            except UnicodeDecodeError as error:
                raise FileUnreadable(
                    f"not {settings.encoding} text ({error.reason}) after line {reader.line_num}"
                ) from None
            if any(cell.strip() for cell in cells):  # else a blank line
                yield reader.line_num, cells

    return header, rows()


def _csv_cells(
    header: list[str], rows: Iterator[tuple[int, list[str]]], settings: MesFilesSettings
) -> Iterator[_Row]:
    for line, cells in rows:
        raw = settings.delimiter.join(cells)
        if len(cells) != len(header):
            yield line, f"{len(cells)} cells, header has {len(header)}", raw
        else:
            yield line, dict(zip(header, cells, strict=True)), raw


# -- JSON -----------------------------------------------------------------------------------


def _json_items(reader: _HashingReader, settings: MesFilesSettings) -> list[object]:
    limit = settings.max_json_bytes
    data = reader.read_at_most(limit + 1)
    if len(data) > limit:
        raise FileUnreadable(
            f"above max_json_bytes = {limit}: a JSON document is parsed whole, in memory "
            "(export larger batches as CSV, which is read row by row)"
        )
    try:
        text = data.decode(settings.encoding)
    except UnicodeDecodeError as error:
        raise FileUnreadable(
            f"not {settings.encoding} text ({error.reason}) at byte {error.start}"
        ) from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        raise FileUnreadable(
            f"not JSON: {error.msg} at line {error.lineno} column {error.colno}"
        ) from None
    if not isinstance(items, list):
        raise FileUnreadable("expected a JSON array of objects")
    return items


def _json_rows(items: list[object]) -> Iterator[_Row]:
    for number, item in enumerate(items, start=1):
        raw = json.dumps(item, ensure_ascii=False)
        if isinstance(item, dict):
            yield number, item, raw
        else:
            yield number, "item is not an object", raw


class _HashingReader(io.RawIOBase):
    """Reads `file` from its start, hashing what passes; closing it leaves `file` open."""

    def __init__(self, file: BinaryIO) -> None:
        super().__init__()
        file.seek(0)
        self._file = file
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self._file.read(len(view))
        view[: len(data)] = data
        self.hash.update(data)
        return len(data)

    def read_at_most(self, size: int) -> bytes:
        """Up to `size` bytes (fewer only at the end of the file)."""
        parts: list[bytes] = []
        wanted = size
        while wanted > 0:  # bounded: each round reads at least one byte or ends
            data = self._file.read(min(wanted, _READ_BYTES))
            if not data:
                break
            self.hash.update(data)
            parts.append(data)
            wanted -= len(data)
        return b"".join(parts)

    def drain(self) -> None:
        """Hash the rest of the file (what the format's reader left unread)."""
        while data := self._file.read(_READ_BYTES):  # bounded by the file's size
            self.hash.update(data)
