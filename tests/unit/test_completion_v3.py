"""`workorder.completed.v3` from MES records, with plain values (issue 16, item 1): every
ERP-grade field from the columns a plant has, the posting date in the plant's calendar, the
model's own rules, and the cells a spreadsheet export writes (decimal commas, local dates,
X flags, title lines above the header)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from agent.flow.mapping_records import MappingContext, RecordRule, UnmappableReading
from connectors.base import Reading
from connectors.mes_files.config import MesFilesSettings
from connectors.mes_files.records import FileUnreadable, parse_file
from connectors.records import RecordSettings, RowError, read_record
from events.kinds import EventKind
from events.models import EVENT_TYPES, WorkorderCompletedV3

AT = datetime(2026, 11, 26, 14, 0, tzinfo=UTC)
MTIME = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def completion(fields: dict[str, Any], at: datetime = AT, zone: str = "UTC") -> dict[str, Any]:
    rule = RecordRule(MappingContext("plant-a", "edge-01"), "mes", "record",
                      EventKind.WORKORDER_COMPLETED, "line1", time_zone=zone)
    reading = Reading("mes", "record", "k:1", at, attributes=tuple(fields.items()))
    return rule.event_data(reading)


def test_v3_is_the_emitted_completion() -> None:
    assert EVENT_TYPES[EventKind.WORKORDER_COMPLETED].name == "workorder.completed.v3"


def test_an_erp_grade_confirmation_keeps_every_field() -> None:
    data = completion({
        "order": "WO-1", "operation": "0010", "work_center": "FILL-01",
        "confirmation": "000482", "final": True, "product": "SKU-1", "good": 1180.0,
        "scrap": 20.0, "scrap_reason": "S03", "rework": 4.0, "rework_reason": "R01",
        "unit": "1", "lot": "L-7", "location": "FG01",
        "started_at": "2026-11-26T06:00:00+00:00", "finished_at": "2026-11-26T14:00:00+00:00",
        "posting_date": "2026-11-25", "personnel": "10042",
    })
    assert data == {
        "signal": "record", "order": "WO-1", "operation": "0010", "work_center": "FILL-01",
        "confirmation": "000482", "final": True, "product": "SKU-1", "good": 1180.0,
        "scrap": 20.0, "scrap_reason": "S03", "rework": 4.0, "rework_reason": "R01",
        "unit": "1", "lot": "L-7", "location": "FG01", "started_at": "2026-11-26T06:00:00Z",
        "finished_at": "2026-11-26T14:00:00Z", "posting_date": "2026-11-25",  # as given
        "personnel": "10042",
    }


def test_the_posting_date_is_the_plants_calendar_day_when_the_record_gives_none() -> None:
    late = datetime(2026, 11, 26, 23, 30, tzinfo=UTC)  # 00:30 on the 27th in Berlin
    minimal = {"order": "WO-1", "good": 5, "unit": "kg"}
    assert completion(minimal, late, "Europe/Berlin")["posting_date"] == "2026-11-27"
    assert completion(minimal, late, "America/Chicago")["posting_date"] == "2026-11-26"
    assert completion({**minimal, "posting_date": ""}, late, "UTC")["posting_date"] == (
        "2026-11-26"
    )
    assert completion(minimal)["operation"] is None and completion(minimal)["final"] is None


@pytest.mark.parametrize(("fields", "field"), [
    ({"rework": -1}, "rework"),
    ({"operation": ""}, "operation"),
    ({"started_at": "2026-11-26T10:00:00+00:00", "finished_at": "2026-11-26T09:00:00+00:00"},
     "finished_at: before started_at"),
    ({"posting_date": "26.11.2026"}, "posting_date"),
])
def test_what_no_erp_could_post_is_refused_naming_the_field(
    fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(UnmappableReading, match=field):
        completion({"order": "WO-1", "good": 5, "unit": "kg", **fields})
    with pytest.raises(ValidationError):
        WorkorderCompletedV3.model_validate(
            {"signal": "s", "order": "WO-1", "unit": "kg", **fields}
        )


def settings(**extra: Any) -> RecordSettings:
    return RecordSettings.model_validate({
        "columns": {
            "order": {"column": "WO"},
            "good": {"column": "GOOD", "type": "float", "unit": "kg"},
            "final": {"column": "FINAL", "type": "bool", "required": False},
            "posting_date": {"column": "BUDAT", "type": "date", "format": "%d.%m.%Y",
                             "required": False},
        },
        **extra,
    })


def fields_of(row: Mapping[str, object], **extra: Any) -> dict[str, object]:
    return dict(read_record(row, settings(**extra), received_at=AT).fields)


def test_spreadsheet_cells_read_as_the_plant_writes_them() -> None:
    row = {"WO": "WO-1", "GOOD": "1.180,5", "FINAL": "X", "BUDAT": "26.11.2026"}
    assert fields_of(row, decimal=",") == {
        "order": "WO-1", "good": 1180.5, "final": True, "posting_date": "2026-11-26",
        "unit": "kg",
    }
    assert fields_of({**row, "GOOD": "1 180,5"}, decimal=",")["good"] == 1180.5
    assert fields_of({**row, "GOOD": "1180.5"})["good"] == 1180.5  # decimal "." (default)
    for text, flag in (("x", True), ("Yes", True), ("1", True), ("no", False), ("0", False),
                       ("false", False)):
        assert fields_of({**row, "GOOD": "1", "FINAL": text})["final"] is flag
    # An empty cell is false, as SAP writes a flag ("X" or blank); a missing value is unset.
    assert fields_of({**row, "GOOD": "1", "FINAL": ""})["final"] is False
    assert fields_of({**row, "GOOD": "1", "FINAL": None})["final"] is None


@pytest.mark.parametrize(("cells", "column"), [
    ({"FINAL": "maybe"}, "FINAL"),
    ({"BUDAT": "2026-11-26"}, "BUDAT"),  # not in the configured format
    ({"GOOD": "1.180,5"}, "GOOD"),  # a decimal comma where "." was configured
])
def test_a_cell_that_does_not_read_names_its_column(
    cells: dict[str, str], column: str
) -> None:
    row = {"WO": "WO-1", "GOOD": "5", "FINAL": "X", "BUDAT": "26.11.2026", **cells}
    with pytest.raises(RowError) as raised:
        fields_of(row)
    assert raised.value.column == column


def file_settings(**extra: Any) -> MesFilesSettings:
    return MesFilesSettings.model_validate({
        "folder": "/tmp", "delimiter": ";",
        "columns": {"order": {"column": "WO"},
                    "good": {"column": "GOOD", "type": "float", "unit": "kg"}},
        "decimal": ",", **extra,
    })


def test_title_lines_above_the_header_are_skipped_and_lines_keep_their_numbers() -> None:
    text = "Rückmeldungen KW 48\nExport 26.11.2026 14:00\nWO;GOOD\nWO-1;12,5\n;;\nWO-2;3\n"
    parsed = parse_file(text.encode(), file_settings(header_line=3), MTIME)
    assert [(r.line, dict(r.fields)["good"]) for r in parsed.records] == [(4, 12.5), (6, 3.0)]
    assert parsed.rejects == []
    with pytest.raises(FileUnreadable, match=r"not in the header \(line 1"):
        parse_file(text.encode(), file_settings(), MTIME)
    with pytest.raises(FileUnreadable, match="no header row \\(expected on line 9\\)"):
        parse_file(text.encode(), file_settings(header_line=9), MTIME)
