"""Signal templates: a signal set written once and instantiated per asset with parameters.

    [templates.filler]
    params = ["line"]
      [[templates.filler.signals]]
      node = "ns=2;s={line}.Filler.GoodCount"
      event = "production.count"
      asset = "{line}/filler"
      name = "good"

    [[sources]]
    name = "plant"
    type = "opcua"
      [[sources.instances]]
      template = "filler"
      params = { line = "L1" }
      overrides = { good = { rollover = 65535 } }

`expand` runs in config loading (`config.loader`), on the parsed TOML, before the schema sees
it: each instance becomes plain `[[sources.signals]]` tables appended to its source's own, in
instance order and, within one, in template order. Everything downstream (the schema's checks,
the mapping, status, `check-config --connect`, the tag export, `try`) sees plain signals, and
so a template instantiated for three lines produces the very events (ids included) of the
same signals written by hand. `[templates]` and `instances` are the loader's: they are
removed once expanded, so the schema (`config.schema.AgentConfig`) never sees them.

Rules (docs/templates.md):
- `{NAME}` in any string value of a template signal (nested tables and arrays included, keys
  excluded) is replaced by the instance's parameter NAME; `{{` and `}}` are literal braces. A
  value that is exactly one placeholder takes the parameter's own type (`rollover = "{max}"`
  with `max = 65535` is the integer 65535).
- An instance names its `template` and gives every declared parameter, and no other, in
  `params`; `overrides = { SIGNAL = { key = value } }` replaces keys of the template signal
  named SIGNAL (its `name` after substitution, else its `node`) for this instance only, as
  written (no substitution).

Invariants:
- `expand` never raises on any parsed TOML: what it cannot use it reports as `TemplateProblem`s
  on the key path as the file has it (`templates.filler.signals[0].node`,
  `sources[0].instances[1].params.line`), and leaves what is not its business (a `sources`
  that is not an array, a source without instances) to the schema, unchanged.
- `Expansion.origins` maps every generated signal (source index, signal index) to its
  template signal and instance, so a schema error on a generated signal is reported on the
  template's line with the instance named (`Expansion.place`).
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from config.toml_locator import KeyPath, TomlKeyLocator, format_key

TEMPLATE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_INSTANCE_KEYS = ("template", "params", "overrides")
_TEMPLATE_KEYS = ("params", "signals", "description")
# `{{`, `}}`, `{name}`, or a brace that is none of these (an error).
_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")

Scalar = str | int | float | bool


@dataclass(frozen=True, slots=True)
class Instance:
    """One `[[sources.instances]]` entry that named a usable template."""

    source: int  # index of its source in `sources`
    index: int  # its index in that source's `instances`
    template: str
    params: Mapping[str, Scalar]

    @property
    def key(self) -> KeyPath:
        return ("sources", self.source, "instances", self.index)

    def describe(self, line: int | None) -> str:
        """`template 'filler', instance sources[0].instances[1] (line 57: line = "L2")`."""
        where = f"line {line}" if line is not None else "no line"
        given = ", ".join(f"{name} = {_toml(value)}" for name, value in self.params.items())
        return (
            f"template {self.template!r}, instance {format_key(self.key)} "
            f"({where}{': ' + given if given else ''})"
        )


@dataclass(frozen=True, slots=True)
class SignalOrigin:
    """Where a generated signal comes from: signal `signal` of its template, for `instance`,
    with `overridden` keys (and `override`, the name they are listed under) from the instance."""

    instance: Instance
    signal: int
    override: str | None = None
    overridden: frozenset[str] = frozenset()

    def key_of(self, rest: KeyPath) -> KeyPath:
        """The file's key path of `rest` (a key inside the generated signal)."""
        if rest and self.override is not None and rest[0] in self.overridden:
            return (*self.instance.key, "overrides", self.override, *rest)
        return ("templates", self.instance.template, "signals", self.signal, *rest)


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """A template or instance that cannot be used: where (the file's key path), what is
    wrong, and the instance it concerns (None for a problem of the template itself)."""

    loc: KeyPath
    message: str
    instance: Instance | None = None


class _Found(list[TemplateProblem]):
    """The problems found so far."""

    def add(self, loc: KeyPath, message: str, instance: Instance | None = None) -> None:
        self.append(TemplateProblem(loc, message, instance))


@dataclass(slots=True)
class Expansion:
    """The parsed config with templates expanded (`data`), where each generated signal comes
    from (`origins`, by (source index, signal index)) and what could not be expanded."""

    data: dict[str, Any]
    origins: dict[tuple[int, int], SignalOrigin] = field(default_factory=dict)
    problems: _Found = field(default_factory=_Found)

    def place(self, key: KeyPath) -> tuple[KeyPath, Instance | None]:
        """A key path of the expanded config as the file has it, and the instance it belongs
        to: `sources[0].signals[5].event` of a generated signal is its template signal's
        `event` (or the instance's override); any other path is returned unchanged."""
        if len(key) >= 4 and key[0] == "sources" and key[2] == "signals":
            source, signal = key[1], key[3]
            if isinstance(source, int) and isinstance(signal, int):
                origin = self.origins.get((source, signal))
                if origin is not None:
                    return origin.key_of(key[4:]), origin.instance
        return key, None


@dataclass(frozen=True, slots=True)
class _Template:
    name: str
    params: tuple[str, ...]
    signals: tuple[dict[str, Any], ...]
    usable: bool  # False: its signals have problems (reported); instances are checked only


def expand(data: dict[str, Any], *, record_types: Container[str] = ()) -> Expansion:
    """Expand `[templates]` into the `[[sources.signals]]` of every instance (module
    docstring). `record_types`: the source types that have no signals (an instance there is
    a problem)."""
    result = Expansion({key: value for key, value in data.items() if key != "templates"})
    templates = _templates(data.get("templates", {}), result.problems)
    sources = data.get("sources")
    if not isinstance(sources, list):
        return result
    expanded: list[object] = []
    for index, source in enumerate(sources):
        if isinstance(source, dict) and "instances" in source:
            source = _expand_source(index, source, templates, record_types, result)
        expanded.append(source)
    result.data["sources"] = expanded
    return result


class ExpandedLocator:
    """`TomlKeyLocator` for key paths of a loaded config: a generated signal's key is placed
    on its template's line (or its instance's override), with the instance named, as the
    loader's own errors are. For what reports on a loaded config after loading
    (`check-config --connect`): `line_of` is a drop-in for `TomlKeyLocator.line_of`."""

    def __init__(self, text: str) -> None:
        self._lines = TomlKeyLocator(text)
        try:
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError, ValueError):
            data = {}  # not a loadable config: no generated signals to place
        self._expansion = expand(data)

    def line_of(self, key: KeyPath) -> int | None:
        return self._lines.line_of(self._expansion.place(key)[0])

    def place(self, key: KeyPath) -> tuple[int | None, KeyPath, str]:
        """The line, the file's key path and a note naming the instance ("" if none)."""
        placed, instance = self._expansion.place(key)
        note = "" if instance is None else instance.describe(self._lines.line_of(instance.key))
        return self._lines.line_of(placed), placed, note


# --- templates ----------------------------------------------------------------------------------


def _templates(raw: object, problems: _Found) -> dict[str, _Template | None]:
    """The defined templates by name; None for one with problems (reported here)."""
    if not isinstance(raw, dict):
        problems.add(("templates",), "expected a table of templates, e.g. [templates.filler]")
        return {}
    return {name: _template(name, body, problems) for name, body in raw.items()}


def _template(name: str, body: object, problems: _Found) -> _Template | None:
    here: KeyPath = ("templates", name)
    found = _Found()
    if not TEMPLATE_NAME.fullmatch(name):
        found.add(
            here, f"template name {name!r}: expected letters, digits, '_' or '-' (at most 64)"
        )
    if not isinstance(body, dict):
        problems.add(
            here, "expected a table: [templates.NAME] with `params` and [[templates.NAME.signals]]"
        )
        return None
    for key in body:
        if key not in _TEMPLATE_KEYS:
            found.add((*here, key), _unknown("unknown key", key, _TEMPLATE_KEYS, "allowed keys"))
    params = _params(here, body.get("params", []), found)
    signals = body.get("signals")
    if signals is None:
        found.add(
            (*here, "signals"),
            f"missing required key (add at least one [[templates.{name}.signals]] section)",
        )
    elif not isinstance(signals, list) or not all(isinstance(s, dict) for s in signals):
        found.add((*here, "signals"), f"expected [[templates.{name}.signals]] sections")
    elif not signals:
        found.add((*here, "signals"), "expected at least 1 signal")
    else:
        for number, signal in enumerate(signals):
            where = (*here, "signals", number)
            for key_path, text in _strings(signal, ()):
                for message in _placeholder_problems(text, params, name):
                    found.add((*where, *key_path), message)
    problems.extend(found)
    if not isinstance(signals, list) or any(p.loc[:3] == (*here, "params") for p in found):
        return None  # nothing to check an instance against
    return _Template(name, params, tuple(signals), usable=not found)


def _params(here: KeyPath, raw: object, problems: _Found) -> tuple[str, ...]:
    where = (*here, "params")
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        problems.add(where, 'expected an array of parameter names, e.g. params = ["line", "ns"]')
        return ()
    for param in raw:
        if not PARAM_NAME.fullmatch(param):
            problems.add(
                where,
                f"parameter name {param!r}: expected a letter or '_', then letters, digits or '_'",
            )
    repeated = sorted({p for p in raw if raw.count(p) > 1})
    if repeated:
        problems.add(where, f"parameter(s) listed twice: {', '.join(map(repr, repeated))}")
    return tuple(dict.fromkeys(raw))


def _strings(value: object, path: KeyPath) -> list[tuple[KeyPath, str]]:
    """Every string inside `value` with its key path (array elements by index)."""
    if isinstance(value, str):
        return [(path, value)]
    found: list[tuple[KeyPath, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_strings(item, (*path, key)))
    elif isinstance(value, list):
        for number, item in enumerate(value):
            found.extend(_strings(item, (*path, number)))
    return found


def _placeholder_problems(text: str, params: tuple[str, ...], template: str) -> list[str]:
    problems: list[str] = []
    for match in _TOKEN.finditer(text):
        name = match.group(1)
        token = match.group()
        if token in ("{{", "}}"):
            continue
        if name is None:
            problems.append(
                f"unmatched {token!r} in {text!r}: a placeholder is {{NAME}}; write "
                f"{token * 2!r} for a literal brace"
            )
        elif name not in params:
            close = difflib.get_close_matches(name, params, n=1)
            hint = f"did you mean {{{close[0]}}}? " if close else ""
            declared = ", ".join(params) or "none"
            problems.append(
                f"placeholder {{{name}}} is not a parameter of template {template!r} "
                f"({hint}its params: {declared}; declare it in `params`)"
            )
    return problems


# --- instances ----------------------------------------------------------------------------------


def _expand_source(
    index: int,
    source: dict[str, Any],
    templates: Mapping[str, _Template | None],
    record_types: Container[str],
    result: Expansion,
) -> dict[str, Any]:
    """The source with its instances' signals appended to its own (and no `instances`)."""
    expanded = {key: value for key, value in source.items() if key != "instances"}
    where: KeyPath = ("sources", index, "instances")
    raw = source["instances"]
    kind = source.get("type")
    if isinstance(kind, str) and kind in record_types:
        result.problems.add(
            where,
            f"a {kind} source has no signals (each of its records is an event), so no "
            "template instances; templates hold signals for opcua or simulated sources",
        )
        return expanded
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        result.problems.add(where, "expected [[sources.instances]] sections")
        return expanded
    own = source.get("signals", [])
    if not isinstance(own, list):
        return expanded  # the schema reports `signals`
    signals: list[object] = list(own)
    # node -> who lists it first: a hand-written signal's key path, or an instance
    nodes: dict[str, str] = {
        signal["node"]: format_key(("sources", index, "signals", number))
        for number, signal in enumerate(own)
        if isinstance(signal, dict) and isinstance(signal.get("node"), str)
    }
    name = source.get("name")
    source_name = repr(name) if isinstance(name, str) else f"sources[{index}]"
    for number, body in enumerate(raw):
        made = _instantiate(index, number, body, templates, result.problems)
        if _repeated_nodes(made, nodes, source_name, result.problems):
            continue
        for origin, signal in made:
            node = signal.get("node")
            if isinstance(node, str):
                nodes[node] = f"instance {format_key(origin.instance.key)}"
            result.origins[(index, len(signals))] = origin
            signals.append(signal)
    expanded["signals"] = signals
    return expanded


def _repeated_nodes(
    made: list[tuple[SignalOrigin, dict[str, Any]]],
    nodes: Mapping[str, str],
    source_name: str,
    problems: _Found,
) -> bool:
    """Report the nodes of one instance that its source already lists (`nodes`: node -> who
    lists it) or that the instance lists twice; True if there are any."""
    if not made:
        return False
    instance = made[0][0].instance
    seen: dict[str, str] = {}
    repeated: list[tuple[str, str]] = []  # (node, who lists it first)
    twice = False
    for origin, signal in made:
        node = signal.get("node")
        if not isinstance(node, str):
            continue
        if node in seen:  # the template gives two signals one node (for these parameters)
            problems.add(
                origin.key_of(("node",)),
                f"node {node!r} is listed twice in template {instance.template!r} (signals "
                f"{seen[node]} and {origin.signal}); each signal needs its own node",
                instance,
            )
            twice = True
        elif node in nodes:
            repeated.append((node, nodes[node]))
        seen[node] = str(origin.signal)
    if repeated:
        # one problem for the instance: its parameters are what is wrong, not each node
        owners = sorted({first for _, first in repeated})
        shown = ", ".join(repr(node) for node, _ in repeated[:3])
        more = f" and {len(repeated) - 3} more" if len(repeated) > 3 else ""
        problems.add(
            (*instance.key, "params"),
            f"{len(repeated)} node(s) of this instance are already listed in source "
            f"{source_name} by {', '.join(owners)}: {shown}{more}; give the instances "
            "different parameters",
            instance,
        )
    return twice or bool(repeated)


def _instantiate(
    source: int,
    index: int,
    body: dict[str, Any],
    templates: Mapping[str, _Template | None],
    problems: _Found,
) -> list[tuple[SignalOrigin, dict[str, Any]]]:
    """The signals of one instance, with their origins; [] when it has problems (reported)."""
    here: KeyPath = ("sources", source, "instances", index)
    name = body.get("template")
    defined = ", ".join(sorted(templates)) or "none; define one with [templates.NAME]"
    if name is None:
        problems.add(
            (*here, "template"), f"missing required key: the template's name (defined: {defined})"
        )
        return []
    if not isinstance(name, str):
        problems.add((*here, "template"), "expected text in double quotes")
        return []
    if name not in templates:
        close = difflib.get_close_matches(name, list(templates), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        problems.add((*here, "template"), f"unknown template {name!r} ({hint}defined: {defined})")
        return []
    template = templates[name]
    if template is None:
        return []  # its own problems are reported on [templates.NAME]
    found = _Found()
    for key in body:
        if key not in _INSTANCE_KEYS:
            hint = (
                f"; parameters go in `params`: params = {{ {key} = ... }}"
                if (key in template.params)
                else ""
            )
            found.add(
                (*here, key),
                _unknown("unknown key", key, _INSTANCE_KEYS, "allowed keys") + hint,
            )
    given = body.get("params", {})
    params: dict[str, Scalar] = {}
    if not isinstance(given, dict):
        found.add(
            (*here, "params"),
            f'expected a table of the parameters, e.g. params = {{ {template.params[0]} = "L1" }}'
            if template.params
            else "expected a table of the parameters",
        )
        given = {}
    for key, value in given.items():
        if key not in template.params:
            found.add(
                (*here, "params", key),
                _unknown(
                    f"template {name!r} has no parameter {key!r}",
                    key,
                    template.params,
                    "its params",
                ),
            )
        elif not isinstance(value, Scalar):
            found.add(
                (*here, "params", key),
                f"parameter {key!r}: expected text, a number or true/false, got "
                f"{'a table' if isinstance(value, dict) else 'an array'}",
            )
        else:
            params[key] = value
    missing = [param for param in template.params if param not in given]
    if missing:
        found.add(
            (*here, "params"),
            f"template {name!r} needs parameter(s) {', '.join(map(repr, missing))} "
            f"(its params: {', '.join(template.params)})",
        )
    instance = Instance(source, index, name, {p: params[p] for p in template.params if p in params})
    overrides = body.get("overrides", {})
    if not isinstance(overrides, dict) or not all(
        isinstance(table, dict) for table in overrides.values()
    ):
        found.add(
            (*here, "overrides"),
            "expected a table of signal name -> keys, e.g. overrides = { good = { rollover = "
            "65535 } }",
        )
        overrides = {}
    if found or not template.usable:
        problems.extend(found)
        return []
    made: list[tuple[SignalOrigin, dict[str, Any]]] = []
    for number, raw in enumerate(template.signals):
        signal = _substitute(raw, instance.params)
        assert isinstance(signal, dict)
        label = signal.get("name", signal.get("node"))
        override = overrides.get(label) if isinstance(label, str) else None
        if override is not None:
            assert isinstance(label, str)
            signal = {**signal, **override}
            origin = SignalOrigin(instance, number, label, frozenset(override))
        else:
            origin = SignalOrigin(instance, number)
        made.append((origin, signal))
    labels = [origin.override for origin, _ in made]
    names = [s.get("name", s.get("node")) for _, s in made]
    unknown = [label for label in overrides if label not in labels]
    for label in unknown:
        problems.add(
            (*here, "overrides", label),
            _unknown(
                f"template {name!r} has no signal named {label!r}",
                label,
                [n for n in names if isinstance(n, str)],
                "its signals",
            ),
            instance,
        )
    return [] if unknown else made


def _substitute(value: object, params: Mapping[str, Scalar]) -> object:
    """`value` with every placeholder replaced (checked beforehand: all are declared)."""
    if isinstance(value, str):
        whole = _TOKEN.fullmatch(value)
        if whole is not None and whole.group(1) is not None:
            return params[whole.group(1)]  # the parameter's own type
        return _TOKEN.sub(lambda match: _text(match, params), value)
    if isinstance(value, dict):
        return {key: _substitute(item, params) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, params) for item in value]
    return value


def _text(match: re.Match[str], params: Mapping[str, Scalar]) -> str:
    token = match.group()
    if token in ("{{", "}}"):
        return token[0]
    value = params[match.group(1)]
    return _toml(value) if isinstance(value, bool) else str(value)


def _toml(value: Scalar) -> str:
    """A parameter's value as TOML spells it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else str(value)


def _unknown(message: str, key: str, allowed: tuple[str, ...] | list[str], known: str) -> str:
    """`message (did you mean 'x'? known: a, b)`."""
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{message} ({hint}{known}: {', '.join(allowed) or 'none'})"
