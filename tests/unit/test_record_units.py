"""UN/ECE Recommendation 20 <-> UCUM (`config.units`), and master data and units on MES
records (`agent.flow.mapping.RecordRule`, issue 16): lookups with their `unmapped` policy, a
Rec 20 unit read as UCUM, quantities converted to `[units]`, pieces never treated as a
fraction, and the config checks of a record source's `lookups`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.flow.mapping import Mapper, MappingContext, MappingCounters, RecordRule
from config import units
from config.loader import ConfigError, load_config
from config.mapping import LookupTable, UnitsSection
from connectors.base import Reading
from connectors.records import RecordSettings
from events.kinds import EventKind

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
CONTEXT = MappingContext(site="plant-a", agent="edge-01")


@pytest.mark.parametrize(("rec20", "ucum"), [
    ("KGM", "kg"), ("C62", "1"), ("EA", "1"), ("H87", "1"), ("LTR", "L"), ("MTR", "m"),
    ("GRM", "g"), ("TNE", "t"), ("MTQ", "m3"), ("HUR", "h"), ("CEL", "Cel"), ("KWH", "kW.h"),
])
def test_rec20_and_ucum_both_ways(rec20: str, ucum: str) -> None:
    assert units.ucum_code(rec20) == ucum
    assert units.ucum_code(ucum) == ucum  # a UCUM code stays itself
    assert units.ucum_code(rec20) in units.UNITS
    back = units.rec20_code(ucum)
    assert back is not None and units.ucum_code(back) == ucum


def test_every_rec20_code_names_a_known_unit_and_each_ucum_has_one_preferred() -> None:
    assert all(code in units.UNITS for code in units.REC20_TO_UCUM.values())
    assert units.rec20_code("1") == "C62" and units.rec20_code("kg") == "KGM"
    assert units.ucum_code(" kgm ") == "kg"  # as an ERP export may write it
    assert units.ucum_code("XYZ") is None and units.rec20_code("{rpm}") is None


def rule(**options: object) -> RecordRule:
    table = LookupTable.model_validate({"entries": {"A-17": "MAT-117"}})
    strict = LookupTable.model_validate({"entries": {"A-17": "MAT-117"},
                                         "unmapped": "dead-letter"})
    lookups = {"materials": table, "strict": strict}
    name = str(options.pop("lookup", "materials"))
    return RecordRule(
        CONTEXT, "erp", "record", EventKind.MATERIAL_CONSUMED, "line1",
        lookups=(("material", name, lookups[name]),),
        units=UnitsSection(mass="g", fraction="%"), counters=MappingCounters(),
        **options,  # type: ignore[arg-type]
    )


def reading(material: str, quantity: float, unit: str) -> Reading:
    return Reading("erp", "record", f"k:{material}:{unit}", NOW, attributes=(
        ("material", material), ("quantity", quantity), ("unit", unit),
    ))


def test_lookups_units_and_conversion_on_a_record() -> None:
    r = rule()
    data, flags = r.event_data_flagged(reading("A-17", 1.5, "KGM"))
    assert (data["material"], data["quantity"], data["unit"], flags) == (
        "MAT-117", 1500.0, "g", []
    )
    data, flags = r.event_data_flagged(reading("B-1", 2, "EA"))  # pieces stay pieces
    assert (data["material"], data["quantity"], data["unit"], flags) == (
        "B-1", 2.0, "1", ["materials:B-1"]
    )
    data, flags = r.event_data_flagged(reading("A-17", 2, "XYZ"))  # passed on, flagged
    assert (data["unit"], flags) == ("XYZ", ["unit:XYZ"])
    assert r.counters.record_codes_unmapped_total == {"erp": 1}
    assert r.counters.record_units_unknown_total == {"erp": 1}
    assert r.counters.record_units_normalised_total == {"erp": 2}
    assert r.counters.codes_unmapped_total == {"materials": 1}
    # Checking (a webhook's 400 decision) counts nothing.
    assert r.problems(reading("B-1", 2, "XYZ")) == []
    assert r.counters.record_units_unknown_total == {"erp": 1}


def test_the_policies_that_reject_a_record() -> None:
    mapper = Mapper([], records=[rule(lookup="strict", unknown_units="reject")])
    events, set_aside = mapper.map_all([reading("B-1", 1, "KGM"), reading("A-17", 1, "XYZ")])
    assert [e.type.name for e in events] == ["record.rejected.v1", "record.rejected.v1"]
    assert [e.data["column"] for e in events] == ["material", "unit"]
    assert len(set_aside) == 2
    assert "(unmapped = \"dead-letter\")" in str(events[0].data["reason"])


HEAD = """
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "state"
[hub]
url = "mqtt://127.0.0.1:1883"
[[sources]]
name = "erp"
type = "mes-files"
folder = "drop"
event = "material.consumed"
asset = "line1"
"""


def test_a_record_lookup_must_name_a_table_and_a_column(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    columns = """
  [sources.columns]
  material = { column = "M" }
  quantity = { column = "Q", type = "float", unit = "kg" }
"""
    config.write_text(HEAD + 'lookups = { material = "nope" }\n' + columns)
    with pytest.raises(ConfigError, match="unknown lookup 'nope'"):
        load_config(config)
    config.write_text(HEAD + 'lookups = { lot = "nope" }\n' + columns)
    with pytest.raises(ConfigError, match="lookups name 'lot', not in columns"):
        load_config(config)
    config.write_text(
        HEAD + 'lookups = { material = "m" }\n' + columns + '\n[lookups.m]\nentries = { a = "b" }\n'
    )
    [source] = load_config(config).sources
    assert isinstance(source, RecordSettings) and source.lookups == {"material": "m"}


def test_unknown_units_is_pass_or_reject() -> None:
    columns = {"material": {"column": "M"}}
    assert RecordSettings.model_validate({"columns": columns}).unknown_units == "pass"
    with pytest.raises(ValidationError):
        RecordSettings.model_validate({"columns": columns, "unknown_units": "drop"})
