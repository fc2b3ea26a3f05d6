"""MES records: one row of a file, one object of a webhook payload, one row of an interface
table, read into the fields of one business event. Shared by the three MES connectors.

The source's `columns` say which column (CSV header, JSON key or dotted path, SQL column)
feeds which event field, or which constant fills it (`value`), with its type; a quantity's
column names its `unit`, which fills the event's `unit` field. The time of the record comes
from `time_column` (a time text in `time_format`, or a native date-time from a database),
read in `time_zone` when it has no offset; without a `time_column` it is when the agent read
the record.

Pure code: a row (a mapping of column to value) in, a `Record` out, or `RowError` saying
which column was wrong and why. The event model itself (`events.models`) validates the fields
afterwards; this module only reads and types them.

    [sources.columns]                          # event field = where it comes from
    order = { column = "WO" }
    good = { column = "GOOD_QTY", type = "float", unit = "kg" }
    reason = { value = "MES-CORRECTION" }      # a constant
    started_at = { column = "START", type = "time", format = "%d.%m.%Y %H:%M" }
    posting_date = { column = "BUDAT", type = "date", format = "%d.%m.%Y" }
    final = { column = "FINAL", type = "bool" }  # true/false, yes/no, 1/0, X (SAP) / blank

Column types: `str`, `int`, `float`, `time` (a date-time, to UTC), `date` (a calendar date as
the plant writes it, kept as YYYY-MM-DD: no time zone applies), `bool` (true/false, yes/no,
1/0, `X`; an empty text cell is false, as SAP writes a flag: "X" or blank). A spreadsheet export
that writes numbers with a decimal comma (`1.180,5`) sets `decimal = ","`: in number cells a
`,` is the decimal mark and `.`, spaces and no-break spaces group thousands.

`correlate_by` names the event field that says which business object a record belongs to
(its `correlationid`); each event type has its own default (`config.correlation`).

A record that cannot be taken becomes a `record.rejected` event (issue 16); for it, this
module reads what it still can (`readable_keys`: the business keys, each cell on its own, a
bad one left out) and makes its raw copy (`raw_copy`): JSON of the record's fields, every
field named in `secret_columns` or with a secret-looking name (password, token, secret,
authorization, api key, ...) and every token-looking value (a bearer token, a JWT) replaced by
`[redacted]`, cut at `RAW_COPY_MAX_CHARS` characters.

`lookups` and `unknown_units`: master data and units on records, as for signals (applied by
`agent.flow.mapping`: codes looked up, a Rec 20 unit read as UCUM, quantities converted to the
`[units]` unit of their kind).

`business_key` names the event fields that identify one business fact across re-sends (a
work order's confirmation: order, operation, confirmation number): a record with the same key
and other content corrects the earlier one (`agent.flow.corrections`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connectors.base import Value

FieldName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
UNIT_FIELD = "unit"


class RowError(ValueError):
    """One record cannot be read; the message names the column and what was wrong."""

    def __init__(self, message: str, column: str) -> None:
        super().__init__(message)
        self.column = column


class FieldSettings(BaseModel):
    """Where one event field comes from: a `column`, or a constant `value`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    value: str | int | float | None = None
    type: Literal["str", "int", "float", "time", "date", "bool"] = "str"
    required: bool = True
    unit: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    format: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    time_zone: str | None = None

    @model_validator(mode="after")
    def _one_origin(self) -> Self:
        if (self.column is None) == (self.value is None):
            raise ValueError("give either column (where it comes from) or value (a constant)")
        if (self.type not in ("time", "date") and self.format) or (
            self.type != "time" and self.time_zone
        ):
            raise ValueError(
                "format and time_zone are for type = \"time\" (format also for \"date\")"
            )
        if self.time_zone is not None:
            _zone(self.time_zone)
        return self


class RecordSettings(BaseModel):
    """The record part of an MES source's settings (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time_column: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    time_format: Annotated[str, Field(min_length=1, max_length=64)] = "iso"
    time_zone: str = "UTC"
    # The decimal mark of number cells written as text: "." (1180.5) or "," (1.180,5, as
    # spreadsheets in much of Europe export them; `.` and spaces then group thousands).
    decimal: Literal[".", ","] = "."
    columns: Annotated[dict[FieldName, FieldSettings], Field(min_length=1)]
    # The event field whose value ties the event to its business object (`correlationid`
    # `<field>:<value>`, e.g. `order:WO-1`); None: the event type's own (`config.correlation`);
    # "none": no correlationid. Checked against the event type's fields where the source's
    # event is known (`config.schema`).
    correlate_by: FieldName | None = None
    # Columns (or event fields) whose values never leave the plant in a rejected record's
    # raw copy (`raw_copy`); secret-looking names are redacted without being listed.
    secret_columns: Annotated[
        tuple[Annotated[str, Field(min_length=1, max_length=200)], ...], Field(max_length=100)
    ] = ()
    # The fields (of `columns`) that name one business fact, e.g. order + operation +
    # confirmation: a later record with the same values and other content is a correction of
    # it (its event `supersedes` the earlier one, `agent.flow.corrections`). Empty: none.
    business_key: Annotated[tuple[FieldName, ...], Field(max_length=8)] = ()
    # Master data on records: event field -> the `[lookups.NAME]` table its code is looked up
    # in (`material = "materials"`), as for a signal's `lookup`; the table's `unmapped` policy
    # applies. Checked against `[lookups]` by `config.schema`.
    lookups: dict[FieldName, Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]] = {}
    # A record's `unit` in neither UCUM nor UN/ECE Rec 20 (`config.units.ucum_code`): "pass"
    # it on as given (flagged in the event's `unmapped` as `unit:<code>`) or "reject" the
    # record (`record.rejected`); counted per source either way.
    unknown_units: Literal["pass", "reject"] = "pass"

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        _zone(name)
        return name

    @model_validator(mode="after")
    def _key_of_columns(self) -> Self:
        unknown = [name for name in self.business_key if name not in self.columns]
        if unknown:
            raise ValueError(
                f"business_key names {', '.join(map(repr, unknown))}, not in columns; it is "
                f"made of event fields the record fills: {', '.join(self.columns)}"
            )
        if len(set(self.business_key)) != len(self.business_key):
            raise ValueError("business_key names a field twice")
        unknown = [name for name in self.lookups if name not in self.columns]
        if unknown:
            raise ValueError(
                f"lookups name {', '.join(map(repr, unknown))}, not in columns; a lookup "
                f"translates an event field the record fills: {', '.join(self.columns)}"
            )
        return self

    @model_validator(mode="after")
    def _one_unit(self) -> Self:
        units = {spec.unit for spec in self.columns.values() if spec.unit is not None}
        if len(units) > 1:
            raise ValueError(
                f"columns name different units ({', '.join(sorted(units))}); one event has "
                "one unit: convert in the MES export or use one source per unit"
            )
        constant = self.columns.get(UNIT_FIELD)
        if units and constant is not None:
            raise ValueError(
                "the unit is given twice: by a column's unit and by the `unit` field; keep one"
            )
        return self

    def column_names(self) -> list[str]:
        """Every column a row must have (CSV: checked against the header)."""
        names = [spec.column for spec in self.columns.values() if spec.column is not None]
        if self.time_column is not None:
            names.insert(0, self.time_column)
        return list(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class Record:
    timestamp: datetime  # UTC
    fields: tuple[tuple[str, Value], ...]  # event field -> value, in config order


def read_record(
    row: Mapping[str, object], settings: RecordSettings, *, received_at: datetime
) -> Record:
    """The record of one row; `RowError` names the first column that is wrong."""
    zone = _zone(settings.time_zone)
    if settings.time_column is None:
        timestamp = received_at.astimezone(UTC)
    else:
        timestamp = _time(
            lookup(row, settings.time_column), settings.time_column, settings.time_format, zone
        )
    fields: list[tuple[str, Value]] = []
    unit: str | None = None
    for name, spec in settings.columns.items():
        if spec.column is None:
            fields.append((name, spec.value))
            continue
        value = _cell(lookup(row, spec.column), spec, settings, zone)
        fields.append((name, value))
        if spec.unit is not None and value is not None:
            unit = spec.unit
    if unit is not None:
        fields.append((UNIT_FIELD, unit))
    return Record(timestamp, tuple(fields))


# The event fields a rejected record's event names when they can be read (`readable_keys`).
KEY_FIELDS = ("order", "material", "product", "lot", "quantity", "good", "delta", "unit")
REDACTED = "[redacted]"
# The most of a raw copy kept, in characters (`events.models.RAW_COPY_MAX_CHARS`, the event's
# own bound: connectors import nothing of events; tests/unit keeps the two equal).
RAW_COPY_MAX_CHARS = 2048
_SECRET_NAME = re.compile(
    r"(?i)(passw|secret|token|authori[sz]ation|api[-_ ]?key|credential|cookie|session|"
    r"private[-_ ]?key|signature)"
)
_TOKEN_VALUE = re.compile(
    r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}|\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"
    r"\.[A-Za-z0-9_-]*"
)


def readable_keys(
    row: Mapping[str, object], settings: RecordSettings
) -> tuple[tuple[str, Value], ...]:
    """The business keys (`KEY_FIELDS`) of a row that could be read, each on its own (a cell
    that cannot be read is left out): what a `record.rejected` event names."""
    zone = _zone(settings.time_zone)
    keys: list[tuple[str, Value]] = []
    unit: str | None = None
    for name, spec in settings.columns.items():
        if name not in KEY_FIELDS:
            continue
        if spec.column is None:
            keys.append((name, spec.value))
            continue
        try:
            value = _cell(lookup(row, spec.column), spec.model_copy(update={"required": False}),
                          settings, zone)
        except RowError:
            continue
        if value is not None:
            keys.append((name, value))
            if spec.unit is not None:
                unit = spec.unit
    if unit is not None and UNIT_FIELD not in dict(keys):
        keys.append((UNIT_FIELD, unit))
    return tuple(keys)


def raw_copy(
    record: Mapping[str, object] | str, secret: Collection[str] = ()
) -> tuple[str, bool]:
    """The bounded, redacted copy of a rejected record (module docstring): its text and
    whether it was cut short. A mapping becomes JSON (nested objects redacted too); a text
    (a CSV line that has no fields) keeps only its token-looking values redacted."""
    if isinstance(record, str):
        text = _TOKEN_VALUE.sub(REDACTED, record)
    else:
        text = json.dumps(_redacted(record, frozenset(secret)), ensure_ascii=False, default=str)
    if len(text) <= RAW_COPY_MAX_CHARS:
        return text, False
    return text[:RAW_COPY_MAX_CHARS], True


def _redacted(value: object, secret: frozenset[str]) -> object:
    if isinstance(value, Mapping):
        return {
            str(key): REDACTED if str(key) in secret or _SECRET_NAME.search(str(key))
            else _redacted(item, secret)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redacted(item, secret) for item in value]
    if isinstance(value, str):
        return _TOKEN_VALUE.sub(REDACTED, value)
    return value


def lookup(row: Mapping[str, object], column: str) -> object:
    """`row[column]`; for nested JSON also a dotted path (`order.id`). Missing: None."""
    if column in row:
        return row[column]
    value: object = row
    for part in column.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def blank(value: object) -> bool:
    """No value: missing, or only white space."""
    return value is None or (isinstance(value, str) and not value.strip())


def _cell(value: object, spec: FieldSettings, settings: RecordSettings, zone: ZoneInfo) -> Value:
    column = spec.column
    if spec.type == "bool" and isinstance(value, str) and not value.strip():
        return False  # a flag as SAP writes one: "X" or blank (a missing key or NULL: unset)
    if blank(value):
        if spec.required:
            raise RowError(f"column {column!r} is empty", str(column))
        return None
    if isinstance(value, str):
        value = value.strip()
    if spec.type == "time":
        fmt = spec.format or settings.time_format
        zone = _zone(spec.time_zone) if spec.time_zone else zone
        return _time(value, str(column), fmt, zone).isoformat()  # UTC, with its offset
    if spec.type == "str":
        if isinstance(value, dict | list | bytes | bool):
            kind = type(value).__name__
            raise RowError(f"column {column!r}: expected text, got {kind}", str(column))
        return str(value)
    if spec.type == "date":
        return _date(value, str(column), spec.format or "iso")
    if spec.type == "bool":
        return _flag(value, str(column))
    if isinstance(value, str) and settings.decimal == ",":
        value = _DIGIT_GROUPS.sub("", value).replace(",", ".")
    number = _number(value, str(column))
    if spec.type == "int":
        if not float(number).is_integer():
            raise RowError(f"column {column!r}: {value!r} is not a whole number", str(column))
        return int(number)
    return float(number)


# Thousands separators of a decimal-comma number: `.`, spaces, no-break and thin spaces.
_DIGIT_GROUPS = re.compile(r"[.\s\u00a0\u202f]")
_TRUE = frozenset({"true", "yes", "y", "1", "x", "ja", "j"})
_FALSE = frozenset({"false", "no", "n", "0", "nein"})


def _flag(value: object, column: str) -> bool:
    """A yes/no cell: a boolean, 0/1, or a text as plants write them (true/false, yes/no,
    1/0, `X` as SAP marks a set flag); anything else is a RowError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise RowError(
        f"column {column!r}: {str(value)[:40]!r} is not a yes/no value (true/false, yes/no, "
        "1/0, X)", column,
    )


def _date(value: object, column: str, fmt: str) -> str:
    """A calendar date cell as YYYY-MM-DD: a native date (a database's), or a text in `fmt`
    ("iso": YYYY-MM-DD; else a strptime format such as "%d.%m.%Y")."""
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if not isinstance(value, str):
        raise RowError(f"date column {column!r}: expected a date, got {type(value).__name__}",
                       column)
    text = value.strip()
    try:
        parsed = date.fromisoformat(text) if fmt == "iso" else datetime.strptime(text, fmt).date()
    except ValueError:
        raise RowError(f"date column {column!r}: {text!r} does not match {fmt!r}", column) \
            from None
    return parsed.isoformat()


def _number(value: object, column: str) -> int | float:
    number = value
    if isinstance(number, Decimal):
        number = float(number)
    if isinstance(number, str):
        try:
            number = float(number)
        except ValueError:
            raise RowError(f"column {column!r}: {value!r} is not a number", str(column)) from None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise RowError(f"column {column!r}: {value!r} is not a number", str(column))
    if not math.isfinite(number):
        raise RowError(f"column {column!r}: {value!r} is not a finite number", str(column))
    return number


def _time(value: object, column: str, fmt: str, zone: ZoneInfo) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif blank(value) or not isinstance(value, str):
        raise RowError(f"time column {column!r} is empty or not text", str(column))
    else:
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text) if fmt == "iso" else datetime.strptime(text, fmt)
        except ValueError:
            message = f"time column {column!r}: {text!r} does not match {fmt!r}"
            raise RowError(message, column) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    # OSError: a name the tz database opens as a file, e.g. a folder ("Europe") or too long.
    except (ZoneInfoNotFoundError, ValueError, OSError) as error:
        raise ValueError(f"unknown time zone {name[:64]!r} (an IANA name, e.g. Europe/Berlin)") \
            from error
