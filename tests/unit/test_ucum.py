"""The UCUM grammar and table (config.ucum) and what config.units makes of them: any valid
expression, correct conversions, special and arbitrary units, annotations, errors."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config import ucum
from config.units import UNITS, UnitError, conversion, dimension_name, kind_of, same_unit, unit


def test_the_table_is_the_whole_ucum_essence() -> None:
    table = ucum.table()
    assert len(table.prefixes) == 24
    assert set(table.base) == {"m", "s", "g", "rad", "K", "C", "cd"}
    assert len(table.atoms) == 305 + 7


def test_every_atom_of_the_table_evaluates() -> None:
    for code, atom in ucum.table().atoms.items():
        measured = ucum.measure(code)
        assert measured.factor > 0, code
        assert (measured.special is not None) == (
            atom.special and code not in ("Cel", "[degF]", "[degRe]")
        ), code


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (1.0, "m3/h", "L/min", 1000.0 / 60.0),
        (1.0, "kg/min", "kg/h", 60.0),
        (1.0, "[psi]", "kPa", 6.894757293168361),
        (1.0, "L/min", "m3/h", 0.06),
        (1.0, "10*3.L", "m3", 1.0),
        (1.0, "[gal_us]/min", "L/s", 3.785411784 / 60),
        (1.0, "kW.h", "MJ", 3.6),
        (1.0, "N.m", "J", 1.0),
        (1.0, "[in_i]2", "cm2", 6.4516),
        (1.0, "km/h", "m/s", 1 / 3.6),
        (1.0, "mm[Hg]", "Pa", 133.322),
        (1.0, "[in_i'Hg]", "kPa", 0.0254 * 133.322),  # as UCUM defines it, via m[Hg]
        (1.0, "/min", "Hz", 1 / 60),
        (2.0, "g/L", "kg/m3", 2.0),
        (1.0, "kg{wet}/h", "kg/h", 1.0),
        (80.0, "[degRe]", "Cel", 100.0),
        (491.67, "[degR]", "K", 273.15),
        (1.0, "%", "[ppm]", 1e4),
        (1.0, "ug/mL", "mg/L", 1.0),
        (1.0, "m3.h-1", "m3/h", 1.0),
        (1.0, "/(m.s)", "m-1.s-1", 1.0),
    ],
)
def test_any_ucum_expression_converts(
    value: float, source: str, target: str, expected: float
) -> None:
    assert conversion(source, target).apply(value) == pytest.approx(expected, rel=1e-6)


def test_the_same_unit_written_two_ways_is_the_identity() -> None:
    assert conversion("L", "l").identity and same_unit("L", "l")
    assert same_unit("m3/h", "m3.h-1") and same_unit("kg", "10*3.g")
    assert not same_unit("Cel", "K") and not same_unit("bar", "m")


def test_exact_atoms_win_over_prefix_readings_and_case_matters() -> None:
    assert dimension_name("cd") == "luminous intensity"  # candela, not centi-day
    assert kind_of("Pa") == "pressure"
    assert kind_of("PA") == "current"  # peta-ampere: valid UCUM, what a case slip means
    assert kind_of("min") == "duration" and kind_of("mm") == "length"


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("Cel/min", r"non-ratio scale .* write K for a temperature difference, e.g. K/min"),
        ("[degF]2", r"non-ratio scale"),
        ("k[psi]", r"'\[psi\]' \(pound per square inch\) takes no prefix such as 'k' \(kilo\)"),
        ("kg/", r"a unit is missing at the end"),
        ("m..s", r"a unit is missing before '\.'"),
        ("(m/s", r"a '\(' is not closed"),
        ("m{x", r"an annotation is"),
        ("m[Hg", r"a '\[' or '\]' in 'm\[Hg' is not matched"),
        ("kg m", r"no spaces"),
        ("m³", r"plain ASCII"),
        ("", r"not empty"),
        ("m/furlong", r"'furlong' is not a UCUM unit"),
    ],
)
def test_invalid_expressions_say_what_is_wrong(code: str, reason: str) -> None:
    with pytest.raises(UnitError, match=reason):
        unit(code)


def test_special_units_convert_only_to_themselves() -> None:
    assert kind_of("[pH]") == "special [pH]"
    assert conversion("[pH]", "[pH]").identity
    with pytest.raises(UnitError, match="measure different quantities"):
        conversion("[pH]", "1")


def test_an_annotation_alone_is_not_a_fraction() -> None:
    # UCUM gives {rpm} the value 1; [units] fraction = "%" must not make 120 {rpm} 12000 %.
    assert kind_of("{rpm}") == "{rpm}"
    with pytest.raises(UnitError, match="measure different quantities"):
        conversion("{rpm}", "%")
    assert kind_of("{bottles}/min") == "rate"  # with a dimension, the annotation is a comment


def test_arbitrary_units_convert_only_among_themselves() -> None:
    assert conversion("[IU]/mL", "[IU]/L").apply(1.0) == pytest.approx(1000.0)
    with pytest.raises(UnitError, match="measure different quantities"):
        conversion("[IU]", "1")


@pytest.mark.parametrize(
    ("code", "meant"), [("EA", "'1'"), ("C62", "'1'"), ("PS", r"'\[psi\]'"), ("L2", "'L/min'")]
)
def test_rec20_codes_that_are_other_ucum_units_are_refused(code: str, meant: str) -> None:
    with pytest.raises(
        UnitError, match=rf"'{code}' is a UN/ECE Rec 20 code .* means something else: write {meant}"
    ):
        unit(code)


def test_catalogue_units_have_names_and_the_kinds_of_the_units_section() -> None:
    for code, known in UNITS.items():
        assert known.label, code
    assert kind_of("m3/h") == "volume_flow" and kind_of("kg/min") == "mass_flow"
    assert kind_of("m2") == "m2" and dimension_name("m2") == "area"


products = st.lists(st.sampled_from(sorted(UNITS)), min_size=1, max_size=3)


@given(numerator=products, denominator=products)
def test_products_and_quotients_multiply_the_factors(
    numerator: list[str], denominator: list[str]
) -> None:
    plain = [code for code in numerator + denominator if not _special_or_annotated(code)]
    numerator = [code for code in numerator if code in plain]
    denominator = [code for code in denominator if code in plain]
    if not numerator:
        return
    code = ".".join(f"({part})" for part in numerator)
    if denominator:
        code += "/(" + ".".join(f"({part})" for part in denominator) + ")"
    expected = math.prod(unit(part).factor for part in numerator) / math.prod(
        unit(part).factor for part in denominator
    )
    assert math.isclose(unit(code).factor, expected, rel_tol=1e-12)


def _special_or_annotated(code: str) -> bool:
    return unit(code).offset != 0.0 or "{" in code
