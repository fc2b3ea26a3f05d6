"""MES records (connectors.records) into the business events (events.models, agent.mapping):
typing, units, times, and a record that cannot make a valid event rejected with its reason."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from agent.flow.mapping import MappingContext, RecordRule, UnmappableReading
from config.schema import check_record_fields
from connectors.base import Reading
from connectors.records import RecordSettings, RowError, read_record
from events.kinds import EventKind

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def record_settings(**columns: dict[str, Any]) -> RecordSettings:
    return RecordSettings.model_validate(
        {"time_column": "AT", "time_format": "%d.%m.%Y %H:%M", "time_zone": "Europe/Berlin",
         "columns": columns}
    )


def test_columns_constants_units_times_and_nested_keys() -> None:
    settings = record_settings(
        material={"column": "item.code"},  # a dotted path into a nested JSON object
        delta={"column": "QTY", "type": "float", "unit": "kg"},
        location={"value": "WH-1"},
        reason={"column": "WHY", "required": False},
        lot={"column": "LOT_TIME", "type": "time", "format": "iso"},
    )
    row = {"AT": "26.11.2026 08:00", "item": {"code": "MAT-7"}, "QTY": " -2.5 ", "WHY": "",
           "LOT_TIME": "2026-11-26T08:00:00+01:00"}
    record = read_record(row, settings, received_at=NOW)
    assert record.timestamp == datetime(2026, 11, 26, 7, 0, tzinfo=UTC)
    assert dict(record.fields) == {
        "material": "MAT-7", "delta": -2.5, "location": "WH-1", "reason": None,
        "lot": "2026-11-26T07:00:00+00:00", "unit": "kg",
    }


def test_database_values_decimal_and_datetime() -> None:
    settings = record_settings(count={"column": "N", "type": "int"})
    naive = datetime(2026, 11, 26, 8, 0)  # a naive database time is in the source's zone
    record = read_record({"AT": naive, "N": Decimal("12")}, settings, received_at=NOW)
    assert record.timestamp == datetime(2026, 11, 26, 7, 0, tzinfo=UTC)
    assert dict(record.fields) == {"count": 12}


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"AT": "26.11.2026 08:00"}, "column 'N' is empty"),
        ({"AT": "26.11.2026 08:00", "N": "1.5"}, "column 'N': '1.5' is not a whole number"),
        ({"AT": "26.11.2026 08:00", "N": True}, "column 'N': True is not a number"),
        ({"AT": "26.11.2026 08:00", "N": "nan"}, "column 'N': 'nan' is not a finite number"),
        ({"AT": "2026-11-26", "N": 1}, "time column 'AT': '2026-11-26' does not match"),
        ({"N": 1}, "time column 'AT' is empty or not text"),
    ],
)
def test_a_bad_row_says_which_column_and_why(row: dict[str, object], reason: str) -> None:
    with pytest.raises(RowError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        read_record(row, record_settings(count={"column": "N", "type": "int"}), received_at=NOW)


def test_without_a_time_column_the_record_takes_the_time_it_was_read() -> None:
    settings = RecordSettings.model_validate({"columns": {"count": {"column": "N"}}})
    assert read_record({"N": "3"}, settings, received_at=NOW).timestamp == NOW


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"a": {"column": "A", "value": "x"}}, "either column"),
        ({"a": {}}, "either column"),
        ({"a": {"column": "A", "format": "%Y"}}, "format and time_zone are for type"),
        ({"a": {"column": "A", "unit": "kg"}, "b": {"column": "B", "unit": "g"}},
         "different units"),
        ({"a": {"column": "A", "unit": "kg"}, "unit": {"value": "kg"}}, "unit is given twice"),
        ({"a": {"column": "A", "type": "time", "time_zone": "Mars/Base"}}, "unknown time zone"),
    ],
)
def test_record_settings_refuse_contradictions(columns: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RecordSettings.model_validate({"columns": columns})


@pytest.mark.parametrize(
    ("event", "columns", "message"),
    [
        (EventKind.TELEMETRY, {"value": {"column": "V"}}, "cannot come from an MES record"),
        (EventKind.INVENTORY_ADJUSTED, {"material": {"column": "M"}},
         "needs column(s) for 'delta', 'location', 'reason', 'unit' (or a column with `unit`)"),
        (EventKind.QUALITY_HOLD, {"lot": {"column": "L"}, "phase": {"value": "placed"},
                                  "reason": {"column": "R"}, "colour": {"column": "C"}},
         "has no field(s) 'colour'"),
        (EventKind.MATERIAL_CONSUMED, {"material": {"column": "M", "required": False},
                                       "quantity": {"column": "Q", "unit": "kg"}},
         "field 'material' is required"),
    ],
)
def test_config_columns_must_fit_the_event(
    event: EventKind, columns: dict[str, Any], message: str
) -> None:
    settings = RecordSettings.model_validate({"columns": columns})
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_record_fields(event, settings.columns)


# --- records into events ------------------------------------------------------------------------


def event_data(kind: EventKind, fields: dict[str, Any], at: datetime = NOW) -> dict[str, Any]:
    rule = RecordRule(MappingContext("plant-a", "edge-01"), "mes", "record", kind, "line1")
    reading = Reading("mes", "record", "k:1", at, attributes=tuple(fields.items()))
    return rule.event_data(reading)


def test_every_business_event_from_a_record() -> None:
    assert event_data(EventKind.WORKORDER_RELEASED, {
        "order": "WO-1", "quantity": 500, "unit": "1", "due_at": "2026-11-27T06:00:00+00:00",
    })["due_at"] == "2026-11-27T06:00:00Z"
    assert event_data(EventKind.WORKORDER_COMPLETED, {
        "order": "WO-1", "good": 98.5, "scrap": 1.5, "unit": "kg",
    })["good"] == 98.5
    assert event_data(EventKind.PRODUCTION_COUNT, {"count": 40, "increment": 4})["reset"] is False
    assert event_data(EventKind.QUALITY_HOLD, {
        "lot": "L-9", "phase": "placed", "reason": "QH-12", "quantity": 20, "unit": "kg",
    })["phase"] == "placed"
    assert event_data(EventKind.INVENTORY_ADJUSTED, {
        "material": "MAT-1", "location": "WH-1", "delta": -3, "unit": "kg", "reason": "COUNT",
    })["delta"] == -3
    assert event_data(EventKind.MATERIAL_CONSUMED, {
        "material": "MAT-1", "lot": "L-1", "quantity": 2.5, "unit": "L", "order": "WO-1",
    })["quantity"] == 2.5


def test_a_downtime_record_with_a_start_is_its_end_with_the_duration() -> None:
    data = event_data(
        EventKind.MACHINE_DOWNTIME,
        {"started_at": "2026-11-26T11:45:00+00:00", "reason": "BLOCKED"},
    )
    assert (data["phase"], data["duration_s"], data["value"]) == ("end", 900.0, None)
    assert event_data(EventKind.MACHINE_DOWNTIME, {"reason": "JAM"})["phase"] == "start"


@pytest.mark.parametrize(
    ("kind", "fields", "reason"),
    [
        (EventKind.INVENTORY_ADJUSTED, {"material": "M", "location": "W", "delta": 0,
                                        "unit": "kg", "reason": "R"}, "an adjustment of 0"),
        (EventKind.MATERIAL_CONSUMED, {"material": "M", "quantity": -1, "unit": "kg"},
         "quantity: Input should be greater than 0"),
        (EventKind.QUALITY_HOLD, {"lot": "L", "phase": "maybe", "reason": "R"},
         "phase: Input should be 'placed' or 'released'"),
        (EventKind.WORKORDER_RELEASED, {"order": "WO", "quantity": 5},
         "unit: required when a quantity is given"),
        (EventKind.WORKORDER_COMPLETED, {"order": "", "unit": "1"},
         "order: String should have at least 1 character"),
    ],
)
def test_a_record_that_makes_no_valid_event_is_rejected_with_the_reason(
    kind: EventKind, fields: dict[str, Any], reason: str
) -> None:
    with pytest.raises(UnmappableReading, match=reason) as caught:
        event_data(kind, fields)
    assert "record k:1" in str(caught.value)
