"""A record the agent cannot take becomes `record.rejected.v1` (issue 16): what the connectors
read of it (`connectors.records.readable_keys`, `raw_copy`) and what the mapping makes of it
(`agent.flow.mapping.Mapper.map_all`): the event, its id, its keys, and whether the reading is
also set aside (and in which class)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from agent.flow.mapping import Mapper, MappingContext, RecordRule
from config.mapping import SignalMapping
from connectors import records
from connectors.base import Quality, Reading, Rejection
from connectors.records import RAW_COPY_MAX_CHARS, RecordSettings, raw_copy, readable_keys
from events import models
from events.kinds import EventKind, Priority
from events.models import EVENT_TYPES, RecordRejectedV1

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CONTEXT = MappingContext(site="plant-a", agent="edge-01")


def settings(**extra: Any) -> RecordSettings:
    return RecordSettings.model_validate({
        "columns": {
            "order": {"column": "WO"},
            "product": {"column": "MAT", "required": False},
            "good": {"column": "GOOD", "type": "float", "unit": "kg"},
            "scrap": {"column": "SCRAP", "type": "float", "required": False},
        },
        **extra,
    })


def test_the_raw_copy_bound_is_the_events_own() -> None:
    assert RAW_COPY_MAX_CHARS == models.RAW_COPY_MAX_CHARS
    assert RecordRejectedV1.model_fields["raw"].metadata[0].max_length == RAW_COPY_MAX_CHARS


def test_readable_keys_leave_out_only_what_cannot_be_read() -> None:
    row = {"WO": " WO-1 ", "MAT": "M-7", "GOOD": "lots", "SCRAP": "2"}
    assert readable_keys(row, settings()) == (("order", "WO-1"), ("product", "M-7"))
    row["GOOD"] = "4.5"
    assert readable_keys(row, settings()) == (
        ("order", "WO-1"), ("product", "M-7"), ("good", 4.5), ("unit", "kg"),
    )
    assert readable_keys({}, settings()) == ()


def test_the_raw_copy_is_redacted_and_bounded() -> None:
    row = {
        "WO": "WO-1", "Password": "p", "x_api_key": "k", "SESSION_ID": "s", "PIN": "1234",
        "nested": {"authorization": "a", "ok": ["Bearer abcdefghijkl", "fine"]},
        "jwt": "eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl",
    }
    text, cut = raw_copy(row, secret=("PIN",))
    assert not cut
    assert json.loads(text) == {
        "WO": "WO-1", "Password": "[redacted]", "x_api_key": "[redacted]",
        "SESSION_ID": "[redacted]", "PIN": "[redacted]",
        "nested": {"authorization": "[redacted]", "ok": ["[redacted]", "fine"]},
        "jwt": "[redacted]",
    }
    line, cut = raw_copy("WO-1;basic dXNlcjpwYXNzd29yZA==;5")
    assert (line, cut) == ("WO-1;[redacted];5", False)
    long, cut = raw_copy({"note": "x" * 5000})
    assert cut and len(long) == RAW_COPY_MAX_CHARS


def test_secret_columns_is_checked_as_config() -> None:
    assert settings(secret_columns=["PIN"]).secret_columns == ("PIN",)
    with pytest.raises(ValidationError):
        settings(secret_columns=[""])


def rule(kind: EventKind = EventKind.WORKORDER_COMPLETED, interface: str = "file") -> RecordRule:
    return RecordRule(CONTEXT, "mes", "record", kind, "line1", ("order",), interface)


def rejected_reading(set_aside: bool) -> Reading:
    rejection = Rejection(
        interface="table", reason="column 'GOOD' is empty", location="t row 7",
        column="GOOD", keys=(("order", "WO-7"), ("product", "M-1")), raw='{"WO": "WO-7"}',
        set_aside=set_aside,
    )
    return Reading("mes", "record", "[7]", NOW, quality=Quality.BAD, status="x",
                   rejection=rejection)


@pytest.mark.parametrize("set_aside", [True, False])
def test_a_rejected_reading_becomes_a_record_rejected_event(set_aside: bool) -> None:
    mapper = Mapper([], records=[rule()])
    events, set_aside_readings = mapper.map_all([rejected_reading(set_aside)])
    [event] = events
    assert event.type is EVENT_TYPES[EventKind.RECORD_REJECTED]
    assert event.type.name == "record.rejected.v1"
    assert event.type.default_priority is Priority.CRITICAL
    assert event.extensions["correlationid"] == "order:WO-7"
    assert (event.source, event.subject, event.time) == ("/plant-a/edge-01/mes", "line1", NOW)
    assert event.data == {
        "signal": "record", "record_type": "workorder.completed.v3", "interface": "table",
        "stage": "read", "reason": "column 'GOOD' is empty", "location": "t row 7",
        "column": "GOOD", "record": "[7]", "set_aside": set_aside, "order": "WO-7",
        "material": "M-1", "lot": None, "quantity": None, "unit": None,
        "raw": '{"WO": "WO-7"}', "raw_truncated": False,
    }
    # Set aside only where the interface has no channel back of its own.
    assert [reading.value for reading, _ in set_aside_readings] == (["[7]"] if set_aside else [])
    # The same record again is the same event (its id from the record's key).
    again, _ = Mapper([], records=[rule()]).map_all([rejected_reading(set_aside)])
    assert again[0].id == event.id
    assert mapper.event_type_of("mes", "record") is EVENT_TYPES[EventKind.WORKORDER_COMPLETED]


def test_a_record_the_model_refuses_is_set_aside_and_rejected() -> None:
    reading = Reading("mes", "record", "d:3", NOW, attributes=(
        ("order", "WO-3"), ("product", "M"), ("good", -1.0), ("unit", "kg"), ("pin", "1"),
    ))
    mapper = Mapper([], records=[RecordRule(
        CONTEXT, "mes", "record", EventKind.WORKORDER_COMPLETED, "line1", ("order",), "webhook",
        ("pin",),
    )])
    [event], [(set_aside, reason)] = mapper.map_all([reading])
    assert set_aside is reading and "greater than or equal to 0" in reason
    data = event.data
    assert (data["stage"], data["column"], data["set_aside"], data["interface"]) == (
        "validate", "good", True, "webhook"
    )
    assert (data["order"], data["material"], data["quantity"], data["unit"]) == (
        "WO-3", "M", -1.0, "kg"
    )
    assert json.loads(str(data["raw"]))["pin"] == "[redacted]"
    assert data["location"] == "mes record d:3"


def test_a_bad_key_value_never_keeps_the_rejection_from_being_made() -> None:
    rejection = Rejection(
        interface="file", reason="r" * 5000, location="f.csv:1",
        keys=(("order", "W" * 500), ("good", float("inf")), ("lot", 12)),
    )
    reading = Reading("mes", "record", "k", NOW, quality=Quality.BAD, rejection=rejection)
    [event], _ = Mapper([], records=[rule()]).map_all([reading])
    assert len(str(event.data["reason"])) == 2000 and len(str(event.data["order"])) == 200
    assert (event.data["quantity"], event.data["lot"]) == (None, "12")


def test_no_signal_can_feed_record_rejected() -> None:
    with pytest.raises(ValidationError, match="made by the agent"):
        SignalMapping.model_validate({"event": "record.rejected", "asset": "line1"})


def test_records_module_names_the_key_fields() -> None:
    assert {"order", "material", "lot", "unit"} <= set(records.KEY_FIELDS)
