"""The UCUM code someone meant when they wrote a unit that is not UCUM.

`suggestion(text)` tries, in order, and returns the first candidate that is valid UCUM:

0. in a product or quotient, Cel as K (`Cel/min` -> `K/min`: a temperature difference);
1. the whole text as a common spelling (`degC`, `°C`, `psi`, `rpm`, `kWh`, `lbs`, `gpm`);
2. the text as a UN/ECE Rec 20 code (`KGM` -> `kg`, `CEL` -> `Cel`);
3. each unit of a product or quotient spelled the common way, and exponents written `^2`, `²`
   or `**2` (`m3/hr` -> `m3/h`, `m³/h` -> `m3/h`, `lb/in^2` -> `[lb_av]/[in_i]2`);
4. the same code in other letter case (`KPA` -> `kPa`, `cel` -> `Cel`);
5. the closest catalogue code by spelling, but never one of another temperature scale: a
   Celsius intent (`C`, `deg C`, `centigrade`) is never offered Fahrenheit, nor the reverse.

Pure functions over the UCUM table (`config.ucum`) and what the caller passes: the catalogue
codes and the Rec 20 table (`config.units.suggest` passes its own).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence

from config import ucum

# Common spellings (compared without case, spaces and dots of abbreviation) -> UCUM.
_SPELLINGS = {
    "degc": "Cel", "°c": "Cel", "℃": "Cel", "celsius": "Cel", "centigrade": "Cel",
    "degreesc": "Cel", "degreec": "Cel", "degreecelsius": "Cel", "degcelsius": "Cel",
    "degf": "[degF]", "°f": "[degF]", "℉": "[degF]", "fahrenheit": "[degF]",
    "degreesf": "[degF]", "degreef": "[degF]", "degk": "K", "°k": "K", "kelvin": "K",
    "psi": "[psi]", "psig": "[psi]", "psia": "[psi]", "lbf/in2": "[psi]",
    "inhg": "[in_i'Hg]", "mmhg": "mm[Hg]", "torr": "mm[Hg]", "mh2o": "m[H2O]",
    "mwc": "m[H2O]", "inh2o": "[in_i'H2O]", "inwc": "[in_i'H2O]",
    "rpm": "/min", "1/min": "/min", "u/min": "/min", "spm": "/min", "cpm": "/min",
    "rps": "/s", "1/s": "/s", "1/h": "/h",
    "hr": "h", "hrs": "h", "hour": "h", "hours": "h", "sec": "s", "secs": "s", "second": "s",
    "seconds": "s", "mins": "min", "minute": "min", "minutes": "min", "day": "d", "days": "d",
    "msec": "ms",
    "lb": "[lb_av]", "lbs": "[lb_av]", "pound": "[lb_av]", "pounds": "[lb_av]",
    "oz": "[oz_av]", "lbf": "[lbf_av]", "ton": "t", "tons": "t", "tonne": "t", "tonnes": "t",
    "kgs": "kg", "kilogram": "kg", "kilograms": "kg", "gram": "g", "grams": "g",
    "gal": "[gal_us]", "gallon": "[gal_us]", "gallons": "[gal_us]", "usgal": "[gal_us]",
    "impgal": "[gal_br]", "bbl": "[bbl_us]", "gpm": "[gal_us]/min", "gph": "[gal_us]/h",
    "lpm": "L/min", "lph": "L/h", "lps": "L/s", "ltr": "L", "lt": "L", "liter": "L",
    "litre": "L", "liters": "L", "litres": "L", "cc": "cm3", "ccm": "cm3",
    "in": "[in_i]", "inch": "[in_i]", "inches": "[in_i]", "ft": "[ft_i]", "feet": "[ft_i]",
    "foot": "[ft_i]", "yd": "[yd_i]", "mi": "[mi_i]", "mil": "[mil_i]",
    "µm": "um", "μm": "um", "micron": "um", "microns": "um",
    "kwh": "kW.h", "wh": "W.h", "mwh": "MW.h", "kvah": "kV.A.h", "kva": "kV.A",
    "hp": "[HP]", "btu": "[Btu_IT]", "kcal": "kcal_th", "cal": "cal_th",
    "ppm": "[ppm]", "ppb": "[ppb]", "ppt": "[pptr]", "‰": "[ppth]", "permille": "[ppth]",
    "pct": "%", "percent": "%", "°": "deg", "degree": "deg", "degrees": "deg",
    "ohm": "Ohm", "ohms": "Ohm", "Ω": "Ohm", "mho": "S", "cst": "mm2/s",
    "nm": "N.m", "knots": "[kn_i]", "kt": "[kn_i]", "mph": "[mi_i]/h", "kph": "km/h",
    "count": "1", "counts": "1", "pcs": "1", "pieces": "1", "each": "1", "ea": "1",
}  # fmt: skip
_SUPERSCRIPTS = str.maketrans({"²": "2", "³": "3", "¹": "1", "⁻": "-", "·": ".", "\u00d7": "."})
_PIECES = re.compile(r"([./])")
_POWER = re.compile(r"(\^|\*\*)([+-]?\d+)")
_CELSIUS_LIKE = re.compile(r"(?i)^(deg(ree)?s?[ _]?)?c$|cel|centigrade|°c")
_FAHRENHEIT_LIKE = re.compile(r"(?i)^(deg(ree)?s?[ _]?)?f$|fahr|°f")


def suggestion(
    text: str, catalogue: Sequence[str] = (), rec20: Mapping[str, str] | None = None
) -> str | None:
    """The valid UCUM code `text` most likely means, or None; `catalogue` (the common codes,
    for letter case and spelling) and `rec20` (Rec 20 code -> UCUM) widen the search."""
    for candidate in _candidates(text, catalogue, rec20 or {}):
        if candidate != text and _valid(candidate) and _same_scale(text, candidate):
            return candidate
    return None


def _candidates(text: str, catalogue: Sequence[str], rec20: Mapping[str, str]) -> list[str]:
    found: list[str] = []
    plain = text.strip()
    if re.search(r"[./]", plain) and "Cel" in plain:
        found.append(plain.replace("Cel", "K"))  # a rate or a product: a difference in K
    spelled = _SPELLINGS.get(_folded(plain))
    if spelled is not None:
        found.append(spelled)
    if plain.upper() in rec20:
        found.append(rec20[plain.upper()])
    found.append(_piecewise(plain))
    same_case = [code for code in catalogue if code.lower() == plain.lower()]
    same_case += [code for code in ucum.table().atoms if code.lower() == plain.lower()]
    found += same_case
    found += difflib.get_close_matches(plain, list(catalogue), n=3, cutoff=0.6)
    return found


def _folded(text: str) -> str:
    return re.sub(r"[\s.]", "", text).lower() if "/" not in text else text.lower()


def _piecewise(text: str) -> str:
    """Each unit of a product or quotient respelled, exponents as UCUM writes them."""
    text = _POWER.sub(r"\2", text.translate(_SUPERSCRIPTS)).replace(" ", "")
    text = text.replace("*", ".") if not text.startswith("10*") else text
    parts = _PIECES.split(text)
    fixed = []
    for part in parts:
        if part in ("", ".", "/") or _valid(part):
            fixed.append(part)
            continue
        power = re.match(r"^(.*?)([+-]?\d+)$", part)
        base, exp = (power.group(1), power.group(2)) if power else (part, "")
        spelled = _SPELLINGS.get(base.lower())
        fixed.append(spelled + exp if spelled is not None and "/" not in spelled else part)
    return "".join(fixed)


def _same_scale(text: str, candidate: str) -> bool:
    """A Celsius intent is never offered Fahrenheit (and the reverse)."""
    if _CELSIUS_LIKE.search(text) and candidate in ("[degF]", "[degRe]"):
        return False
    return not (_FAHRENHEIT_LIKE.search(text) and candidate == "Cel")


def _valid(code: str) -> bool:
    try:
        ucum.measure(code)
    except ucum.UcumError:
        return False
    return True
