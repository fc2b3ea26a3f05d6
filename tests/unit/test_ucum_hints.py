"""Suggestions that understand what was meant (config.ucum_hints), `edge-agent units`, and the
unit rule of `check-config --connect` as a pure function (config.ucum_engineering; the same
against a real server: tests/integration/test_check_config_units.py)."""

from __future__ import annotations

import pytest

from agent.cli import main
from config import ucum, ucum_hints
from config.ucum_engineering import UnitMismatch, check, node_unit
from config.units import UnitError, suggest, unit
from connectors.opcua.browse import EngineeringUnits


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("degC", "Cel"),
        ("°C", "Cel"),
        ("deg C", "Cel"),
        ("Celsius", "Cel"),
        ("cel", "Cel"),
        ("degF", "[degF]"),
        ("°F", "[degF]"),
        ("psi", "[psi]"),
        ("PSIG", "[psi]"),
        ("rpm", "/min"),
        ("m3/hr", "m3/h"),
        ("m³/h", "m3/h"),
        ("kg/hr", "kg/h"),
        ("l/sec", "l/s"),
        ("lb/in^2", "[lb_av]/[in_i]2"),
        ("m/s²", "m/s2"),
        ("kWh", "kW.h"),
        ("gpm", "[gal_us]/min"),
        ("lbs", "[lb_av]"),
        ("KGM", "kg"),
        ("Cel/min", "K/min"),
        ("ppm", "[ppm]"),
    ],
)
def test_a_suggestion_is_the_code_that_was_meant(written: str, meant: str) -> None:
    assert suggest(written) == meant
    with pytest.raises(UnitError) as refused:
        unit(written)
    assert f"did you mean {meant!r}?" in str(refused.value) or (
        f"is a UN/ECE Rec 20 code ({meant!r} in UCUM)" in str(refused.value)
    )


@pytest.mark.parametrize("written", ["degC", "deg C", "C°", "Celsius", "centigrade", "°c", "degc"])
def test_a_celsius_intent_is_never_offered_fahrenheit(written: str) -> None:
    assert suggest(written) not in ("[degF]", "[degRe]")


def test_every_common_spelling_leads_to_valid_ucum() -> None:
    for written, meant in ucum_hints._SPELLINGS.items():
        assert ucum.measure(meant).factor > 0, written  # UcumError for a wrong target


def test_text_that_means_nothing_gets_no_suggestion() -> None:
    assert suggest("xyzzy") is None
    with pytest.raises(UnitError, match=r"^unknown unit 'xyzzy'; `edge-agent units search"):
        unit("xyzzy")


def test_units_lists_the_catalogue_by_quantity(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["units"]) == 0
    out = capsys.readouterr().out
    assert "temperature:\n  K " in out
    assert "  [psi]          pound per square inch" in out
    assert "  m3/h           cubic meter per hour" in out and "volume flow (m3.s-1)" in out


def test_units_search_explains_suggests_and_searches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["units", "search", "kg/min"]) == 0
    assert capsys.readouterr().out.startswith(
        "kg/min: valid UCUM, kilogram per minute; mass flow (g.s-1)\n"
    )
    assert main(["units", "search", "m3/hr"]) == 0
    out = capsys.readouterr().out
    assert "m3/hr: unknown unit 'm3/hr' (did you mean 'm3/h'?)" in out
    assert "  m3/h           cubic meter per hour" in out
    assert main(["units", "search", "viscosity"]) == 0
    out = capsys.readouterr().out
    assert "  P              Poise" in out and "dynamic viscosity (g.m-1.s-1)" in out
    assert main(["units", "search", "xyzzy"]) == 1
    assert "no unit code, name or quantity contains 'xyzzy'" in capsys.readouterr().out


def _eu(rec20: str | None, shown: str) -> EngineeringUnits:
    unit_id = int.from_bytes(rec20.encode("ascii"), "big") if rec20 else -1
    return EngineeringUnits(unit_id, shown, shown)


def test_the_node_unit_comes_from_unece_then_from_a_ucum_display_name() -> None:
    assert node_unit(_eu("CEL", "°C")).shown == "Cel (°C, UNECE CEL)"
    assert node_unit(_eu("C7", "cP")).code == "cP"  # C7 not in the table; cP is UCUM
    assert node_unit(_eu(None, "m3/h")).shown == "m3/h"
    unknown = node_unit(_eu(None, "Zentner"))
    assert (unknown.code, unknown.shown) == (None, "'Zentner'")


def test_the_unit_rule() -> None:
    celsius = _eu("CEL", "°C")
    assert check("a", "Cel", 1.0, 0.0, celsius, "seen").problem is None
    refused = check("a", "[degF]", 1.0, 0.0, celsius, "seen")
    assert isinstance(refused, UnitMismatch)
    assert refused.problem is not None and "set unit = 'Cel', and to_unit = '[degF]'" in (
        refused.problem
    )
    # scale/offset that are exactly Cel -> [degF] convert on purpose; others are refused.
    assert check("a", "[degF]", 1.8, 32.0, celsius, "seen").problem is None
    wrong = check("a", "[degF]", 1.8, 0.0, celsius, "seen")
    assert wrong.problem is not None and "set scale = 1.8, offset = 32" in wrong.problem
    # a raw (dimensionless) node value scaled to an engineering unit is on purpose
    assert check("a", "bar", 0.01, 0.0, _eu("P1", "%"), "seen").problem is None
    assert check("a", None, 1.0, 0.0, celsius, "seen").seen == (
        "seen, unit Cel (°C, UNECE CEL); the signal sets no `unit`"
    )
    assert check("a", "kg", 1.0, 0.0, _eu(None, "Zentner"), "seen").problem is None
