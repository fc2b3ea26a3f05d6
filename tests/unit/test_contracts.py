"""Data contracts: the JSON Schemas committed under tests/contracts/ are the published ones.

A committed contract may change only as the compatibility policy allows (docs/hub-contract.md,
"Compatibility policy"): the same checker as `edge-agent schema check` compares each committed
schema with what this agent produces, and a breaking change fails here. Change a type
incompatibly by adding a new major version (`telemetry.v2` beside `telemetry.v1`); after a
compatible change, bump the type's minor (`events.models.SCHEMA_MINOR_VERSIONS`) and publish
it: `edge-agent schema --out tests/contracts`.

The schemas also say what they promise to a consumer that has only them and `jsonschema`:
draft 2020-12 with `$id`s, every field described, units stated, open to what a later minor
version adds, and every example and every event the agent really encodes valid against them.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from agent.flow.mapping import Mapper
from buffer.base import StoredRecord
from config.schema import AgentConfig
from connectors.base import Reading
from events import catalog
from events.compat import UNIT, UNIT_FIELD, VERSION, Kind, compare, read_published
from events.formats import FORMATS, decode_message
from events.models import (
    AGENT_EVENT_MODELS,
    BUFFER_OVERFLOW_TYPE,
    EVENT_TYPES_BY_NAME,
    RETIRED_EVENT_MODELS,
    SUPERSEDED,
    BufferOverflowV1,
    CloudEvent,
    Event,
    data_schema_id,
    json_schemas,
    schema_id,
)
from events.versions import DOWN_CONVERSIONS
from events.wire import AgentIdentity, encode_agent_event, encode_body

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts"
HUB_CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "hub-contract.md"
COMMITTED = sorted(path.name.removesuffix(".schema.json") for path in CONTRACTS.glob("*.json"))
SCHEMAS = json_schemas()
IDENTITY = AgentIdentity(site="plant-a", agent="edge-01")


def published() -> dict[str, Any]:
    return read_published({str(path): path.read_text() for path in CONTRACTS.glob("*.json")})


# --- the committed contracts still hold ----------------------------------------------------------


def test_no_committed_contract_is_broken() -> None:
    breaking = [str(change) for change in compare(published(), SCHEMAS) if change.breaking]
    assert not breaking, (
        "these changes break what the committed (published) contracts promise: make them a new "
        "major version of the type instead (docs/hub-contract.md, 'Compatibility policy'):\n"
        + "\n".join(breaking)
    )


def unversioned_changes(committed: dict[str, Any], produced: dict[str, Any]) -> list[str]:
    """The types that changed (compatibly or not) but kept their `x-version`."""
    changed = {
        change.type_name for change in compare(committed, produced)
        if change.kind not in (Kind.TYPE_ADDED, Kind.VERSION_CHANGED)
    }
    return sorted(
        name for name in changed if committed[name].get(VERSION) == produced[name][VERSION]
    )


def test_a_compatible_change_bumps_the_minor_version() -> None:
    stale = unversioned_changes(published(), SCHEMAS)
    assert not stale, (
        f"{stale} changed compatibly: bump their minor in events.models.SCHEMA_MINOR_VERSIONS "
        "and publish them: edge-agent schema --out tests/contracts"
    )
    older = published()
    del older["telemetry.v1"]["properties"]["data"]["properties"]["unit"]
    assert unversioned_changes(older, SCHEMAS) == ["telemetry.v1"]
    older["telemetry.v1"][VERSION] = "1.0"
    newer = json.loads(json.dumps(SCHEMAS))
    newer["telemetry.v1"][VERSION] = "1.1"
    assert unversioned_changes(older, newer) == []


def test_every_event_type_has_a_committed_contract() -> None:
    missing = sorted(set(SCHEMAS) - set(COMMITTED))
    assert not missing, f"commit their schemas: edge-agent schema --out tests/contracts ({missing})"


def test_every_committed_type_is_still_produced() -> None:
    assert set(COMMITTED) <= set(SCHEMAS)


def test_the_check_fails_on_a_contract_this_agent_would_break() -> None:
    """The check itself, on the committed files: a narrowed field of one type is caught."""
    produced = json.loads(json.dumps(SCHEMAS))
    value = produced["telemetry.v1"]["properties"]["data"]["properties"]["value"]
    value["anyOf"] = [{"type": "string"}, {"type": "null"}]
    [change] = [change for change in compare(published(), produced) if change.breaking]
    assert (change.type_name, change.path, change.kind) == (
        "telemetry.v1", "data.value", Kind.TYPE_CHANGED
    )


# --- what each schema says -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_schema_is_a_draft_2020_12_resource_with_its_ids(name: str) -> None:
    schema = SCHEMAS[name]
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == schema_id(name) == f"urn:plant-edge-agent:events:{name}"
    assert schema["properties"]["data"]["$id"] == data_schema_id(name)
    assert schema["properties"]["dataschema"]["const"] == data_schema_id(name)
    assert schema["properties"]["type"]["const"] == name
    stem, _, major = name.rpartition(".v")
    assert stem and major.isdigit(), name
    assert schema[VERSION].split(".")[0] == major and schema[VERSION].split(".")[1].isdigit()


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_envelope_and_data_field_is_described(name: str) -> None:
    schema = SCHEMAS[name]
    data = schema["properties"]["data"]
    for where, properties in (("", schema["properties"]), ("data.", data["properties"])):
        undescribed = [key for key, sub in properties.items() if not sub.get("description")]
        assert not undescribed, f"{name}: {where}{undescribed} have no description"
    assert schema["description"] and data["description"]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_units_are_in_the_schema(name: str) -> None:
    """A field "in `unit`" names its unit field, which exists; durations are in seconds."""
    fields = SCHEMAS[name]["properties"]["data"]["properties"]
    for field, sub in fields.items():
        if "in `unit`" in sub["description"]:
            assert sub.get(UNIT_FIELD) == "unit" and "unit" in fields, (name, field)
        if UNIT_FIELD in sub:
            assert sub[UNIT_FIELD] in fields, (name, field)
        if field.endswith("_s"):
            assert sub.get(UNIT) == "s", (name, field)


def test_the_retired_version_stays_published_and_marked() -> None:
    assert set(SUPERSEDED) == set(RETIRED_EVENT_MODELS)
    for name, successor in SUPERSEDED.items():
        schema = SCHEMAS[name]
        assert schema["deprecated"] is True and schema["x-superseded-by"] == successor
        assert successor in EVENT_TYPES_BY_NAME
        assert name in COMMITTED
    assert all(not SCHEMAS[name].get("deprecated") for name in EVENT_TYPES_BY_NAME)


def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(
        SCHEMAS[name], format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def data_validator(name: str) -> Draft202012Validator:
    """The data subschema on its own, as a binary-mode consumer uses it (by `dataschema`)."""
    return Draft202012Validator(
        SCHEMAS[name]["properties"]["data"], format_checker=Draft202012Validator.FORMAT_CHECKER
    )


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_every_example_validates_against_its_schema_and_the_agents_model(name: str) -> None:
    [example] = SCHEMAS[name]["examples"]
    assert example["type"] == name
    validator(name).validate(example)
    data_validator(name).validate(example["data"])
    assert SCHEMAS[name]["properties"]["data"]["examples"] == [example["data"]]
    model = (
        AGENT_EVENT_MODELS.get(name) or RETIRED_EVENT_MODELS.get(name)
        or EVENT_TYPES_BY_NAME[name].model
    )
    CloudEvent[model].model_validate(example)  # type: ignore[valid-type]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_schemas_refuse_what_the_contract_rules_out(name: str) -> None:
    """No schema that accepts anything: a wrong type, a missing required attribute, another
    type's dataschema and an extension attribute CloudEvents would not allow are refused."""
    [example] = SCHEMAS[name]["examples"]
    check = validator(name)
    assert not check.is_valid({**example, "seq": "1"})
    assert not check.is_valid({key: value for key, value in example.items() if key != "id"})
    assert not check.is_valid({**example, "dataschema": data_schema_id("other.v1")})
    assert not check.is_valid({**example, "Bad_Name": "x"})
    assert not check.is_valid({**example, "nested": {"an": "object"}})
    required = SCHEMAS[name]["properties"]["data"]["required"]
    assert not check.is_valid({**example, "data": {
        key: value for key, value in example["data"].items() if key != required[0]
    }})


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_an_event_of_a_later_minor_version_still_validates(name: str) -> None:
    """What the policy lets a minor version add: a data field, an extension attribute."""
    [example] = SCHEMAS[name]["examples"]
    later = {
        **example, "shiftid": "B", "attempt": 2, "manual": False,
        "data": {**example["data"], "operator_note": {"any": ["json"]}},
    }
    validator(name).validate(later)


def test_the_catalog_in_the_hub_contract_is_the_schemas_rendered() -> None:
    assert catalog.generated(HUB_CONTRACT.read_text()) == catalog.render(SCHEMAS), (
        "docs/hub-contract.md: the catalog is not the schemas' rendering; write it with\n"
        ".venv/bin/python -c 'from pathlib import Path; from events import catalog; "
        "from events.models import json_schemas; p = Path(\"docs/hub-contract.md\"); "
        "p.write_text(catalog.replaced(p.read_text(), catalog.render(json_schemas())))'"
    )


# --- real events validate -------------------------------------------------------------------------


T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
MAPPING = """
[agent]
site = "plant-a"
id = "edge-01"
[hub]
url = "mqtt://127.0.0.1:1883"
[[sources]]
name = "line1"
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
[[sources.signals]]
node = "ns=2;s=T"
event = "telemetry"
asset = "line1/filler"
unit = "Cel"
trigger = { above = 90.0, hysteresis = 2.0 }
[[sources.signals]]
node = "ns=2;s=C"
event = "production.count"
asset = "line1/filler"
[[sources.signals]]
node = "ns=2;s=S"
event = "machine.downtime"
asset = "line1/filler"
"""


def mapped_events() -> list[Event]:
    """Events of the mapping stage itself: telemetry, an alert (start, end), counts, downtime."""
    mapper = Mapper.from_config(AgentConfig.model_validate(tomllib.loads(MAPPING)))
    readings = [
        ("T", 80.0), ("T", 95.5), ("C", 100), ("C", 112), ("S", True), ("T", 70.0),
        ("S", False), ("C", 3),
    ]
    events: list[Event] = []
    for second, (node, value) in enumerate(readings, start=1):
        reading = Reading("line1", f"ns=2;s={node}", value, T0 + timedelta(seconds=second))
        mapped, rejected = mapper.map_all([reading])
        assert not rejected, rejected
        events += mapped
    return events


def example_events() -> list[Event]:
    """One event of every emitted type, its data from the example, through the model."""
    events = []
    for name, event_type in EVENT_TYPES_BY_NAME.items():
        example = SCHEMAS[name]["examples"][0]
        data = event_type.model.model_validate(example["data"]).model_dump(mode="json")
        extensions = {
            key: example[key] for key in ("correlationid", "causationid", "workorder")
            if key in example
        }
        events.append(Event(
            example["id"], event_type, example["source"], T0, example["subject"], "good", None,
            data, extensions,
        ))
    return events


def records() -> Iterator[StoredRecord]:
    """As the buffer hands them to the forwarder: mapped events, one of every emitted type,
    the retired copies dual publishing makes, and an event of the agent's own."""
    events = mapped_events() + example_events()
    events += [
        conversion.convert(event) for conversion in DOWN_CONVERSIONS.values()
        for event in events if event.type == conversion.successor
    ]
    for seq, event in enumerate(events, start=1):
        body = encode_body(event, site=IDENTITY.site, agent=IDENTITY.agent)
        yield StoredRecord(seq, event.id, event.type.name, 0, body, 0.0)
    overflow = BufferOverflowV1(
        priority_class="telemetry", event_type="telemetry.v1", reason="evicted", count=3,
        seq_ranges=[(1, 3)],
    )
    body = encode_agent_event(
        BUFFER_OVERFLOW_TYPE, event_id="f0c6e2a8-5d1b-5e94-a7f3-92b4d8c1e605", site="plant-a",
        agent="edge-01", time=T0, data=overflow,
    )
    yield StoredRecord(len(events) + 1, "f0c6e2a8-5d1b-5e94-a7f3-92b4d8c1e605",
                       BUFFER_OVERFLOW_TYPE, 0, body, 0.0)


def test_every_event_the_agent_encodes_validates_against_its_published_schema() -> None:
    """Structured mode, as a consumer with only the schemas reads it: the event's `type`
    picks the schema; in binary mode the payload is the data, checked by `dataschema`."""
    by_data_id = {schema["properties"]["data"]["$id"]: name for name, schema in SCHEMAS.items()}
    seen = set()
    for record in records():
        message = FORMATS["cloudevents-structured"].encode([record], IDENTITY)
        event = json.loads(message.payload)
        validator(event["type"]).validate(event)
        binary = FORMATS["cloudevents-binary"].encode([record], IDENTITY)
        properties = dict(binary.user_properties)
        data_validator(by_data_id[properties["dataschema"]]).validate(json.loads(binary.payload))
        assert decode_message(binary.payload, binary.content_type, binary.user_properties) == [
            event
        ]
        seen.add(event["type"])
    assert seen == set(SCHEMAS)
