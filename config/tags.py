"""OPC UA tag lists: config stubs from a browsed address space, and CSV import/export.

Three conversions, all pure (no I/O but the text given and returned):

- `stubs(nodes)`: browsed nodes (`connectors.opcua.browse.BrowsedNode`) -> `Stub`s, one per
  variable or event notifier that can feed an event; `stubs_toml` / `stubs_csv` write them.
  The suggestions are deliberately simple, and the TOML says so in its header:
    * node: the NodeId with its namespace URI (`nsu=URI;s=...`, stable across restarts);
    * event: a number -> telemetry; an integer whose name says it counts (count, counter,
      good, scrap, reject, total, pieces, parts) -> production.count; a Boolean -> telemetry
      (0/1; a run or fault bit is better as machine.state with a `states` table); an object
      that is an event notifier -> machine.alarm, mode = "events"; any other data type
      (String, DateTime, structures) -> no stub, listed in a comment;
    * unit (telemetry only): the UCUM code of the node's EngineeringUnits, from its UNECE Rec 20
      UnitId (`config.units.REC20_TO_UCUM`), else from its DisplayName (a UCUM or Rec 20 code,
      or a common symbol such as °C); when neither is known, no unit and a comment saying so;
    * asset: the folders of the browse path below Objects, lower case, `/`-separated
      (`Objects/Line1/Filler/Temp` -> `line1/filler`), whatever node the browse started at;
      `unassigned` for a variable directly in the Objects folder;
    * name: the browse name; names repeated within the output get their folders as prefix
      (`Filler.Temperature`, `Capper.Temperature`), as many as make them unique.
- `signals_csv(signals)`: a source's `[[sources.signals]]` tables (as written, from tomllib)
  -> CSV with the columns `COLUMNS`, as Kepware and Ignition users exchange tag lists: one
  column per common key and `extra`, an inline TOML table of every other key (`states`,
  `trigger`, ...), so that nothing is lost.
- `signals_from_csv(text, file)`: CSV -> signal tables, each checked as a signal of an
  `opcua` source (`config.source_models.OpcUaSignal`); `config.loader.ConfigError` lists
  every problem, each `FILE:LINE: COLUMN: what is wrong`, as a config file's problems are.
  `signals_toml` writes them as `[[sources.signals]]`.

Invariant (tests/unit/test_opcua_tags.py): export -> import gives the same signals: every key,
every value (quotes, commas, semicolons, newlines and non-ASCII text in cells included).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import units

if TYPE_CHECKING:
    from connectors.opcua.browse import BrowsedNode, EngineeringUnits

# The CSV columns, in order. Cells left empty mean "key not set".
TEXT_COLUMNS = ("name", "node", "event", "asset", "unit", "to_unit", "mode")
NUMBER_COLUMNS = ("sampling_interval_ms", "deadband_absolute", "deadband_percent",
                  "poll_interval_ms", "scale", "offset", "decimals")
COLUMNS = (*TEXT_COLUMNS, *NUMBER_COLUMNS, "extra", "description")

INTEGER_TYPES = {"SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
                 "Integer", "UInteger"}
NUMBER_TYPES = INTEGER_TYPES | {"Float", "Double", "Number", "Decimal"}
_COUNTER_NAME = re.compile(r"count|counter|good|scrap|reject|total|pieces|parts", re.IGNORECASE)
# EngineeringUnits display names that are neither UCUM nor Rec 20 codes but common on HMIs.
_SYMBOLS = {
    "°C": "Cel", "degC": "Cel", "°F": "[degF]", "degF": "[degF]", "psi": "[psi]",
    "rpm": "{rpm}", "l": "L", "l/min": "L/min", "l/h": "L/h", "m³": "m3", "m³/h": "m3/h",
    "kWh": "kW.h", "Wh": "W.h", "‰": "[ppth]",
}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ASSET_PART = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(slots=True)
class Stub:
    """One suggested `[[sources.signals]]` table and the comments that explain it."""

    keys: dict[str, Any]
    comments: list[str] = field(default_factory=list)
    path: tuple[str, ...] = ()


# --- EngineeringUnits -> UCUM ------------------------------------------------------------------


def rec20_of_unit_id(unit_id: int) -> str | None:
    """The UNECE Rec 20 common code packed in an EUInformation UnitId (OPC UA Part 8, 5.6.3:
    the code's ASCII characters, big-endian, in the low bytes): 4408652 -> "CEL"."""
    if unit_id <= 0 or unit_id >= 1 << 32:
        return None
    raw = unit_id.to_bytes(4, "big").lstrip(b"\0")
    try:
        code = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return code if code.isalnum() else None


def unit_id_of_rec20(code: str) -> int:
    """The inverse of `rec20_of_unit_id`: "CEL" -> 4408652 (what a server writes)."""
    return int.from_bytes(code.encode("ascii"), "big")


def ucum_of(eu: EngineeringUnits) -> tuple[str | None, str]:
    """The UCUM code for a node's EngineeringUnits and a note saying where it came from."""
    shown = eu.display_name or eu.description
    rec20 = rec20_of_unit_id(eu.unit_id)
    if rec20 is not None and rec20 in units.REC20_TO_UCUM:
        return units.REC20_TO_UCUM[rec20], f"EngineeringUnits {shown!r} (UNECE {rec20})"
    for text in (eu.display_name.strip(), eu.description.strip()):
        if not text:
            continue
        code = units.ucum_code(text) or _SYMBOLS.get(text)
        if code is not None and code in units.UNITS:
            return code, f"EngineeringUnits {text!r} (display name)"
        try:  # any other valid UCUM expression (`cP`, `m3/h`) is its own code
            return units.unit(text).code, f"EngineeringUnits {text!r} (display name)"
        except units.UnitError:
            pass
    known = f"UNECE {rec20}" if rec20 is not None else f"UnitId {eu.unit_id}"
    return None, (
        f"EngineeringUnits {shown!r} ({known}) is not a unit the agent knows; set `unit` "
        "to its UCUM code by hand"
    )


# --- browse -> stubs ---------------------------------------------------------------------------


def stubs(nodes: Iterable[BrowsedNode]) -> tuple[list[Stub], list[str]]:
    """Stubs for the nodes that can feed an event, and one comment per node left out."""
    made: list[Stub] = []
    skipped: list[str] = []
    for node in nodes:
        where = "/".join(node.path) or node.browse_name
        if node.node_class == "Object" and node.event_notifier:
            made.append(Stub({"node": node.node_id, "event": "machine.alarm",
                              "asset": _asset(node.path[:-1]), "mode": "events"},
                             ["event notifier: its alarms and conditions"], node.path))
            continue
        if node.node_class != "Variable":
            continue
        data_type = node.data_type or "?"
        keys: dict[str, Any] = {"node": node.node_id}
        comments = [f"{where}: {data_type}"]
        if data_type in INTEGER_TYPES and _COUNTER_NAME.search(node.browse_name):
            keys["event"] = "production.count"
            comments.append("an integer named like a counter")
        elif data_type in NUMBER_TYPES or data_type == "Boolean":
            keys["event"] = "telemetry"
            if data_type == "Boolean":
                comments.append("Boolean as 0/1; a run/fault bit may rather be machine.state "
                                "with states = { \"false\" = \"idle\", \"true\" = \"running\" }")
        else:
            skipped.append(f"{where} ({node.node_id}): {data_type}, no event kind fits")
            continue
        keys["asset"] = _asset(node.path[:-1])
        if keys["event"] == "telemetry" and node.units is not None:
            code, note = ucum_of(node.units)
            if code is not None:
                keys["unit"] = code
            comments.append(note)
        made.append(Stub(keys, comments, node.path))
    _name(made)
    return made, skipped


def _asset(folders: Sequence[str]) -> str:
    parts = [_ASSET_PART.sub("_", part).strip("_").lower() for part in folders]
    parts = [part for part in parts if part]
    return "/".join(parts) or "unassigned"


def _name(made: list[Stub]) -> None:
    """Each stub's `name`: its browse name, prefixed by as many folders as make it unique."""
    depth = {id(stub): 1 for stub in made}
    while True:
        names: dict[str, list[Stub]] = {}
        for stub in made:
            path = stub.path or (str(stub.keys["node"]),)
            names.setdefault(".".join(path[-depth[id(stub)]:]), []).append(stub)
        clashes = [group for group in names.values() if len(group) > 1]
        grown = False
        for group in clashes:
            for stub in group:
                if depth[id(stub)] < len(stub.path):
                    depth[id(stub)] += 1
                    grown = True
        if not grown:
            break
    for stub in made:
        path = stub.path or (str(stub.keys["node"]),)
        stub.keys = {"name": ".".join(path[-depth[id(stub)]:]), **stub.keys}


def stubs_toml(made: Sequence[Stub], skipped: Sequence[str], header: Sequence[str]) -> str:
    lines = [f"# {line}" if line else "#" for line in header]
    lines += [
        "# Suggested event kinds (check each): numbers -> telemetry; integers named like a",
        "# counter (count, good, scrap, total, ...) -> production.count; Boolean -> telemetry",
        "# (0/1); event notifiers -> machine.alarm. Units: UCUM codes from EngineeringUnits.",
        "# Paste under the [[sources]] of type \"opcua\" for this server, then run",
        "# `edge-agent check-config CONFIG --connect`.",
    ]
    for stub in made:
        lines.append("")
        lines += [f"# {comment}" for comment in stub.comments]
        lines.append("[[sources.signals]]")
        lines += [f"{_key(key)} = {toml_value(value)}" for key, value in stub.keys.items()]
    if skipped:
        lines += ["", "# Not emitted (no event kind fits their data type):"]
        lines += [f"#   {line}" for line in skipped]
    return "\n".join(lines) + "\n"


def stubs_csv(made: Sequence[Stub]) -> str:
    return _write_csv(
        [{**stub.keys} for stub in made], ["; ".join(stub.comments) for stub in made]
    )


# --- signals <-> CSV and TOML ------------------------------------------------------------------


def signals_csv(signals: Sequence[Mapping[str, Any]]) -> str:
    """The signals (tables as written in the config) as CSV with `COLUMNS`."""
    return _write_csv(signals, ["" for _ in signals])


def _write_csv(signals: Sequence[Mapping[str, Any]], descriptions: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    for signal, description in zip(signals, descriptions, strict=True):
        row = {column: "" for column in COLUMNS}
        extra: dict[str, Any] = {}
        for key, value in signal.items():
            if key in TEXT_COLUMNS and isinstance(value, str):
                row[key] = value
            elif key in NUMBER_COLUMNS and _is_number(value):
                row[key] = toml_value(value)
            else:
                extra[key] = value
        row["extra"] = toml_value(extra) if extra else ""
        row["description"] = description
        writer.writerow(row)
    return out.getvalue()


def signals_from_csv(text: str, file: Path) -> list[dict[str, Any]]:
    """The signal tables of a CSV tag list, each valid as a signal of an opcua source;
    `config.loader.ConfigError` lists every problem (`FILE:LINE: COLUMN: message`)."""
    from pydantic import ValidationError

    from config.loader import ConfigError, ConfigProblem
    from config.source_models import OpcUaSignal

    problems: list[ConfigProblem] = []
    reader = csv.DictReader(io.StringIO(text.removeprefix("\ufeff")))
    header = reader.fieldnames or []
    missing = [column for column in ("node", "asset") if column not in header]
    unknown = [column for column in header if column not in COLUMNS]
    if missing or unknown:
        what = []
        if missing:
            what.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            what.append(f"unknown column(s) {', '.join(unknown)}")
        raise ConfigError([ConfigProblem(
            file, 1, "", f"{'; '.join(what)} (the columns: {', '.join(COLUMNS)})"
        )])
    signals: list[dict[str, Any]] = []
    seen: dict[tuple[str, str], int] = {}
    for row in reader:
        line = reader.line_num
        signal, row_problems = _row_signal(row)
        problems += [ConfigProblem(file, line, column, message)
                     for column, message in row_problems]
        if row_problems:
            continue
        for key in ("node", "name"):
            if key in signal:
                first = seen.setdefault((key, str(signal[key])), line)
                if first != line:
                    problems.append(ConfigProblem(
                        file, line, key, f"{signal[key]!r} is already on line {first}"
                    ))
        try:
            OpcUaSignal.model_validate(signal)
        except ValidationError as error:
            for detail in error.errors():
                column = str(detail["loc"][0]) if detail["loc"] else ""
                if column and column not in COLUMNS:
                    column = f"extra.{column}"
                message = str(detail["msg"]).removeprefix("Value error, ")
                problems.append(ConfigProblem(file, line, column, message))
            continue
        signals.append(signal)
    if problems:
        raise ConfigError(problems)
    return signals


def _row_signal(row: Mapping[str, str | None]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A row's signal table and its problems as (column, message)."""
    signal: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    if None in row:  # more cells than columns
        problems.append(("", "more cells than the header has columns"))
    for column in TEXT_COLUMNS:
        cell = row.get(column) or ""
        if cell:
            signal[column] = cell
    for column in NUMBER_COLUMNS:
        cell = (row.get(column) or "").strip()
        if not cell:
            continue
        try:
            number: float | int = int(cell) if re.fullmatch(r"[+-]?\d+", cell) else float(cell)
        except ValueError:
            problems.append((column, f"{cell!r} is not a number"))
            continue
        if isinstance(number, float) and not math.isfinite(number):
            problems.append((column, f"{cell!r} is not a finite number"))
            continue
        signal[column] = number
    extra = (row.get("extra") or "").strip()
    if extra:
        try:
            table = tomllib.loads(f"extra = {extra}")["extra"]
        except tomllib.TOMLDecodeError as error:
            problems.append(("extra", (
                f"not an inline TOML table ({error}); write it like "
                "{ states = { 0 = \"idle\", 1 = \"running\" } }"
            )))
            table = {}
        if not isinstance(table, dict):
            problems.append(("extra", "expected an inline table { key = value, ... }"))
            table = {}
        for key, value in table.items():
            if key in signal:
                problems.append(("extra", f"{key!r} is also in its own column"))
            signal[key] = value
    return signal, problems


def signals_toml(signals: Sequence[Mapping[str, Any]], header: Sequence[str] = ()) -> str:
    """`[[sources.signals]]` tables for the signals, in the order given."""
    lines = [f"# {line}" for line in header]
    for signal in signals:
        if lines:
            lines.append("")
        lines.append("[[sources.signals]]")
        lines += [f"{_key(key)} = {toml_value(value)}" for key, value in signal.items()]
    return "\n".join(lines) + "\n"


def raw_signals(
    text: str, source: str | None, *, replacing: bool = False
) -> tuple[str, list[dict[str, Any]]]:
    """The name and the signal tables of the OPC UA source `source` (None: the first) in a
    config's TOML text, with its template instances expanded (docs/templates.md): what the
    agent runs. `replacing` (a tag import replaces the source's hand-written signals): a
    source that instantiates templates is refused, since its generated signals would then be
    listed twice. LookupError says why there is none."""
    from config.templates import expand

    data = tomllib.loads(text)
    written = {
        str(candidate.get("name")): candidate for candidate in data.get("sources", [])
        if isinstance(candidate, dict)
    }
    sources = [
        candidate for candidate in expand(data).data.get("sources", [])
        if isinstance(candidate, dict) and candidate.get("type") == "opcua"
    ]
    for candidate in sources:
        if source is None or candidate.get("name") == source:
            name = str(candidate.get("name"))
            if replacing and "instances" in written.get(name, {}):
                raise LookupError(
                    f"source {name!r} instantiates templates ([[sources.instances]]): a tag "
                    "list would replace its signals with the generated ones listed twice; "
                    "import into a source without instances, or edit the template"
                )
            return name, list(candidate.get("signals", []))
    names = ", ".join(str(candidate.get("name")) for candidate in sources) or "none"
    wanted = f"no OPC UA source {source!r}" if source else "no OPC UA source"
    raise LookupError(f"{wanted} (OPC UA sources: {names})")


# --- TOML values ------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """`value` (what tomllib gives: str, bool, int, float, list, dict) as TOML text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are TOML's basic-string escapes; DEL must be escaped too in TOML.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = ", ".join(f"{_key(str(key))} = {toml_value(item)}" for key, item in value.items())
        return "{ " + items + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_value(key)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
