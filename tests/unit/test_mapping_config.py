"""Mapping errors in a config file are named by file, line and key path (check-config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from config.loader import ConfigError, ConfigProblem, load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"

BASE = """\
[agent]
site = "plant-a"
id = "edge-01"
[hub]
url = "mqtt://127.0.0.1:1883"
[units]
temperature = "Cel"
[lookups.materials]
file = "materials.csv"
[assets."line1"]
path = "acme/plant-a/packaging/line1"
[[sources]]
name = "line1"
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
[[sources.signals]]
node = "ns=2;s=T"
event = "telemetry"
asset = "line1/filler"
unit = "[degF]"
[[sources.signals]]
node = "ns=2;s=P"
asset = "line1"
context = "product"
lookup = "materials"
[[sources.signals]]
node = "ns=2;s=Stopped"
event = "machine.downtime"
asset = "line1/filler"
reason = "reason"
[[sources.signals]]
node = "ns=2;s=R"
name = "reason"
asset = "line1/filler"
"""
# Lines: 7 temperature, 9 file, 11 path, 20 unit, 25 lookup, 30 reason, 31-34 signal R.


def problems(
    tmp_path: Path, *replacements: tuple[str, str], csv: bool = True
) -> list[ConfigProblem]:
    text = BASE
    for old, new in replacements:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    if csv:
        (tmp_path / "materials.csv").write_text("plant,enterprise\nA-17,MAT-117\n")
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def where(found: list[ConfigProblem]) -> list[tuple[int | None, str]]:
    return [(p.line, p.key) for p in found]


def test_base_is_valid_and_the_csv_is_found_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "materials.csv").write_text("plant,enterprise\nA-17,MAT-117\n")
    (tmp_path / "agent.toml").write_text(BASE)
    config = load_config(tmp_path / "agent.toml")
    assert config.lookups["materials"].codes == {"A-17": "MAT-117"}


def test_unknown_unit(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, ('unit = "[degF]"', 'unit = "degF"'))
    assert (problem.line, problem.key) == (20, "sources[0].signals[0].unit")
    assert "unknown unit 'degF' (did you mean '[degF]'?" in problem.message


def test_incompatible_unit_pair(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, ('unit = "[degF]"', 'unit = "[degF]"\nto_unit = "bar"'))
    assert (problem.line, problem.key) == (21, "sources[0].signals[0].to_unit")
    assert problem.message == (
        "cannot convert '[degF]' (temperature) to 'bar' (pressure): the units measure different "
        "quantities"
    )


def test_units_section_entry_of_the_wrong_kind(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, ('temperature = "Cel"', 'temperature = "kPa"'))
    assert (problem.line, problem.key) == (7, "units.temperature")
    assert problem.message == "'kPa' is a unit of pressure, not of temperature"


def test_missing_lookup_file(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, csv=False)
    assert (problem.line, problem.key) == (9, "lookups.materials.file")
    assert problem.message == f"lookup file '{tmp_path / 'materials.csv'}' not found"


def test_bad_row_in_lookup_file(tmp_path: Path) -> None:
    (tmp_path / "materials.csv").write_text("plant,enterprise\nA-17,MAT-117\nA-17,MAT-9\n")
    [problem] = problems(tmp_path, csv=False)
    assert (problem.line, problem.key) == (9, "lookups.materials.file")
    assert problem.message == f"{tmp_path / 'materials.csv'}:3: plant code 'A-17' is listed twice"


def test_unknown_lookup(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, ('lookup = "materials"', 'lookup = "material"'))
    assert (problem.line, problem.key) == (25, "sources[0].signals[1].lookup")
    assert problem.message.startswith("unknown lookup 'material' (define [lookups.material]")


def test_reference_to_an_unknown_sibling(tmp_path: Path) -> None:
    found = problems(tmp_path, ('reason = "reason"', 'reason = "reasons"'))
    assert where(found) == [(30, "sources[0].signals[2].reason"), (31, "sources[0].signals[3]")]
    assert found[0].message == (
        "no signal named 'reasons' on asset 'line1/filler' (its signals: ns=2;s=Stopped, "
        "ns=2;s=T, reason)"
    )
    assert found[1].message.startswith("signal 'reason' feeds nothing")


def test_key_that_does_not_apply_to_the_event(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, ('reason = "reason"', 'reason = "reason"\nrollover = 999'))
    assert (problem.line, problem.key) == (31, "sources[0].signals[2].rollover")
    assert problem.message == (
        "`rollover` only applies to production.count signals, not to machine.downtime signals"
    )


def test_asset_without_isa95_path(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, ('asset = "line1"\n', 'asset = "line2"\n'))
    assert (problem.line, problem.key) == (23, "sources[0].signals[1].asset")
    assert problem.message.startswith("asset 'line2' has no ISA-95 path")


def test_trigger_with_two_conditions(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, ('unit = "[degF]"', 'trigger = { above = 1, below = 0 }'))
    assert (problem.line, problem.key) == (20, "sources[0].signals[0].trigger")
    assert problem.message.startswith("give exactly one of `above`, `below`")


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        ('lookup = "materials"', 'lookup = "nope"'),
        ('path = "acme/plant-a/packaging/line1"', 'path = "acme/line1"'),
    )
    assert where(found) == [(11, "assets.line1.path")]  # section errors come first
    found = problems(tmp_path, ('lookup = "materials"', 'lookup = "nope"'),
                     ('reason = "reason"', 'reason = "x"'))
    assert where(found) == [
        (25, "sources[0].signals[1].lookup"),
        (30, "sources[0].signals[2].reason"),
        (31, "sources[0].signals[3]"),
    ]


@pytest.mark.parametrize("name", ["filling-line.toml", "batch-reactor.toml", "mes.toml"])
def test_the_readme_examples_pass_check_config(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(EXAMPLES / name)]) == 0
    assert ": OK:" in capsys.readouterr().out
