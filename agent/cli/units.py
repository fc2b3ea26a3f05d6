"""The units command: which unit codes a config may write.

    edge-agent units                 the catalogue of common plant-floor units, by quantity
    edge-agent units search TEXT     units whose code, name or quantity contain TEXT (any
                                     case), from the catalogue and the whole UCUM table; TEXT
                                     that is itself a UCUM expression is explained first, TEXT
                                     that is not gets the code it most likely means

Every line is `CODE  NAME  QUANTITY (DIMENSION)`, the dimension in UCUM base units. Any valid
UCUM expression is accepted in a config, listed here or not (docs/units.md). Exit 0 when
something was listed, 1 when a search found nothing.
"""

from __future__ import annotations

import argparse

EXIT_OK, EXIT_FAILURE = 0, 1


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    units = commands.add_parser(
        "units",
        help="list the common UCUM unit codes, or search all of them",
        description="List the common UCUM unit codes by quantity, or search the catalogue and "
        "the whole UCUM table (`units search TEXT`). A config accepts any valid UCUM "
        "expression (m3/h, kg/min, [psi], 10*3.L); see docs/units.md.",
    )
    actions = units.add_subparsers(dest="units_action", metavar="ACTION")
    search = actions.add_parser(
        "search", help="units whose code, name or quantity contain TEXT (any case)"
    )
    search.add_argument("text", metavar="TEXT", help="a code, a name or a quantity: psi, flow")
    units.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "units_action", None) == "search":
        return _search(args.text)
    return _list()


def _list() -> int:
    from config import units

    by_kind: dict[str, list[str]] = {}
    for code in units.UNITS:
        by_kind.setdefault(units.dimension_name(code), []).append(code)
    for kind, codes in by_kind.items():
        print(f"{kind}:")
        for code in codes:
            print(f"  {_line(code)}")
    print(
        "Any valid UCUM expression is accepted too (m3/h, kg/min, 10*3.L): "
        "`edge-agent units search TEXT` searches the whole UCUM table."
    )
    return EXIT_OK


def _search(text: str) -> int:
    from config import ucum, units

    shown: list[str] = []
    try:
        found = units.unit(text)
    except units.UnitError as error:
        hint = units.suggest(text)
        if hint is not None:
            print(f"{text}: {error}")
            print(f"  {_line(hint)}")
            shown.append(hint)
    else:
        label = f", {found.label}" if found.label else ""
        print(f"{text}: valid UCUM{label}; {units.dimension_name(text)} ({found.dimension})")
        shown.append(text)
    needle = text.lower()
    candidates = list(units.UNITS) + [
        code for code in ucum.table().atoms if code not in units.UNITS
    ]
    for code in candidates:
        if code in shown:
            continue
        atom = ucum.table().atoms.get(code)
        words = [code, units.UNITS[code].label if code in units.UNITS else ""]
        if atom is not None:
            words += [atom.name, atom.property]
        try:
            words.append(units.dimension_name(code))
        except units.UnitError:
            continue  # a table entry that is no unit on its own (none in UCUM 2.2)
        if any(needle in word.lower() for word in words if word):
            shown.append(code)
            print(f"  {_line(code)}")
    if not shown:
        print(f"no unit code, name or quantity contains {text!r}")
        return EXIT_FAILURE
    return EXIT_OK


def _line(code: str) -> str:
    from config import ucum, units

    found = units.unit(code)
    atom = ucum.table().atoms.get(code)
    name = found.label or (atom.name if atom is not None else "")
    quantity = units.dimension_name(code)
    if atom is not None and atom.property and atom.property != quantity:
        quantity = (
            f"{quantity}, {atom.property}" if quantity != found.dimension else (atom.property)
        )
    return f"{code:<14} {name:<40} {quantity} ({found.dimension})"
