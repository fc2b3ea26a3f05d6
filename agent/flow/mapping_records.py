"""The record half of the mapping: MES records (file rows, webhook objects, table rows) into
business events, and what `agent.flow.mapping` shares with it. Pure code: no I/O, no clock.

One `RecordRule` per record source and signal (a webhook: per route). A record reading's
`attributes` are the fields of one event of the rule's type; per record, in this order:

1. A record its connector could not read (`Reading.rejection`, or quality bad) makes no event.
2. Master data and units, as signals get them (`_master_data`): the codes of the fields the
   source's `lookups` names are looked up (unknown: flagged in the event's `unmapped` as
   `table:code`, or for a `dead-letter` table the record is refused); a `unit` given as UN/ECE
   Rec 20 (`KGM`) is read as UCUM (`config.units.ucum_code`), one in neither follows the
   source's `unknown_units` (`pass`: flagged `unit:code`; `reject`); the quantities in `unit`
   (the model's `x-unit-field` fields) are converted to the `[units]` unit of its kind, never
   pieces (`1`, a count, not a fraction). Counted per source in `MappingCounters`, only when
   the event is made (`event_data_flagged`), never when a webhook merely checks a post.
3. Fields the agent fills in: a downtime's phase and duration; a completion's
   `posting_date`, when the record gives none, as the date of the record's time in the
   source's `time_zone` (the plant's calendar).
4. The event model validates the fields; a refusal names the field and the model's reason.

A record that makes no event becomes the data of a `record.rejected` event instead
(`rejected_data`): the connector's `Rejection` when there is one, else what the record's own
fields say (stage `validate`), with the business keys and a redacted, bounded copy
(`connectors.records.raw_copy`). Every value it carries is bounded, so it is always valid.

The event's envelope (id, correlation, trace) is `Mapper`'s (`agent.flow.mapping`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from config import units as units_module
from config.mapping import LookupTable, UnitsSection
from config.masterdata import code_text
from config.units import conversion
from connectors.base import Quality, Reading, Rejection
from connectors.records import raw_copy
from events.compat import UNIT_FIELD as UNIT_FIELD_KEY
from events.kinds import EventKind
from events.models import EVENT_TYPES, RecordRejectedV1

# The MES interface of each record source type (a `record.rejected` event's `interface`).
RECORD_INTERFACES = {"mes-files": "file", "mes-http": "webhook", "mes-sql": "table"}
# A rejected record's business keys: the event field, and the record fields it is read from,
# the first with a value.
_REJECTED_KEYS = {
    "order": ("order",),
    "material": ("material", "product"),
    "lot": ("lot",),
    "quantity": ("quantity", "good", "delta"),
    "unit": ("unit",),
}
_KEY_MAX_CHARS = 200
UNIT_FIELD_NAME = "unit"

class UnmappableReading(ValueError):
    """A reading that no event can be made of; the message says why."""


@dataclass(frozen=True, slots=True)
class MappingContext:
    site: str
    agent: str


@dataclass(slots=True)
class MappingCounters:
    """Counted for status: codes that no lookup knew, per table."""

    codes_unmapped_total: dict[str, int] = field(default_factory=dict)
    codes_dead_lettered_total: dict[str, int] = field(default_factory=dict)
    # Trace context headers ignored as invalid, per `<source><route>` (mes-webhook/mes/orders).
    trace_headers_invalid_total: dict[str, int] = field(default_factory=dict)
    # MES records, per source: codes no lookup knew (passed or dead-lettered), units neither
    # UCUM nor UN/ECE Rec 20, and units read as Rec 20 (`KGM`) and sent as UCUM (`kg`).
    record_codes_unmapped_total: dict[str, int] = field(default_factory=dict)
    record_units_unknown_total: dict[str, int] = field(default_factory=dict)
    record_units_normalised_total: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecordRule:
    """Readings of one source and signal that are whole MES records (file rows, webhook
    objects, table rows): each reading's `attributes` are the fields of one `kind` event,
    validated by its model; `value` is the record's key (file digest and line, idempotency key
    and index, table cursor), so the event id is that of the record."""

    context: MappingContext
    source: str
    signal: str
    kind: EventKind
    asset: str
    # The data fields to take the correlationid from, the first with a value
    # (`config.correlation.correlation_fields`); empty: none.
    correlate_by: tuple[str, ...] = ()
    # The MES interface (`RECORD_INTERFACES`) and the fields never copied out of it.
    interface: str = "file"
    secret_columns: tuple[str, ...] = ()
    # The event fields naming one business fact across re-sends (`agent.flow.corrections`).
    business_key: tuple[str, ...] = ()
    # Master data and units on records: (event field, table name, table) of each lookup; the
    # enterprise units; what to do with a unit in neither UCUM nor Rec 20; the counters.
    lookups: tuple[tuple[str, str, LookupTable], ...] = ()
    units: UnitsSection = field(default_factory=UnitsSection)
    unknown_units: str = "pass"
    # The plant's time zone (the source's `time_zone`): a completion's posting date, when the
    # record gives none, is the date of its time there (`_posting_date`).
    time_zone: str = "UTC"
    counters: MappingCounters = field(default_factory=MappingCounters, compare=False)

    def rejected_data(self, reading: Reading, reason: str) -> dict[str, object]:
        """The `record.rejected` data of a record that makes no event: the connector's
        `Rejection` when it could not read it, else (the event model refused it) what the
        record's own fields say."""
        rejection = reading.rejection
        if rejection is None:
            fields = dict(reading.attributes)
            raw, cut = raw_copy(fields, self.secret_columns)
            stage = "read" if reading.quality is not Quality.GOOD else "validate"
            problems = self._validated(reading)[1]
            column = problems[0][0] if problems and problems[0][0] != "record" else None
            rejection = Rejection(
                self.interface, reading.status if stage == "read" and reading.status
                else reason, f"{self.source} record {reading.value}", column,
                tuple(fields.items()), raw, cut, stage,
            )
        keys = dict(rejection.keys)
        data: dict[str, object] = {
            "signal": reading.signal,
            "record_type": EVENT_TYPES[self.kind].name,
            "interface": rejection.interface,
            "stage": rejection.stage,
            "reason": _bounded(rejection.reason, 2000),
            "location": _bounded(rejection.location, 500),
            "column": None if rejection.column is None else _bounded(rejection.column, 200),
            "record": _bounded(str(reading.value), 500),
            "set_aside": rejection.set_aside,
            "raw": rejection.raw,
            "raw_truncated": rejection.raw_truncated,
        }
        for name, sources in _REJECTED_KEYS.items():
            found = next((keys[key] for key in sources if keys.get(key) not in (None, "")), None)
            if name == "quantity":
                data[name] = _finite(found)
            elif found is not None:
                data[name] = _bounded(str(found), _KEY_MAX_CHARS)
        return RecordRejectedV1.model_validate(data).model_dump(mode="json")

    def event_data(self, reading: Reading) -> dict[str, object]:
        return self.event_data_flagged(reading)[0]

    def event_data_flagged(self, reading: Reading) -> tuple[dict[str, object], list[str]]:
        """The record's event data and its `unmapped` flags (`table:code`, `unit:code`);
        `UnmappableReading` when it makes no valid event. Counts what it normalised."""
        data, problems, unmapped = self._validated(reading, count=True)
        if data is None:
            what = "; ".join(f"{field}: {message}" for field, message in problems)
            raise UnmappableReading(
                f"source {self.source!r} record {reading.value}: not a valid "
                f"{EVENT_TYPES[self.kind].name}: {what}"
            )
        return data, unmapped

    def problems(self, reading: Reading) -> list[tuple[str, str]]:
        """(field, message) of everything that keeps this record from being a valid event."""
        return self._validated(reading)[1]

    def _validated(
        self, reading: Reading, count: bool = False
    ) -> tuple[dict[str, object] | None, list[tuple[str, str]], list[str]]:
        if reading.rejection is not None:
            return None, [(reading.rejection.column or "record", reading.rejection.reason)], []
        if reading.quality is not Quality.GOOD:  # a record its connector could not read
            return None, [("record", reading.status or "unreadable")], []
        fields: dict[str, object] = {"signal": reading.signal, **dict(reading.attributes)}
        unmapped: list[str] = []
        problems = self._master_data(fields, unmapped, count)
        if problems:
            return None, problems, unmapped
        if self.kind is EventKind.MACHINE_DOWNTIME:
            _downtime_fields(fields, reading.timestamp)
        if self.kind is EventKind.WORKORDER_COMPLETED and fields.get("posting_date") in (None, ""):
            fields["posting_date"] = _posting_date(reading.timestamp, self.time_zone)
        try:
            data = EVENT_TYPES[self.kind].model.model_validate(fields)
        except ValidationError as error:
            return None, [
                (".".join(map(str, item["loc"])) or "record", item["msg"])
                for item in error.errors()
            ], unmapped
        return data.model_dump(mode="json"), [], unmapped

    def _master_data(
        self, fields: dict[str, object], unmapped: list[str], count: bool
    ) -> list[tuple[str, str]]:
        """Lookups and units on the record's fields, in place (module docstring, step 1 for
        records): codes translated, a Rec 20 unit read as UCUM, quantities converted to the
        `[units]` unit of their kind. The problems that make the record no event."""
        problems: list[tuple[str, str]] = []
        for name, table_name, table in self.lookups:
            value = fields.get(name)
            if value is None or value == "" or not isinstance(value, bool | int | float | str):
                continue
            code = code_text(value)
            mapped = table.codes.get(code)
            if mapped is not None:
                fields[name] = mapped
                continue
            if count:
                _bump(self.counters.record_codes_unmapped_total, self.source)
            if table.unmapped == "dead-letter":
                if count:
                    _bump(self.counters.codes_dead_lettered_total, table_name)
                problems.append((name, f"code {code!r} is not in lookup {table_name!r} "
                                       "(unmapped = \"dead-letter\")"))
            else:
                if count:
                    _bump(self.counters.codes_unmapped_total, table_name)
                unmapped.append(f"{table_name}:{code}")
        unit = fields.get(UNIT_FIELD_NAME)
        if not isinstance(unit, str) or not unit.strip():
            return problems
        ucum = units_module.ucum_code(unit)
        if ucum is None:
            if count:
                _bump(self.counters.record_units_unknown_total, self.source)
            if self.unknown_units == "reject":
                problems.append((UNIT_FIELD_NAME, f"unit {unit!r} is neither a UCUM nor a "
                                 "UN/ECE Rec 20 code (unknown_units = \"reject\")"))
            else:
                unmapped.append(f"unit:{unit}")
            return problems
        if ucum != unit and count:
            _bump(self.counters.record_units_normalised_total, self.source)
        target = ucum
        if units_module.kind_of(ucum) != "fraction":  # pieces ("1") are counts, not fractions
            target = self.units.target_for(ucum)
        if target != ucum:
            change = conversion(ucum, target)
            for name in _quantity_fields(self.kind):
                value = fields.get(name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    fields[name] = change.apply(float(value))
        fields[UNIT_FIELD_NAME] = target
        return problems


def _bump(totals: dict[str, int], key: str) -> None:
    totals[key] = totals.get(key, 0) + 1


def _quantity_fields(kind: EventKind) -> list[str]:
    """The data fields of `kind` whose value is in its `unit` field (`x-unit-field`)."""
    return [
        name for name, info in EVENT_TYPES[kind].model.model_fields.items()
        if isinstance(info.json_schema_extra, dict)
        and info.json_schema_extra.get(UNIT_FIELD_KEY) == UNIT_FIELD_NAME
    ]


def _bounded(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None



def _posting_date(time: datetime, zone: str) -> str:
    """The date of `time` in the plant's calendar (`zone`, an IANA name), as YYYY-MM-DD: a
    completion at 23:30 UTC in Europe/Berlin posts on the next day."""
    return time.astimezone(ZoneInfo(zone)).date().isoformat()


def _downtime_fields(fields: dict[str, object], time: datetime) -> None:
    """A downtime record with a start time is its end (the record's time) unless it says
    otherwise; its duration is derived. The record has no signal value."""
    started = fields.get("started_at")
    if isinstance(started, str):  # a time field: ISO 8601 with its offset (connectors.records)
        started = datetime.fromisoformat(started)
    fields.setdefault("value", None)
    if fields.get("phase") is None:
        fields["phase"] = "end" if started is not None else "start"
    if isinstance(started, datetime) and fields["phase"] == "end":
        fields.setdefault("duration_s", (time - started).total_seconds())


