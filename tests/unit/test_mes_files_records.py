"""MES file rows to records (pure), the config contract, and the mapper's record rule."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.flow.mapping import Mapper
from config.schema import RECORD_FIELDS, AgentConfig
from connectors.mes_files.config import MesFilesSettings
from connectors.mes_files.connector import MesFilesConnector
from connectors.mes_files.records import FileUnreadable, parse_file
from events.kinds import EventKind
from events.models import EVENT_TYPES
from testkit.mes_files import HEADER, mes_files_agent_config
from tests.unit.completion_v3 import V3_UNSET

MTIME = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def settings(tmp_path: Path) -> tuple[AgentConfig, MesFilesSettings]:
    import tomllib

    text = mes_files_agent_config(
        hub_url="mqtt://127.0.0.1:1", state_dir=tmp_path / "s", folder=tmp_path
    )
    config = AgentConfig.model_validate(tomllib.loads(text))
    source = config.sources[0]
    assert isinstance(source, MesFilesSettings)
    return config, source


def test_good_and_bad_rows_with_line_numbers(tmp_path: Path) -> None:
    _, source = settings(tmp_path)
    text = (
        HEADER
        + "WO-1;MAT-1;10;1;26.11.2026 08:00:00\n"
        + ";MAT-1;10;1;26.11.2026 08:01:00\n"  # line 3: no order
        + "WO-3;MAT-1;ten;1;26.11.2026 08:02:00\n"  # line 4: not a number
        + "\n"
        + "WO-5;;10;;2026-11-26 08:03\n"  # line 6: wrong time format
        + "WO-6;;7;;26.11.2026 08:04:00\n"
    )
    parsed = parse_file(text.encode(), source, MTIME)
    assert [r.line for r in parsed.records] == [2, 7]
    first = parsed.records[0]
    assert first.timestamp == datetime(2026, 11, 26, 7, 0, tzinfo=UTC)  # CET is UTC+1
    assert dict(first.fields) == {
        "order": "WO-1", "product": "MAT-1", "good": 10, "scrap": 1, "unit": "1"
    }
    assert dict(parsed.records[1].fields)["scrap"] is None
    assert [(r.line, r.reason) for r in parsed.rejects] == [
        (3, "column 'WO' is empty"),
        (4, "column 'GOOD_QTY': expected a whole number"),  # never the cell itself
        (6, "time column 'FINISHED': expected a time in '%d.%m.%Y %H:%M:%S'"),
    ]
    # Same content, same digest: a re-read after a crash yields the same record keys.
    assert parse_file(text.encode(), source, MTIME).digest == parsed.digest


def test_missing_column_makes_the_file_unreadable(tmp_path: Path) -> None:
    _, source = settings(tmp_path)
    with pytest.raises(FileUnreadable, match="'SCRAP_QTY'"):
        parse_file(b"WO;MATERIAL;GOOD_QTY;FINISHED\n", source, MTIME)


@pytest.mark.parametrize("kind", sorted(RECORD_FIELDS))
def test_record_fields_agree_with_the_event_model(kind: EventKind) -> None:
    """What config lets a record fill is what the model has, less what the agent derives."""
    required, optional = RECORD_FIELDS[kind]
    model_fields = EVENT_TYPES[kind].model.model_fields
    derived = {"signal"} | {
        EventKind.MACHINE_DOWNTIME: {"value", "duration_s"},
        EventKind.PRODUCTION_COUNT: {"reset"},  # a record's count has no reset of its own
    }.get(kind, set())
    assert required | optional == set(model_fields) - derived
    model_required = {n for n, f in model_fields.items() if f.is_required()} - derived
    # machine.downtime: phase is required by the model, derived for a record without it.
    assert required == model_required - ({"phase"} if kind is EventKind.MACHINE_DOWNTIME else set())


def test_record_fields_are_the_published_contract() -> None:
    """Derived from the models, the record fields are what they were when written by hand: a
    model change that would move them shows here."""
    assert RECORD_FIELDS == {
        EventKind.WORKORDER_RELEASED: (
            frozenset({"order"}), frozenset({"product", "quantity", "unit", "due_at"})
        ),
        EventKind.WORKORDER_COMPLETED: (
            frozenset({"order", "unit"}), frozenset({
                "operation", "work_center", "confirmation", "final", "product", "good",
                "scrap", "scrap_reason", "rework", "rework_reason", "lot", "location",
                "started_at", "finished_at", "posting_date", "personnel",
            })
        ),
        EventKind.PRODUCTION_COUNT: (frozenset({"count"}), frozenset({"increment"})),
        EventKind.MACHINE_DOWNTIME: (
            frozenset(), frozenset({"phase", "reason", "reason_raw", "started_at"})
        ),
        EventKind.QUALITY_HOLD: (
            frozenset({"lot", "phase", "reason"}),
            frozenset({"material", "quantity", "unit", "note"}),
        ),
        EventKind.INVENTORY_ADJUSTED: (
            frozenset({"material", "location", "delta", "unit", "reason"}), frozenset({"lot"})
        ),
        EventKind.MATERIAL_CONSUMED: (
            frozenset({"material", "quantity", "unit"}), frozenset({"lot", "order", "location"})
        ),
        # Issue 16: the ERP-facing types.
        EventKind.MATERIAL_PRODUCED: (
            frozenset({"order", "material", "quantity", "unit"}),
            frozenset({"lot", "location", "posting_date"}),
        ),
        EventKind.SHIPMENT_CONFIRMED: (
            frozenset({"delivery", "material", "quantity", "unit"}),
            frozenset({"item", "order", "customer", "lot", "carrier", "tracking", "shipped_at"}),
        ),
        EventKind.ASN_RECEIVED: (
            frozenset({"asn", "supplier", "material", "quantity", "unit"}),
            frozenset({"item", "purchase_order", "lot", "expected_at"}),
        ),
        EventKind.INVOICE_POSTED: (
            frozenset({"invoice", "kind", "amount", "currency"}),
            frozenset({"order", "purchase_order", "partner", "tax", "posting_date"}),
        ),
    }
    with pytest.raises(ValueError, match="never comes from an MES record"):
        EVENT_TYPES[EventKind.TELEMETRY].record_fields()


def test_config_refuses_unknown_fields_and_keys(tmp_path: Path) -> None:
    import tomllib

    text = mes_files_agent_config(
        hub_url="mqtt://127.0.0.1:1", state_dir=tmp_path / "s", folder=tmp_path
    )
    data = tomllib.loads(text)
    data["sources"][0]["columns"]["colour"] = {"column": "C"}
    with pytest.raises(ValidationError, match="has no field"):
        AgentConfig.model_validate(data)
    data = tomllib.loads(text)
    data["sources"][0]["colums"] = {}
    with pytest.raises(ValidationError, match="colums"):
        AgentConfig.model_validate(data)


def test_mapper_turns_records_into_events_with_stable_ids(tmp_path: Path) -> None:
    config, source = settings(tmp_path)
    connector = MesFilesConnector("mes-drop", source)
    parsed = parse_file(
        (HEADER + "WO-1;MAT-1;10;1;26.11.2026 08:00:00\n").encode(), source, MTIME
    )
    readings = connector._readings(parsed)
    events, rejected = Mapper.from_config(config).map_all(readings)
    again, _ = Mapper.from_config(config).map_all(readings)
    assert rejected == []
    assert [e.id for e in events] == [e.id for e in again]
    assert events[0].type.name == "workorder.completed.v3"
    assert events[0].data == {
        "signal": "record", "order": "WO-1", "product": "MAT-1", "good": 10, "scrap": 1,
        "unit": "1", **V3_UNSET,
        "posting_date": "2026-11-26",  # the record's time in the source's time zone
    }


def test_a_file_is_read_in_bounded_chunks_with_the_whole_content_digest(tmp_path: Path) -> None:
    """Streaming (issue 13, item 9): chunks of at most `rows_per_emit` records, in line order,
    and the digest is the SHA-256 of the whole content, as when the file was read at once (so
    ids do not change for a file half-done by an older agent)."""
    import hashlib
    import io

    from connectors.mes_files.records import check_file, read_chunks

    _, source = settings(tmp_path)
    source = source.model_copy(update={"rows_per_emit": 7})
    data = (HEADER + "".join(
        f"WO-{n};M;{n};0;26.11.2026 08:00:00\n" if n % 10 else f"WO-{n};M;x;0;bad\n"
        for n in range(100)
    )).encode()
    file = io.BytesIO(data)
    assert check_file(file, source) == hashlib.sha256(data).hexdigest()
    chunks = list(read_chunks(file, source, MTIME))
    assert all(len(c.records) <= 7 and len(c.rejects) <= 7 for c in chunks)
    lines = [r.line for c in chunks for r in c.records]
    assert lines == [n + 2 for n in range(100) if n % 10]
    assert [r.line for c in chunks for r in c.rejects] == [n + 2 for n in range(0, 100, 10)]


def test_an_unreadable_file_is_found_before_any_row_goes_out(tmp_path: Path) -> None:
    """A bad byte on the last line fails the first pass (nothing is emitted from a file that
    cannot be read), and no reason quotes the file: not the header, not a byte's value."""
    import io

    from connectors.mes_files.records import check_file

    _, source = settings(tmp_path)
    data = (HEADER + "WO-1;M;1;0;26.11.2026 08:00:00\n" * 3000).encode() + b"WO-\xff;M;1;0;x\n"
    with pytest.raises(FileUnreadable) as failed:
        check_file(io.BytesIO(data), source)
    assert str(failed.value).startswith("not utf-8-sig text (invalid start byte) after line ")
    assert "xff" not in str(failed.value)
    with pytest.raises(FileUnreadable) as failed:
        check_file(io.BytesIO(b"root:$6$hash:19700::\n"), source)
    assert "$6$hash" not in str(failed.value)


def test_a_json_document_is_bounded_by_max_json_bytes(tmp_path: Path) -> None:
    """A JSON array is parsed whole: above `max_json_bytes` it is refused before parsing."""
    import io

    from connectors.mes_files.records import check_file

    _, source = settings(tmp_path)
    source = source.model_copy(update={"format": "json", "max_json_bytes": 1000})
    small = b'[{"WO": "1"}]'
    assert check_file(io.BytesIO(small), source)
    with pytest.raises(FileUnreadable, match="above max_json_bytes = 1000"):
        check_file(io.BytesIO(b"[" + b'{"WO": "1"},' * 200 + b"{}]"), source)
