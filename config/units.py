"""Units of measure: any UCUM code, its kind of quantity, and conversions between units.

A unit code is a case-sensitive UCUM expression (https://ucum.org): `Cel`, `[degF]`, `kg`,
`[lb_av]`, `m3/h`, `L/min`, `kg/min`, `[psi]`, `kW.h`, `/min`, `%`, `10*3.L`, ... `config.ucum`
parses and evaluates it against the official UCUM table (docs/units.md says why our own parser
and not a library). Each unit has a kind of quantity, derived from its dimension: one of
`KINDS` (`temperature`, `pressure`, `volume_flow`, ...: the keys of the `[units]` section) or,
for a dimension without a name there, the dimension in base units (`m2`, `m.s-2`). A unit is an
affine map to its dimension's base unit:

    base = value * factor + offset        (offset is non-zero only for Cel, [degF], [degRe])

Invariants:
- Two codes are convertible exactly when they have the same kind; `conversion(a, b)` returns a
  `Conversion` (y = x * scale + offset) or raises `UnitError` saying why not.
- A dimensionless unit with an annotation (`{rpm}`, `%{vol}`) is its own kind: UCUM gives `{rpm}`
  the value 1, and the agent will not turn 120 {rpm} into 12000 % through `[units] fraction`.
- Special units on other non-ratio scales (`[pH]`, `B[SPL]`) are valid and convert only to
  themselves; a special unit never takes part in a product (`Cel/min`: write `K/min`).
- A UN/ECE Rec 20 code that is also UCUM for something else (`EA` is exa-ampere, `C62` is
  coulomb to the 62nd, `PS` peta-siemens) is refused as a unit code, with the UCUM code meant.
- A conversion is exact up to float rounding; a round trip a -> b -> a returns the value within
  a relative 1e-9 (tests check this property).
- A code that is not UCUM gets a `UnitError` with a suggestion that understands the intent
  (`suggest`, `config.ucum_hints`: `degC` -> `Cel`, `psi` -> `[psi]`, `m3/hr` -> `m3/h`).

`UNITS` is the catalogue of common plant-floor units that `edge-agent units` lists; any valid
UCUM code is accepted, in the catalogue or not.

ERP unit codes: SAP and most ERPs exchange units as UN/ECE Recommendation 20 codes (`KGM`,
`LTR`, `MTR`, `C62`/`EA`/`H87` for pieces). `REC20_TO_UCUM` maps each one this agent knows to
its UCUM code and `UCUM_TO_REC20` back (one preferred Rec 20 code per UCUM code: `1` is `C62`,
"one", of which `EA` (each) and `H87` (piece) are plant-floor synonyms). `ucum_code` reads a
record's unit written either way; a hub that wants the ERP's codes maps back with `rec20_code`.
OPC UA EngineeringUnits carry the same Rec 20 codes (their UnitId, OPC UA Part 8 5.6.3).

This module is pure data and arithmetic; `config.mapping` uses it to validate unit keys and
`agent.flow.mapping` to convert values.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from config import ucum
from config.ucum_hints import suggestion as _suggestion

KINDS = (
    "temperature",
    "pressure",
    "mass",
    "volume",
    "length",
    "duration",
    "rate",
    "mass_flow",
    "volume_flow",
    "speed",
    "energy",
    "power",
    "current",
    "voltage",
    "force",
    "density",
    "fraction",
)

# The dimension (base unit exponents, `config.ucum.BASE_DIMENSIONS`) of each kind; and a few
# more named dimensions, for `edge-agent units` (no `[units]` key: their kind is the formula).
_KIND_DIMENSIONS: dict[str, dict[str, int]] = {
    "temperature": {"C": 1},
    "pressure": {"M": 1, "L": -1, "T": -2},
    "mass": {"M": 1},
    "volume": {"L": 3},
    "length": {"L": 1},
    "duration": {"T": 1},
    "rate": {"T": -1},
    "mass_flow": {"M": 1, "T": -1},
    "volume_flow": {"L": 3, "T": -1},
    "speed": {"L": 1, "T": -1},
    "energy": {"M": 1, "L": 2, "T": -2},
    "power": {"M": 1, "L": 2, "T": -3},
    "current": {"Q": 1, "T": -1},
    "voltage": {"M": 1, "L": 2, "T": -2, "Q": -1},
    "force": {"M": 1, "L": 1, "T": -2},
    "density": {"M": 1, "L": -3},
    "fraction": {},
}
_NAMED_DIMENSIONS: dict[str, dict[str, int]] = {
    "area": {"L": 2},
    "acceleration": {"L": 1, "T": -2},
    "plane angle": {"A": 1},
    "angular speed": {"A": 1, "T": -1},
    "electric charge": {"Q": 1},
    "electric resistance": {"M": 1, "L": 2, "T": -1, "Q": -2},
    "dynamic viscosity": {"M": 1, "L": -1, "T": -1},
    "kinematic viscosity": {"L": 2, "T": -1},
    "luminous intensity": {"F": 1},
}


def _key(dims: dict[str, int]) -> tuple[tuple[str, int], ...]:
    order = ucum.BASE_DIMENSIONS
    return tuple(sorted(dims.items(), key=lambda item: order.index(item[0])))


_KIND_OF_DIMENSION = {_key(dims): kind for kind, dims in _KIND_DIMENSIONS.items()}
_NAME_OF_DIMENSION = {_key(dims): name for name, dims in _NAMED_DIMENSIONS.items()}


class UnitError(ValueError):
    """An unknown unit code or two codes that cannot be converted into each other."""


@dataclass(frozen=True, slots=True)
class Unit:
    code: str
    kind: str
    factor: float  # to the dimension's UCUM base unit (g, not kg; m3, not L)
    offset: float = 0.0
    label: str = ""
    dimension: str = "1"  # in UCUM base units, e.g. "m-1.s-2.g" for a pressure


@dataclass(frozen=True, slots=True)
class Conversion:
    """y = x * scale + offset, from `source` to `target`."""

    source: str
    target: str
    scale: float
    offset: float

    def apply(self, value: float) -> float:
        return value * self.scale + self.offset

    @property
    def identity(self) -> bool:
        return self.scale == 1.0 and self.offset == 0.0


# The catalogue: common plant-floor units, by kind, with a name (`edge-agent units` lists them).
_CATALOGUE: tuple[tuple[str, str], ...] = (
    ("K", "kelvin"), ("Cel", "degree Celsius"), ("[degF]", "degree Fahrenheit"),
    ("Pa", "pascal"), ("hPa", "hectopascal"), ("kPa", "kilopascal"), ("MPa", "megapascal"),
    ("bar", "bar"), ("mbar", "millibar"), ("[psi]", "pound per square inch"),
    ("atm", "standard atmosphere"), ("mm[Hg]", "millimeter of mercury"),
    ("m[H2O]", "meter of water column"), ("[in_i'Hg]", "inch of mercury"),
    ("kg", "kilogram"), ("g", "gram"), ("mg", "milligram"), ("t", "tonne"),
    ("[lb_av]", "pound"), ("[oz_av]", "ounce"),
    ("m3", "cubic meter"), ("L", "liter"), ("dL", "deciliter"), ("cL", "centiliter"),
    ("mL", "milliliter"), ("hL", "hectoliter"), ("[gal_us]", "US gallon"),
    ("[gal_br]", "imperial gallon"), ("[bbl_us]", "US barrel"),
    ("m", "meter"), ("km", "kilometer"), ("cm", "centimeter"), ("mm", "millimeter"),
    ("um", "micrometer"), ("[in_i]", "inch"), ("[ft_i]", "foot"),
    ("s", "second"), ("ms", "millisecond"), ("min", "minute"), ("h", "hour"), ("d", "day"),
    ("/s", "per second"), ("/min", "per minute (rpm, strokes per minute)"),
    ("/h", "per hour"), ("Hz", "hertz"),
    ("{rpm}", "revolutions per minute as an annotation: the number 1 in UCUM; /min converts"),
    ("kg/s", "kilogram per second"), ("kg/min", "kilogram per minute"),
    ("kg/h", "kilogram per hour"), ("g/s", "gram per second"), ("t/h", "tonne per hour"),
    ("[lb_av]/h", "pound per hour"), ("[lb_av]/min", "pound per minute"),
    ("m3/s", "cubic meter per second"), ("m3/h", "cubic meter per hour"),
    ("L/s", "liter per second"), ("L/min", "liter per minute"), ("L/h", "liter per hour"),
    ("mL/min", "milliliter per minute"), ("[gal_us]/min", "US gallon per minute"),
    ("[gal_us]/h", "US gallon per hour"),
    ("m/s", "meter per second"), ("m/min", "meter per minute"), ("m/h", "meter per hour"),
    ("km/h", "kilometer per hour"), ("[ft_i]/min", "foot per minute"),
    ("J", "joule"), ("kJ", "kilojoule"), ("MJ", "megajoule"), ("W.h", "watt hour"),
    ("kW.h", "kilowatt hour"), ("MW.h", "megawatt hour"), ("cal_th", "thermochemical calorie"),
    ("kcal_th", "thermochemical kilocalorie"),
    ("W", "watt"), ("kW", "kilowatt"), ("MW", "megawatt"),
    ("A", "ampere"), ("mA", "milliampere"), ("V", "volt"), ("mV", "millivolt"),
    ("kV", "kilovolt"),
    ("N", "newton"), ("kN", "kilonewton"), ("[lbf_av]", "pound force"), ("N.m", "newton meter"),
    ("kg/m3", "kilogram per cubic meter"), ("g/L", "gram per liter"),
    ("g/cm3", "gram per cubic centimeter"), ("kg/L", "kilogram per liter"),
    ("1", "one (a count, a ratio)"), ("%", "percent"), ("[ppm]", "part per million"),
    ("[ppth]", "part per thousand"),
    ("m2", "square meter"), ("m/s2", "meter per square second"), ("deg", "degree (angle)"),
    ("mm2/s", "square millimeter per second (centistokes)"),
    ("Ohm", "ohm"), ("kW.h/t", "kilowatt hour per tonne"),
)  # fmt: skip


@functools.cache
def unit(code: str) -> Unit:
    """The unit of a UCUM code; `UnitError` naming what is wrong and the code likely meant."""
    meant = REC20_TO_UCUM.get(code)
    if meant is not None and meant != code:
        raise UnitError(
            f"{code!r} is a UN/ECE Rec 20 code ({meant!r} in UCUM); a unit here is a UCUM code"
            + (f", and {code!r} in UCUM means something else" if _valid(code) else "")
            + f": write {meant!r}"
        )
    try:
        measured = ucum.measure(code)
    except ucum.UcumError as error:
        hint = suggest(code)
        tip = ""
        if hint is not None:
            case = " UCUM codes are case-sensitive" if hint.lower() == code.lower() else ""
            tip = f" (did you mean {hint!r}?{case})"
        why = "" if error.reason == "not in the UCUM table" else f": {error.reason}"
        raise UnitError(
            f"unknown unit {code!r}{tip}{why}; `edge-agent units search TEXT` finds UCUM "
            "codes (docs/units.md)"
        ) from None
    dimension = ucum.dimension_text(measured.dimension)
    return Unit(
        code,
        _kind(measured, dimension),
        measured.factor,
        measured.shift * measured.factor,
        _LABELS.get(code) or _atom_name(code),
        dimension,
    )


def suggest(text: str) -> str | None:
    """The UCUM code `text` most likely means (`config.ucum_hints`), or None."""
    return _suggestion(text, list(UNITS), REC20_TO_UCUM)


def _valid(code: str) -> bool:
    try:
        ucum.measure(code)
    except ucum.UcumError:
        return False
    return True


def _kind(measured: ucum.Measure, dimension: str) -> str:
    if measured.special is not None:
        return f"special {measured.special}"
    if not measured.dimension and measured.annotations:
        return "{" + "}.{".join(measured.annotations) + "}"
    return _KIND_OF_DIMENSION.get(measured.dimension, dimension)


def _atom_name(code: str) -> str:
    atom = ucum.table().atoms.get(code)
    return atom.name if atom is not None else ""


def dimension_name(code: str) -> str:
    """What a unit measures, in words where it has a name: `pressure`, `area`, else its kind."""
    found = unit(code)
    measured = ucum.measure(code)
    named = _NAME_OF_DIMENSION.get(measured.dimension)
    return named or found.kind.replace("_", " ")


def kind_of(code: str) -> str:
    return unit(code).kind


def conversion(source: str, target: str) -> Conversion:
    """The conversion from `source` to `target`; `UnitError` if either is unknown or their kinds
    differ."""
    a, b = unit(source), unit(target)
    if a.kind != b.kind:
        raise UnitError(
            f"cannot convert {source!r} ({dimension_name(source)}) to {target!r} "
            f"({dimension_name(target)}): the units measure different quantities"
        )
    if a.code == b.code:
        return Conversion(source, target, 1.0, 0.0)
    scale, offset = a.factor / b.factor, (a.offset - b.offset) / b.factor
    if abs(scale - 1.0) < 1e-12 and abs(offset) < 1e-9:
        scale, offset = 1.0, 0.0  # `L` and `l`, `kg` and `10*3.g`: the same unit
    return Conversion(source, target, scale, offset)


def same_unit(a: str, b: str) -> bool:
    """Whether two valid codes are the same unit (`L` and `l`, `m3/h` and `m3.h-1`)."""
    try:
        return conversion(a, b).identity
    except UnitError:
        return False


# UN/ECE Recommendation 20 code -> UCUM code (the Rec 20 codes of catalogue units that ERPs
# send; the common unit names SAP plants write on the floor, `EA`, `PCE`, are accepted too).
REC20_TO_UCUM: dict[str, str] = {
    # counted pieces: "one", each, piece (PCE: the retired Rec 20 code many ERPs still send)
    "C62": "1",
    "EA": "1",
    "H87": "1",
    "PCE": "1",
    "P1": "%",
    # mass
    "KGM": "kg",
    "GRM": "g",
    "MGM": "mg",
    "TNE": "t",
    "LBR": "[lb_av]",
    "ONZ": "[oz_av]",
    # volume
    "LTR": "L",
    "MLT": "mL",
    "CLT": "cL",
    "DLT": "dL",
    "HLT": "hL",
    "MTQ": "m3",
    "GLL": "[gal_us]",
    "GLI": "[gal_br]",
    "BLL": "[bbl_us]",
    # length
    "MTR": "m",
    "KMT": "km",
    "CMT": "cm",
    "MMT": "mm",
    "4H": "um",
    "INH": "[in_i]",
    "FOT": "[ft_i]",
    # duration
    "SEC": "s",
    "C26": "ms",
    "MIN": "min",
    "HUR": "h",
    "DAY": "d",
    # temperature, pressure
    "KEL": "K",
    "CEL": "Cel",
    "FAH": "[degF]",
    "PAL": "Pa",
    "KPA": "kPa",
    "MPA": "MPa",
    "BAR": "bar",
    "MBR": "mbar",
    "PS": "[psi]",
    "ATM": "atm",
    # energy, power
    "JOU": "J",
    "KJO": "kJ",
    "WHR": "W.h",
    "KWH": "kW.h",
    "MWH": "MW.h",
    "WTT": "W",
    "KWT": "kW",
    "MAW": "MW",
    # flows
    "KGH": "kg/h",
    "KGS": "kg/s",
    "TNH": "t/h",
    "MQH": "m3/h",
    "MQS": "m3/s",
    "L2": "L/min",
}
# UCUM code -> its preferred Rec 20 code (the first listed above for it).
UCUM_TO_REC20: dict[str, str] = {}
for _rec20, _ucum in REC20_TO_UCUM.items():
    UCUM_TO_REC20.setdefault(_ucum, _rec20)


def ucum_code(code: str) -> str | None:
    """A unit as a record may give it, a catalogue UCUM code (`kg`) or UN/ECE Rec 20 (`KGM`),
    as its UCUM code; None when it is neither (an unknown code: the source's policy decides)."""
    text = code.strip()
    if text in UNITS:
        return text
    return REC20_TO_UCUM.get(text.upper())


def rec20_code(code: str) -> str | None:
    """The preferred UN/ECE Rec 20 code of a UCUM code (`kg` -> `KGM`, `1` -> `C62`); None
    when Rec 20 has none this agent knows."""
    return UCUM_TO_REC20.get(code)


UNITS: dict[str, Unit] = {}
_LABELS = dict(_CATALOGUE)
for _code, _label in _CATALOGUE:
    UNITS[_code] = unit(_code)
