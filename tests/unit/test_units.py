"""Unit conversions against known values, and their properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.units import UNITS, UnitError, conversion, kind_of, unit


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (212.0, "[degF]", "Cel", 100.0),
        (32.0, "[degF]", "Cel", 0.0),
        (-40.0, "[degF]", "Cel", -40.0),
        (100.0, "Cel", "[degF]", 212.0),
        (0.0, "Cel", "K", 273.15),
        (0.0, "K", "[degF]", -459.67),
        (1.0, "[lb_av]", "kg", 0.45359237),
        (1.0, "kg", "g", 1000.0),
        (1.0, "bar", "kPa", 100.0),
        (14.503773773, "[psi]", "bar", 1.0),
        (1.0, "atm", "mbar", 1013.25),
        (1000.0, "L", "m3", 1.0),
        (1.0, "[gal_us]", "L", 3.785411784),
        (60.0, "L/min", "L/h", 3600.0),
        (1.0, "m3/h", "L/min", 1000.0 / 60.0),
        (120.0, "/min", "Hz", 2.0),
        (1.0, "kW.h", "MJ", 3.6),
        (50.0, "%", "1", 0.5),
        (1.0, "t/h", "kg/min", 1000.0 / 60.0),
    ],
)
def test_known_conversions(value: float, source: str, target: str, expected: float) -> None:
    assert conversion(source, target).apply(value) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_same_unit_is_the_identity() -> None:
    assert conversion("Cel", "Cel").identity
    assert not conversion("Cel", "K").identity


@pytest.mark.parametrize(("source", "target"), [("Cel", "bar"), ("kg", "L"), ("/min", "min")])
def test_units_of_different_kinds_do_not_convert(source: str, target: str) -> None:
    with pytest.raises(UnitError, match=r"cannot convert .* the units measure different"):
        conversion(source, target)


def test_unknown_unit_names_the_closest_code() -> None:
    with pytest.raises(UnitError, match=r"unknown unit 'degF' \(did you mean '\[degF\]'"):
        unit("degF")
    with pytest.raises(UnitError, match=r"did you mean 'Cel'\? UCUM codes are case-sensitive"):
        unit("cel")


def test_every_unit_has_a_known_kind_and_a_positive_factor() -> None:
    from config.units import KINDS

    assert {known.kind for known in UNITS.values()} >= set(KINDS)  # every [units] key has units
    for code, known in UNITS.items():
        assert known.factor > 0, code
        assert kind_of(code) == known.kind


codes_by_kind: dict[str, list[str]] = {}
for _code, _unit in UNITS.items():
    codes_by_kind.setdefault(_unit.kind, []).append(_code)
same_kind_pairs = st.sampled_from(sorted(codes_by_kind)).flatmap(
    lambda kind: st.tuples(*[st.sampled_from(codes_by_kind[kind])] * 2)
)
values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(pair=same_kind_pairs, value=values)
def test_round_trip_returns_the_value(pair: tuple[str, str], value: float) -> None:
    source, target = pair
    back = conversion(target, source).apply(conversion(source, target).apply(value))
    assert math.isclose(back, value, rel_tol=1e-9, abs_tol=1e-6)


@given(pair=same_kind_pairs, a=values, b=values)
def test_conversions_preserve_order(pair: tuple[str, str], a: float, b: float) -> None:
    forward = conversion(*pair)
    if a < b:
        assert forward.apply(a) <= forward.apply(b)


@given(pair=same_kind_pairs, value=values)
def test_converting_through_the_base_unit_is_the_same(pair: tuple[str, str], value: float) -> None:
    source, target = pair
    base = codes_by_kind[unit(source).kind][0]  # any unit of the kind as the pivot
    direct = conversion(source, target).apply(value)
    via = conversion(base, target).apply(conversion(source, base).apply(value))
    assert math.isclose(direct, via, rel_tol=1e-9, abs_tol=1e-6)
