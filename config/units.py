"""Units of measure: the UCUM codes the agent knows, their kind of quantity, and conversions.

A unit code is a case-sensitive UCUM code (https://ucum.org), e.g. `Cel`, `[degF]`, `kg`,
`[lb_av]`, `L/min`, `bar`, `kPa`, `/min`, `%`. Each known code belongs to one kind of quantity
(`temperature`, `pressure`, `mass`, ...) and is defined by an affine map to that kind's base unit:

    base = value * factor + offset        (offset is non-zero only for Cel and [degF])

Invariants:
- Two codes are convertible exactly when they have the same kind; `conversion(a, b)` returns a
  `Conversion` (y = x * scale + offset) or raises `UnitError` saying why not.
- A conversion is exact up to float rounding; a round trip a -> b -> a returns the value within
  a relative 1e-9 (tests check this property).

Why a hand table and not a library: the UCUM grammar is large (prefixes, annotations, arbitrary
products of units) and the libraries that implement it (`pint` with a UCUM definition file,
`ucumvert`) are large dependencies for an edge agent that needs about sixty plant-floor units.
A closed table also turns any code outside it into a `check-config` error naming the file and
line, instead of a parser accepting something surprising. A code missing here is one line to add.

ERP unit codes: SAP and most ERPs exchange units as UN/ECE Recommendation 20 codes (`KGM`,
`LTR`, `MTR`, `C62`/`EA`/`H87` for pieces). `REC20_TO_UCUM` maps each one this agent knows to
its UCUM code and `UCUM_TO_REC20` back (one preferred Rec 20 code per UCUM code: `1` is `C62`,
"one", of which `EA` (each) and `H87` (piece) are plant-floor synonyms). `ucum_code` reads a
record's unit written either way; a hub that wants the ERP's codes maps back with `rec20_code`.

This module is pure data and arithmetic; `config.schema` uses it to validate unit keys and
`agent.flow.mapping` to convert values.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

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


class UnitError(ValueError):
    """An unknown unit code or two codes that cannot be converted into each other."""


@dataclass(frozen=True, slots=True)
class Unit:
    code: str
    kind: str
    factor: float  # to the kind's base unit
    offset: float = 0.0
    label: str = ""


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


_LB = 0.45359237  # kg, exact by definition
_GAL_US = 3.785411784e-3  # m3, exact
_GAL_BR = 4.54609e-3  # m3, exact
_MIN, _H = 60.0, 3600.0

_TABLE = [
    # temperature, base K
    Unit("K", "temperature", 1.0, 0.0, "kelvin"),
    Unit("Cel", "temperature", 1.0, 273.15, "degree Celsius"),
    Unit("[degF]", "temperature", 5 / 9, 459.67 * 5 / 9, "degree Fahrenheit"),
    # pressure, base Pa
    Unit("Pa", "pressure", 1.0, label="pascal"),
    Unit("hPa", "pressure", 1e2),
    Unit("kPa", "pressure", 1e3),
    Unit("MPa", "pressure", 1e6),
    Unit("bar", "pressure", 1e5),
    Unit("mbar", "pressure", 1e2),
    Unit("[psi]", "pressure", 6894.757293168361, label="pound per square inch"),
    Unit("atm", "pressure", 101325.0),
    Unit("mm[Hg]", "pressure", 133.322387415),
    Unit("m[H2O]", "pressure", 9806.65),
    # mass, base kg
    Unit("kg", "mass", 1.0),
    Unit("g", "mass", 1e-3),
    Unit("mg", "mass", 1e-6),
    Unit("t", "mass", 1e3, label="tonne"),
    Unit("[lb_av]", "mass", _LB, label="pound"),
    Unit("[oz_av]", "mass", _LB / 16, label="ounce"),
    # volume, base m3
    Unit("m3", "volume", 1.0),
    Unit("L", "volume", 1e-3),
    Unit("dL", "volume", 1e-4),
    Unit("cL", "volume", 1e-5),
    Unit("mL", "volume", 1e-6),
    Unit("hL", "volume", 1e-1),
    Unit("[gal_us]", "volume", _GAL_US),
    Unit("[gal_br]", "volume", _GAL_BR),
    Unit("[bbl_us]", "volume", 42 * _GAL_US),
    # length, base m
    Unit("m", "length", 1.0),
    Unit("km", "length", 1e3),
    Unit("cm", "length", 1e-2),
    Unit("mm", "length", 1e-3),
    Unit("um", "length", 1e-6),
    Unit("[in_i]", "length", 0.0254),
    Unit("[ft_i]", "length", 0.3048),
    # duration, base s
    Unit("s", "duration", 1.0),
    Unit("ms", "duration", 1e-3),
    Unit("min", "duration", _MIN),
    Unit("h", "duration", _H),
    Unit("d", "duration", 86400.0),
    # rate (events per time, rotational speed), base 1/s
    Unit("/s", "rate", 1.0),
    Unit("/min", "rate", 1 / _MIN),
    Unit("/h", "rate", 1 / _H),
    Unit("Hz", "rate", 1.0),
    Unit("{rpm}", "rate", 1 / _MIN, label="revolutions per minute"),
    # mass flow, base kg/s
    Unit("kg/s", "mass_flow", 1.0),
    Unit("kg/min", "mass_flow", 1 / _MIN),
    Unit("kg/h", "mass_flow", 1 / _H),
    Unit("g/s", "mass_flow", 1e-3),
    Unit("t/h", "mass_flow", 1e3 / _H),
    Unit("[lb_av]/h", "mass_flow", _LB / _H),
    Unit("[lb_av]/min", "mass_flow", _LB / _MIN),
    # volume flow, base m3/s
    Unit("m3/s", "volume_flow", 1.0),
    Unit("m3/h", "volume_flow", 1 / _H),
    Unit("L/s", "volume_flow", 1e-3),
    Unit("L/min", "volume_flow", 1e-3 / _MIN),
    Unit("L/h", "volume_flow", 1e-3 / _H),
    Unit("mL/min", "volume_flow", 1e-6 / _MIN),
    Unit("[gal_us]/min", "volume_flow", _GAL_US / _MIN),
    Unit("[gal_us]/h", "volume_flow", _GAL_US / _H),
    # speed, base m/s
    Unit("m/s", "speed", 1.0),
    Unit("m/min", "speed", 1 / _MIN),
    Unit("m/h", "speed", 1 / _H),
    Unit("km/h", "speed", 1e3 / _H),
    Unit("[ft_i]/min", "speed", 0.3048 / _MIN),
    # energy, base J
    Unit("J", "energy", 1.0),
    Unit("kJ", "energy", 1e3),
    Unit("MJ", "energy", 1e6),
    Unit("W.h", "energy", _H),
    Unit("kW.h", "energy", 1e3 * _H),
    Unit("MW.h", "energy", 1e6 * _H),
    Unit("cal_th", "energy", 4.184),
    Unit("kcal_th", "energy", 4184.0),
    # power, base W
    Unit("W", "power", 1.0),
    Unit("kW", "power", 1e3),
    Unit("MW", "power", 1e6),
    # electric current, base A; voltage, base V
    Unit("A", "current", 1.0),
    Unit("mA", "current", 1e-3),
    Unit("V", "voltage", 1.0),
    Unit("mV", "voltage", 1e-3),
    Unit("kV", "voltage", 1e3),
    # force, base N
    Unit("N", "force", 1.0),
    Unit("kN", "force", 1e3),
    Unit("[lbf_av]", "force", _LB * 9.80665),
    # density, base kg/m3
    Unit("kg/m3", "density", 1.0),
    Unit("g/L", "density", 1.0),
    Unit("g/cm3", "density", 1e3),
    Unit("kg/L", "density", 1e3),
    # fraction, base 1
    Unit("1", "fraction", 1.0),
    Unit("%", "fraction", 1e-2),
    Unit("[ppm]", "fraction", 1e-6),
]

UNITS: dict[str, Unit] = {unit.code: unit for unit in _TABLE}


def unit(code: str) -> Unit:
    """The unit with this UCUM code; `UnitError` (with the closest known code) if unknown."""
    found = UNITS.get(code)
    if found is not None:
        return found
    close = difflib.get_close_matches(code, UNITS, n=1, cutoff=0.5)
    folded = [known for known in UNITS if known.lower() == code.lower()]
    hint = folded or close
    suggestion = f" (did you mean {hint[0]!r}? UCUM codes are case-sensitive)" if hint else ""
    raise UnitError(
        f"unknown unit {code!r}{suggestion}; known units: UCUM codes such as Cel, [degF], K, "
        "bar, kPa, [psi], kg, [lb_av], L, m3, L/min, kg/h, /min, %, s (see config/units.py)"
    )


def kind_of(code: str) -> str:
    return unit(code).kind


def conversion(source: str, target: str) -> Conversion:
    """The conversion from `source` to `target`; `UnitError` if either is unknown or their kinds
    differ."""
    a, b = unit(source), unit(target)
    if a.kind != b.kind:
        raise UnitError(
            f"cannot convert {source!r} ({a.kind}) to {target!r} ({b.kind}): "
            "the units measure different quantities"
        )
    if a.code == b.code:
        return Conversion(source, target, 1.0, 0.0)
    return Conversion(source, target, a.factor / b.factor, (a.offset - b.offset) / b.factor)


# UN/ECE Recommendation 20 code -> UCUM code (the Rec 20 codes of the units above that ERPs
# send; the common unit names SAP plants write on the floor, `EA`, `PCE`, are accepted too).
REC20_TO_UCUM: dict[str, str] = {
    # counted pieces: "one", each, piece (PCE: the retired Rec 20 code many ERPs still send)
    "C62": "1", "EA": "1", "H87": "1", "PCE": "1", "P1": "%",
    # mass
    "KGM": "kg", "GRM": "g", "MGM": "mg", "TNE": "t", "LBR": "[lb_av]", "ONZ": "[oz_av]",
    # volume
    "LTR": "L", "MLT": "mL", "CLT": "cL", "DLT": "dL", "HLT": "hL", "MTQ": "m3",
    "GLL": "[gal_us]", "GLI": "[gal_br]", "BLL": "[bbl_us]",
    # length
    "MTR": "m", "KMT": "km", "CMT": "cm", "MMT": "mm", "4H": "um", "INH": "[in_i]",
    "FOT": "[ft_i]",
    # duration
    "SEC": "s", "C26": "ms", "MIN": "min", "HUR": "h", "DAY": "d",
    # temperature, pressure
    "KEL": "K", "CEL": "Cel", "FAH": "[degF]", "PAL": "Pa", "KPA": "kPa", "MPA": "MPa",
    "BAR": "bar", "MBR": "mbar", "PS": "[psi]", "ATM": "atm",
    # energy, power
    "JOU": "J", "KJO": "kJ", "WHR": "W.h", "KWH": "kW.h", "MWH": "MW.h", "WTT": "W",
    "KWT": "kW", "MAW": "MW",
    # flows
    "KGH": "kg/h", "KGS": "kg/s", "TNH": "t/h", "MQH": "m3/h", "MQS": "m3/s", "L2": "L/min",
}
# UCUM code -> its preferred Rec 20 code (the first listed above for it).
UCUM_TO_REC20: dict[str, str] = {}
for _rec20, _ucum in REC20_TO_UCUM.items():
    UCUM_TO_REC20.setdefault(_ucum, _rec20)


def ucum_code(code: str) -> str | None:
    """A unit as a record may give it, UCUM (`kg`) or UN/ECE Rec 20 (`KGM`), as its UCUM
    code; None when it is neither (an unknown code: the source's policy decides)."""
    text = code.strip()
    if text in UNITS:
        return text
    return REC20_TO_UCUM.get(text.upper())


def rec20_code(code: str) -> str | None:
    """The preferred UN/ECE Rec 20 code of a UCUM code (`kg` -> `KGM`, `1` -> `C62`); None
    when Rec 20 has none this agent knows."""
    return UCUM_TO_REC20.get(code)
