"""Data contracts: the JSON Schema of every event type is committed under tests/contracts/.

A schema that differs from its committed file fails here: change a released type by adding a
new version (`telemetry.v2` next to `telemetry.v1`), never by editing the old one. A type that
was never released may be regenerated: `edge-agent schema --out tests/contracts`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from events.models import json_schemas

CONTRACTS = Path(__file__).resolve().parents[1] / "contracts"
COMMITTED = sorted(path.name.removesuffix(".schema.json") for path in CONTRACTS.glob("*.json"))


@pytest.mark.parametrize("type_name", COMMITTED)
def test_a_committed_contract_is_still_produced_unchanged(type_name: str) -> None:
    schemas = json_schemas()
    assert type_name in schemas, f"{type_name} was removed: keep every released version"
    committed = json.loads((CONTRACTS / f"{type_name}.schema.json").read_text())
    assert schemas[type_name] == committed, (
        f"the schema of {type_name} changed without a new version: add the change as a new "
        "version of the type instead (or, for a type never released, regenerate the file with "
        "`edge-agent schema --out tests/contracts`)"
    )


def test_every_event_type_has_a_committed_contract() -> None:
    missing = sorted(set(json_schemas()) - set(COMMITTED))
    assert not missing, f"commit their schemas: edge-agent schema --out tests/contracts ({missing})"


def test_every_type_name_is_versioned() -> None:
    for name in json_schemas():
        stem, _, version = name.rpartition(".v")
        assert stem and version.isdigit(), name


def test_a_changed_field_is_caught(tmp_path: Path) -> None:
    """The comparison itself: a schema with one field's type changed is not equal."""
    committed = json.loads((CONTRACTS / "telemetry.v1.schema.json").read_text())
    changed = json.loads(json.dumps(json_schemas()["telemetry.v1"]))
    data = changed["$defs"]["TelemetryV1"]["properties"]
    data["value"] = {"type": "string"}
    assert changed != committed
