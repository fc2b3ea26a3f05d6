"""UCUM expressions: parsing and evaluating any code of the Unified Code for Units of Measure.

The data is the official UCUM table, `config/ucum-essence.xml` (version 2.2, 2024-06-17, as
published by the UCUM organisation, unmodified; its licence: `config/ucum-essence.NOTICE`):
its 24 prefixes, 7 base units and 305 units. The grammar is the one of the UCUM specification:

    main-term  ::= "/" term | term
    term       ::= term "." component | term "/" component | component
    component  ::= annotatable annotation? | annotation | factor | "(" main-term ")"
    annotatable::= simple-unit exponent?
    simple-unit::= ATOM | PREFIX metric-ATOM
    exponent   ::= ("+" | "-")? digits
    annotation ::= "{" printable ASCII but "{" and "}" "}"

An expression evaluates to a `Measure`: a factor to the base units and a dimension (the
exponents of the base units `g m s rad K C cd`, plus one key per arbitrary unit such as `[IU]`,
which no other unit converts to). Invariants (tests/unit/test_ucum*.py):

- Case matters (`Pa` is pascal, `PA` peta-ampere; `L` and `l` are both liter) and the exact
  atom wins over a prefix reading (`cd` is candela, not centi-day).
- Special units (non-ratio scales) are the whole expression or nothing: `Cel`, `[degF]` and
  `[degRe]` convert affinely to kelvin; the others (`[pH]`, `B[SPL]`, `Np`, ...) are valid but
  convert only to themselves. `Cel/min` is refused with the fix (`K/min`), as UCUM requires.
- Annotations (`{rpm}`, `kg{wet}`) have no value of their own in UCUM; they are kept so that a
  dimensionless unit with an annotation is not silently turned into a percentage.
- Results are cached: evaluating a code is a dictionary look-up after the first time.
"""

from __future__ import annotations

import functools
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from importlib import resources

BASE_DIMENSIONS = ("M", "L", "T", "A", "C", "Q", "F")  # g m s rad K C cd, the base units
_NS = "{http://unitsofmeasure.org/ucum-essence}"
_ANNOTATION = re.compile(r"\{([!-z|~]*)\}")  # ASCII 33-126 without { and }
_EXPONENT = re.compile(r"^(.*?[^0-9+-])([+-]?[0-9]+)$")
# The special units whose function is affine: value in K = (x + shift) * scale.
_AFFINE = {"Cel": (273.15, 1.0), "[degF]": (459.67, 5 / 9), "[degRe]": (218.52, 5 / 4)}


class UcumError(ValueError):
    """Text that is not a valid UCUM expression: `code` and `reason`, what is wrong where."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code!r}: {reason}")
        self.code, self.reason = code, reason


@dataclass(frozen=True, slots=True)
class Atom:
    code: str
    name: str
    property: str  # the kind of quantity the table gives, e.g. "pressure"
    metric: bool
    special: bool = False
    arbitrary: bool = False
    definition: str = ""  # the defining expression, e.g. "[lbf_av]/[in_i]2"
    value: float = 1.0  # how many of `definition`


@dataclass(frozen=True, slots=True)
class Measure:
    """What a UCUM expression means: `factor` base units of `dimension`; for an affine special
    unit (`Cel`, `[degF]`) kelvin = (x + shift) * factor; for another special unit, `special`
    names it and it converts to nothing else."""

    factor: float
    dimension: tuple[tuple[str, int], ...]  # sorted (base, exponent), no zero exponents
    shift: float = 0.0
    special: str | None = None
    annotations: tuple[str, ...] = ()


@dataclass(slots=True)
class _Table:
    prefixes: dict[str, float] = field(default_factory=dict)
    prefix_names: dict[str, str] = field(default_factory=dict)
    atoms: dict[str, Atom] = field(default_factory=dict)
    base: dict[str, str] = field(default_factory=dict)  # base unit code -> dimension letter


@functools.cache
def table() -> _Table:
    """The UCUM table, read once from the packaged ucum-essence.xml."""
    text = resources.files("config").joinpath("ucum-essence.xml").read_bytes()
    root = ElementTree.fromstring(text)  # the packaged, trusted table
    found = _Table()
    for prefix in root.iter(f"{_NS}prefix"):
        code = prefix.get("Code", "")
        value = prefix.find(f"{_NS}value")
        found.prefixes[code] = float(value.get("value", "1") if value is not None else "1")
        found.prefix_names[code] = prefix.findtext(f"{_NS}name", "")
    for base in root.iter(f"{_NS}base-unit"):
        code = base.get("Code", "")
        found.base[code] = base.get("dim", "")
        found.atoms[code] = Atom(
            code, base.findtext(f"{_NS}name", ""), base.findtext(f"{_NS}property", ""), metric=True
        )
    for unit in root.iter(f"{_NS}unit"):
        code = unit.get("Code", "")
        value = unit.find(f"{_NS}value")
        definition, amount = "1", "1"
        if value is not None:
            definition, amount = value.get("Unit", "1"), value.get("value", "1")
        found.atoms[code] = Atom(
            code,
            unit.findtext(f"{_NS}name", ""),
            unit.findtext(f"{_NS}property", ""),
            metric=unit.get("isMetric") == "yes",
            special=unit.get("isSpecial") == "yes",
            arbitrary=unit.get("isArbitrary") == "yes",
            definition=definition,
            value=float(amount) if not unit.get("isSpecial") == "yes" else 1.0,
        )
    return found


@functools.cache
def measure(code: str) -> Measure:
    """The meaning of a UCUM expression; `UcumError` saying what is wrong where."""
    if not code or code != code.strip() or any(ch.isspace() for ch in code):
        raise UcumError(code, "a UCUM code has no spaces and is not empty")
    if not code.isascii():
        raise UcumError(code, "a UCUM code is plain ASCII (Cel for °C, m3 for m³)")
    special = _special(code)
    if special is not None:
        return special
    parser = _Parser(code)
    result = parser.main_term()
    return Measure(result.factor, _dim_tuple(result.dims), annotations=tuple(result.annotations))


def dimension_text(dimension: tuple[tuple[str, int], ...]) -> str:
    """A dimension in base units, e.g. `g.m-1.s-2` for a pressure; `1` for none."""
    symbols = {dim: code for code, dim in table().base.items()}
    parts = [f"{symbols.get(base, base)}{'' if exp == 1 else exp}" for base, exp in dimension]
    return ".".join(parts) or "1"


def _special(code: str) -> Measure | None:
    atom = table().atoms.get(code)
    if atom is None or not atom.special:
        return None
    if code in _AFFINE:
        shift, scale = _AFFINE[code]
        return Measure(scale, (("C", 1),), shift=shift, special=None)
    return Measure(1.0, (), special=code)


@dataclass(slots=True)
class _Value:
    factor: float = 1.0
    dims: dict[str, int] = field(default_factory=dict)
    annotations: list[str] = field(default_factory=list)

    def times(self, other: _Value, power: int = 1) -> _Value:
        dims = dict(self.dims)
        for base, exp in other.dims.items():
            dims[base] = dims.get(base, 0) + exp * power
        return _Value(
            self.factor * other.factor**power, dims, [*self.annotations, *other.annotations]
        )


def _dim_tuple(dims: dict[str, int]) -> tuple[tuple[str, int], ...]:
    order = {base: index for index, base in enumerate(BASE_DIMENSIONS)}
    kept = [(base, exp) for base, exp in dims.items() if exp != 0]
    return tuple(sorted(kept, key=lambda item: (order.get(item[0], len(order)), item[0])))


class _Parser:
    """A recursive-descent parser of one expression (the grammar in the module docstring)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, why: str) -> UcumError:
        return UcumError(self.text, f"{why} (at character {self.pos + 1})")

    def main_term(self) -> _Value:
        if self.text.startswith("/"):
            self.pos = 1
            value = _Value().times(self.term(), -1)
        else:
            value = self.term()
        if self.pos != len(self.text):
            raise self.fail(f"unexpected {self.text[self.pos]!r}")
        return value

    def term(self) -> _Value:
        value = self.component()
        while self.pos < len(self.text) and self.text[self.pos] in "./":
            operator = self.text[self.pos]
            self.pos += 1
            value = value.times(self.component(), 1 if operator == "." else -1)
        return value

    def component(self) -> _Value:
        if self.pos >= len(self.text):
            raise self.fail("a unit is missing at the end")
        char = self.text[self.pos]
        if char == "(":
            self.pos += 1
            if self.text.startswith("/", self.pos):  # "(/h)": as a main term (ucum-lhc too)
                self.pos += 1
                inner = _Value().times(self.term(), -1)
            else:
                inner = self.term()
            if self.pos >= len(self.text) or self.text[self.pos] != ")":
                raise self.fail("a '(' is not closed")
            self.pos += 1
            return inner
        if char == "{":
            return _Value(annotations=[self.annotation()])
        start = self.pos
        depth = 0
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "[":
                depth += 1
            elif char == "]":
                depth -= 1
            elif depth == 0 and char in "./(){}":
                break
            self.pos += 1
        word = self.text[start : self.pos]
        if not word:
            raise self.fail(f"a unit is missing before {self.text[self.pos]!r}")
        if depth != 0:
            raise UcumError(self.text, f"a '[' or ']' in {word!r} is not matched")
        value = self.annotatable(word, start)
        if self.pos < len(self.text) and self.text[self.pos] == "{":
            value.annotations.append(self.annotation())
        return value

    def annotation(self) -> str:
        match = _ANNOTATION.match(self.text, self.pos)
        if match is None:
            raise self.fail("an annotation is '{' printable ASCII without braces '}'")
        self.pos = match.end()
        return match.group(1)

    def annotatable(self, word: str, start: int) -> _Value:
        if word.isdigit():
            return _Value(float(word))
        symbol, power = word, 1
        exponent = _EXPONENT.match(word)
        if exponent is not None:
            symbol, power = exponent.group(1), int(exponent.group(2))
        return _Value().times(_simple_unit(symbol, self.text), power)


def _simple_unit(symbol: str, text: str) -> _Value:
    units = table()
    atom = units.atoms.get(symbol)
    prefix_factor = 1.0
    if atom is None:
        for size in (2, 1):
            prefix, rest = symbol[:size], symbol[size:]
            candidate = units.atoms.get(rest)
            if prefix in units.prefixes and candidate is not None:
                if not candidate.metric:
                    raise UcumError(
                        text,
                        f"{rest!r} ({candidate.name}) takes no prefix such as "
                        f"{prefix!r} ({units.prefix_names[prefix]})",
                    )
                atom, prefix_factor = candidate, units.prefixes[prefix]
                break
    if atom is None:
        raise UcumError(
            text, "not in the UCUM table" if symbol == text else (f"{symbol!r} is not a UCUM unit")
        )
    if atom.special:
        raise UcumError(
            text,
            f"{atom.code!r} ({atom.name}) is on a non-ratio scale and cannot be "
            "multiplied, divided, prefixed or raised to a power"
            + (
                "; write K for a temperature difference, e.g. K/min" if atom.code in _AFFINE else ""
            ),
        )
    value = _atom_value(atom.code)
    return _Value(value.factor * prefix_factor, dict(value.dims))


@functools.cache
def _atom_value(code: str) -> _Value:
    units = table()
    if code in units.base:
        return _Value(1.0, {units.base[code]: 1})
    atom = units.atoms[code]
    if atom.arbitrary:
        return _Value(1.0, {code: 1})
    inner = _Parser(atom.definition).main_term()
    return _Value(atom.value * inner.factor, dict(inner.dims))
