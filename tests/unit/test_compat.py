"""The compatibility check (events.compat, `edge-agent schema check`): each kind of breaking
change is caught, and what the policy allows (docs/hub-contract.md, "Compatibility policy")
passes with notes only.

Every case starts from this agent's real schemas (`json_schemas()`: `published`), changes one
thing in a copy (`produced`) and compares the two as a hub's rollout check would.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from events.compat import (
    Change,
    Kind,
    SchemaError,
    compare,
    compare_schema,
    read_published,
    validate_document,
)
from events.models import json_schemas

Schemas = dict[str, Any]
PUBLISHED: Schemas = json_schemas()


def produced_with(change: Callable[[Schemas], object]) -> Schemas:
    produced = copy.deepcopy(PUBLISHED)
    change(produced)
    return produced


def data(schemas: Schemas, type_name: str) -> dict[str, Any]:
    result: dict[str, Any] = schemas[type_name]["properties"]["data"]
    return result


def fields(schemas: Schemas, type_name: str) -> dict[str, Any]:
    result: dict[str, Any] = data(schemas, type_name)["properties"]
    return result


def changes_of(change: Callable[[Schemas], object]) -> list[Change]:
    return compare(PUBLISHED, produced_with(change))


def breaking(change: Callable[[Schemas], object]) -> set[tuple[str, str, Kind]]:
    return {(c.type_name, c.path, c.kind) for c in changes_of(change) if c.breaking}


def test_the_agents_own_schemas_compare_equal() -> None:
    assert compare(PUBLISHED, copy.deepcopy(PUBLISHED)) == []


# --- breaking changes --------------------------------------------------------------------------


def test_a_removed_field_breaks() -> None:
    def remove_unit(schemas: Schemas) -> None:
        del fields(schemas, "telemetry.v1")["unit"]

    def remove_signal(schemas: Schemas) -> None:
        del fields(schemas, "telemetry.v1")["signal"]
        data(schemas, "telemetry.v1")["required"].remove("signal")

    assert breaking(remove_unit) == {("telemetry.v1", "data.unit", Kind.FIELD_REMOVED)}
    assert breaking(remove_signal) == {("telemetry.v1", "data.signal", Kind.FIELD_REMOVED)}


def test_a_removed_envelope_attribute_breaks() -> None:
    def remove(schemas: Schemas) -> None:
        del schemas["machine.state.v1"]["properties"]["correlationid"]

    assert breaking(remove) == {("machine.state.v1", "correlationid", Kind.FIELD_REMOVED)}


def test_a_narrowed_type_breaks() -> None:
    def integer_values(schemas: Schemas) -> None:
        fields(schemas, "telemetry.v1")["value"]["anyOf"][0] = {"type": "integer"}

    def no_null(schemas: Schemas) -> None:
        fields(schemas, "telemetry.v1")["value"]["anyOf"].pop()

    def bounded(schemas: Schemas) -> None:
        fields(schemas, "machine.alarm.v1")["severity"]["anyOf"][0]["maximum"] = 100

    def pattern(schemas: Schemas) -> None:
        fields(schemas, "quality.hold.v1")["lot"]["pattern"] = "^L-"

    for change in (integer_values, no_null, bounded, pattern):
        [(_, _, kind)] = breaking(change)
        assert kind is Kind.NARROWED, change.__name__
    assert breaking(integer_values) == {("telemetry.v1", "data.value", Kind.NARROWED)}
    assert breaking(pattern) == {("quality.hold.v1", "data.lot", Kind.NARROWED)}


def test_a_widened_type_of_a_field_consumers_read_breaks_too() -> None:
    def fractional_counts(schemas: Schemas) -> None:
        fields(schemas, "production.count.v1")["count"]["type"] = "number"

    def unbounded(schemas: Schemas) -> None:
        del fields(schemas, "production.count.v1")["count"]["minimum"]

    assert breaking(fractional_counts) == {("production.count.v1", "data.count", Kind.WIDENED)}
    assert breaking(unbounded) == {("production.count.v1", "data.count", Kind.WIDENED)}


def test_a_new_required_field_breaks() -> None:
    def new_required(schemas: Schemas) -> None:
        fields(schemas, "telemetry.v1")["line"] = {"type": "string", "description": "The line."}
        data(schemas, "telemetry.v1")["required"].append("line")

    def now_required(schemas: Schemas) -> None:
        data(schemas, "telemetry.v1")["required"].append("unit")

    def no_longer_required(schemas: Schemas) -> None:
        data(schemas, "telemetry.v1")["required"].remove("value")

    assert breaking(new_required) == {("telemetry.v1", "data.line", Kind.REQUIRED_ADDED)}
    assert breaking(now_required) == {("telemetry.v1", "data.unit", Kind.NOW_REQUIRED)}
    assert breaking(no_longer_required) == {
        ("telemetry.v1", "data.value", Kind.NO_LONGER_REQUIRED)
    }


def test_a_new_required_envelope_attribute_breaks() -> None:
    def required(schemas: Schemas) -> None:
        schemas["telemetry.v1"]["properties"]["shift"] = {"type": "string"}
        schemas["telemetry.v1"]["required"].append("shift")

    assert breaking(required) == {("telemetry.v1", "shift", Kind.REQUIRED_ADDED)}


def test_a_changed_enum_breaks_whether_a_value_is_removed_or_added() -> None:
    """machine.state's states are a `$ref` to `$defs` inside the data resource: the change
    shows at each field that uses them."""

    def without_fault(schemas: Schemas) -> None:
        data(schemas, "machine.state.v1")["$defs"]["MachineState"]["enum"].remove("fault")

    def with_setup(schemas: Schemas) -> None:
        data(schemas, "machine.state.v1")["$defs"]["MachineState"]["enum"].append("setup")

    def severity_without_info(schemas: Schemas) -> None:
        fields(schemas, "quality.alert.v1")["severity"]["enum"].remove("info")

    assert breaking(without_fault) == {
        ("machine.state.v1", "data.state", Kind.ENUM_VALUE_REMOVED),
        ("machine.state.v1", "data.previous", Kind.ENUM_VALUE_REMOVED),
    }
    assert breaking(with_setup) == {
        ("machine.state.v1", "data.state", Kind.ENUM_VALUE_ADDED),
        ("machine.state.v1", "data.previous", Kind.ENUM_VALUE_ADDED),
    }
    assert breaking(severity_without_info) == {
        ("quality.alert.v1", "data.severity", Kind.ENUM_VALUE_REMOVED)
    }
    [removed] = [c for c in changes_of(severity_without_info) if c.breaking]
    assert str(removed) == 'quality.alert.v1 data.severity: enum value removed: "info" removed'


def test_a_changed_const_breaks() -> None:
    def content_type(schemas: Schemas) -> None:
        schemas["telemetry.v1"]["properties"]["datacontenttype"]["const"] = "application/xml"

    assert breaking(content_type) == {("telemetry.v1", "datacontenttype", Kind.CONST_CHANGED)}


def test_a_changed_unit_breaks() -> None:
    def minutes(schemas: Schemas) -> None:
        fields(schemas, "machine.downtime.v1")["duration_s"]["x-unit"] = "min"

    def other_unit_field(schemas: Schemas) -> None:
        fields(schemas, "telemetry.v1")["value"]["x-unit-field"] = "uom"

    assert breaking(minutes) == {("machine.downtime.v1", "data.duration_s", Kind.UNIT_CHANGED)}
    assert breaking(other_unit_field) == {("telemetry.v1", "data.value", Kind.UNIT_CHANGED)}


def test_a_removed_or_retired_type_breaks() -> None:
    def remove(schemas: Schemas) -> None:
        del schemas["telemetry.v1"]

    def retire(schemas: Schemas) -> None:
        schemas["telemetry.v1"]["deprecated"] = True
        schemas["telemetry.v1"]["x-superseded-by"] = "telemetry.v2"

    assert breaking(remove) == {("telemetry.v1", "", Kind.TYPE_REMOVED)}
    assert breaking(retire) == {("telemetry.v1", "", Kind.TYPE_RETIRED)}
    [retired] = [c for c in changes_of(retire) if c.breaking]
    assert "telemetry.v2" in retired.detail


def test_a_changed_schema_id_and_a_closed_schema_break() -> None:
    def new_id(schemas: Schemas) -> None:
        data(schemas, "telemetry.v1")["$id"] = "urn:elsewhere"
        schemas["telemetry.v1"]["properties"]["dataschema"]["const"] = "urn:elsewhere"

    def closed(schemas: Schemas) -> None:
        data(schemas, "telemetry.v1")["additionalProperties"] = False

    assert breaking(new_id) == {
        ("telemetry.v1", "data", Kind.ID_CHANGED),
        ("telemetry.v1", "dataschema", Kind.CONST_CHANGED),
    }
    assert breaking(closed) == {("telemetry.v1", "data.(other fields)", Kind.CLOSED)}


def test_an_extension_attribute_cloudevents_does_not_allow_breaks() -> None:
    def badly_named(schemas: Schemas) -> None:
        schemas["telemetry.v1"]["properties"]["shift_id"] = {"type": "string"}

    def an_object(schemas: Schemas) -> None:
        schemas["telemetry.v1"]["properties"]["shift"] = {"type": "object"}

    assert breaking(badly_named) == {("telemetry.v1", "shift_id", Kind.FIELD_ADDED)}
    assert breaking(an_object) == {("telemetry.v1", "shift", Kind.FIELD_ADDED)}


def test_an_optional_field_breaks_a_closed_published_schema() -> None:
    """Why the published schemas are open: against a closed one (as they were before), even
    an optional field would be refused by consumers that validate."""
    closed = copy.deepcopy(PUBLISHED["telemetry.v1"])
    closed["properties"]["data"]["additionalProperties"] = False
    produced = copy.deepcopy(PUBLISHED["telemetry.v1"])
    produced["properties"]["data"]["additionalProperties"] = False
    produced["properties"]["data"]["properties"]["line"] = {"type": "string"}
    [change] = compare_schema("telemetry.v1", closed, produced)
    assert (change.path, change.kind, change.breaking) == ("data.line", Kind.FIELD_ADDED, True)


# --- additive changes: notes only ---------------------------------------------------------------


def notes_only(change: Callable[[Schemas], object]) -> list[tuple[str, str, Kind]]:
    changes = changes_of(change)
    assert not [c for c in changes if c.breaking], [str(c) for c in changes]
    return [(c.type_name, c.path, c.kind) for c in changes]


def test_a_new_optional_data_field_is_a_note() -> None:
    def optional(schemas: Schemas) -> None:
        fields(schemas, "telemetry.v1")["line"] = {
            "anyOf": [{"type": "string"}, {"type": "null"}], "default": None,
            "description": "The line.",
        }
        fields(schemas, "telemetry.v1")["limits"] = {"type": "object"}
        major, minor = schemas["telemetry.v1"]["x-version"].split(".")  # the next minor
        schemas["telemetry.v1"]["x-version"] = f"{major}.{int(minor) + 1}"

    assert notes_only(optional) == [
        ("telemetry.v1", "", Kind.VERSION_CHANGED),
        ("telemetry.v1", "data.line", Kind.FIELD_ADDED),
        ("telemetry.v1", "data.limits", Kind.FIELD_ADDED),
    ]


def test_a_new_optional_extension_attribute_is_a_note() -> None:
    def extension(schemas: Schemas) -> None:
        for name in ("shift", "attempt", "manual"):
            schemas["machine.state.v1"]["properties"][name] = {
                "anyOf": [{"type": {"shift": "string", "attempt": "integer",
                                    "manual": "boolean"}[name]}, {"type": "null"}],
                "default": None, "description": f"The {name}.",
            }

    assert notes_only(extension) == [
        ("machine.state.v1", name, Kind.FIELD_ADDED) for name in ("shift", "attempt", "manual")
    ]


def test_a_new_type_is_a_note() -> None:
    def new_type(schemas: Schemas) -> None:
        schemas["telemetry.v2"] = copy.deepcopy(schemas["telemetry.v1"])

    assert notes_only(new_type) == [("telemetry.v2", "", Kind.TYPE_ADDED)]


def test_documentation_is_not_compared_and_a_new_unit_is_a_note() -> None:
    def documentation(schemas: Schemas) -> None:
        schema = schemas["quality.hold.v1"]
        schema["description"] = "Reworded."
        schema["examples"] = []
        schema["properties"]["id"]["description"] = "Reworded, too."
        fields(schemas, "quality.hold.v1")["lot"]["title"] = "Lot"
        fields(schemas, "quality.hold.v1")["lot"]["$comment"] = "from the QMS"

    def unit_stated(schemas: Schemas) -> None:
        fields(schemas, "machine.alarm.v1")["severity"]["x-unit"] = "1"

    assert notes_only(documentation) == []
    assert notes_only(unit_stated) == [
        ("machine.alarm.v1", "data.severity", Kind.ANNOTATION_ADDED)
    ]


def test_a_recursive_schema_is_compared_without_end() -> None:
    tree: dict[str, Any] = {
        "$defs": {"node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}}}},
        "$ref": "#/$defs/node",
    }
    grown = copy.deepcopy(tree)
    grown["$defs"]["node"]["properties"]["name"] = {"type": "string"}
    assert compare_schema("tree.v1", tree, copy.deepcopy(tree)) == []
    changes = compare_schema("tree.v1", tree, grown)
    assert [(c.path, c.kind, c.breaking) for c in changes] == [
        ("name", Kind.FIELD_ADDED, False)
    ]


# --- documents the check cannot read -------------------------------------------------------------


def test_a_document_it_cannot_read_is_named_with_the_culprit() -> None:
    good = json.dumps(PUBLISHED["telemetry.v1"])
    with pytest.raises(SchemaError, match=r"^pub/telemetry\.v1\.schema\.json:3:5: not JSON"):
        read_published({"pub/telemetry.v1.schema.json": '{\n  "a": 1,\n    }'})
    with pytest.raises(SchemaError, match=r"/properties/data/properties/value/anyOf/0/\$ref"):
        broken = json.loads(good)
        broken["properties"]["data"]["properties"]["value"]["anyOf"][0] = {"$ref": "#/$defs/X"}
        read_published({"pub/telemetry.v1.schema.json": json.dumps(broken)})
    with pytest.raises(SchemaError, match=r"/required: must be an array of strings"):
        read_published({"pub/telemetry.v1.schema.json": '{"required": "id"}'})
    with pytest.raises(SchemaError, match=r'"telemetry.v1" is not the type its file name says'):
        read_published({"pub/machine.state.v1.schema.json": good})
    with pytest.raises(SchemaError, match="not a JSON object"):
        validate_document([])
    with pytest.raises(SchemaError, match=r"no TYPE\.schema\.json files"):
        read_published({})
    assert read_published({"pub/telemetry.v1.schema.json": good}) == {
        "telemetry.v1": PUBLISHED["telemetry.v1"]
    }


# --- the command ---------------------------------------------------------------------------------


def publish(folder: Path, schemas: Schemas) -> Path:
    folder.mkdir()
    for name, schema in schemas.items():
        (folder / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
    return folder


def test_schema_check_exits_0_when_the_published_schemas_are_this_agents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "published"
    assert main(["schema", "--out", str(folder)]) == 0
    capsys.readouterr()
    assert main(["schema", "check", "--against", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out == f"{len(PUBLISHED)} published types in {folder}: 0 breaking changes, 0 notes: " \
        "compatible\n"


def test_schema_check_exits_0_with_notes_for_additive_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    older = copy.deepcopy(PUBLISHED)
    del older["telemetry.v1"]["properties"]["data"]["properties"]["unit"]  # added since
    del older["machine.alarm.v1"]  # a new type since
    folder = publish(tmp_path / "published", older)
    assert main(["schema", "check", "--against", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "note  telemetry.v1 data.unit: new optional field: null|string",
        "note  machine.alarm.v1: new type: not published yet (its own topic)",
        f"{len(older)} published types in {folder}: 0 breaking changes, 2 notes: compatible",
    ]


def test_schema_check_exits_1_naming_each_breaking_change(tmp_path: Path) -> None:
    """Through the real `edge-agent` entry point, as a hub's rollout job runs it."""
    newer = copy.deepcopy(PUBLISHED)
    newer["telemetry.v1"]["properties"]["data"]["properties"]["site_code"] = {"type": "string"}
    newer["quality.alert.v1"]["properties"]["data"]["properties"]["severity"]["enum"].append(
        "emergency"
    )
    folder = publish(tmp_path / "published", newer)
    result = subprocess.run(
        [sys.executable, "-m", "agent", "schema", "check", "--against", str(folder)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        "BREAKING  quality.alert.v1 data.severity: enum value removed: \"emergency\" removed",
        "BREAKING  telemetry.v1 data.site_code: field removed: consumers that read it get "
        "nothing, silently",
    ]
    assert lines[2].endswith(
        "2 breaking changes, 0 notes: consumers of the published schemas would refuse or "
        "misread these events"
    )


@pytest.mark.parametrize("problem", ["missing", "empty", "not json", "not utf-8", "not a schema"])
def test_schema_check_exits_2_for_a_folder_it_cannot_read(
    problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "published"
    if problem != "missing":
        folder.mkdir()
    if problem == "not json":
        (folder / "telemetry.v1.schema.json").write_text('{"type": "object",,}')
    if problem == "not utf-8":
        (folder / "telemetry.v1.schema.json").write_bytes(b'{"title": "\xff"}')
    if problem == "not a schema":
        (folder / "telemetry.v1.schema.json").write_text('{"properties": {"a": 3}}')
    assert main(["schema", "check", "--against", str(folder)]) == 2
    err = capsys.readouterr().err
    expected = {
        "missing": f"{folder}: cannot read it: No such file or directory",
        "empty": f"{folder}: no TYPE.schema.json files",
        "not json": f"{folder / 'telemetry.v1.schema.json'}:1:19: not JSON",
        "not utf-8": f"{folder / 'telemetry.v1.schema.json'}: not UTF-8 text",
        "not a schema": f"{folder / 'telemetry.v1.schema.json'}: /properties: must be an "
        "object of schemas",
    }[problem]
    assert err.startswith(f"edge-agent schema check: {expected}"), err


def test_schema_check_needs_its_folder_and_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema", "check"]) == 2
    assert main(["schema", "telemetry.v1", "--against", str(tmp_path)]) == 2
    assert main(["schema", "check", "--against", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "schema check --against DIR" in capsys.readouterr().err
