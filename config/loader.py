"""Load the agent's TOML configuration and report every problem as `FILE:LINE: KEY: MESSAGE`.

`load_config` reads the file (UTF-8; a leading byte-order mark is accepted), parses it with the
standard library's `tomllib`, expands signal templates (`config.templates`: each
`[[sources.instances]]` becomes plain signals), validates it against `config.schema.AgentConfig`
and resolves a relative `agent.state_dir` against the directory that holds the config file.
A problem in a signal that a template made is reported on the template's line (or on the
instance's override), naming the instance.

Whatever goes wrong, the caller gets one exception, `ConfigError`, carrying a list of
`ConfigProblem`s: a missing or unreadable file and a TOML syntax error give one problem each; a
schema violation gives one problem per pydantic error. The messages are written for the OT staff
who edit the file: what is wrong and what is expected, in the file's own terms (keys, sections,
`[[sources]]`), never pydantic's internal names.

`tomllib` keeps no positions, so line numbers of schema problems come from
`config.toml_locator.TomlKeyLocator`, a small line scanner over the same text (its docstring
says what it handles and what it does not). It runs on text that `tomllib` has already accepted
(or refused without a position), so it need not detect errors.

`ConfigError` is a config error in the sense of `agent.errors`: the agent refuses to start
(`check-config` exits 2); on a reload the running config is kept.
"""

from __future__ import annotations

import difflib
import re
import sys
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from config.commands import RAW_KEY_PREFIX, read_public_key_file
from config.schema import RECORD_SOURCES, AgentConfig
from config.templates import Expansion, Instance, TemplateProblem
from config.templates import expand as expand_templates
from config.toml_locator import KeyPart, KeyPath, TomlKeyLocator, format_key


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a config file.

    `line` is 1-based, or None when the problem has no line (missing file, missing section).
    `key` is the dotted path of the offending key, with array indexes counted from 0 in file
    order (`sources[0].signals[1].event`), or "" for a problem with the file as a whole.
    """

    file: Path
    line: int | None
    key: str
    message: str

    def format(self) -> str:
        """`FILE:LINE: KEY: MESSAGE`; an absent line or an empty key is left out with its colon."""
        where = str(self.file) if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every reason found, in file order."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line is not None, p.line or 0))
        super().__init__("\n".join(problem.format() for problem in self.problems))


def load_config(path: Path) -> AgentConfig:
    """Read, parse and validate the config file at `path`.

    A relative `agent.state_dir` is taken relative to the directory holding the file, so the
    agent finds its state wherever it is started from; the returned config holds the absolute
    path. Raises `ConfigError` listing every problem found.
    """
    text = _read_text(path)
    # [templates] and [[sources.instances]] become plain signals first (config.templates).
    expansion = expand_templates(_parse(path, text), record_types=_RECORD_TYPES)
    if expansion.problems:
        locator = TomlKeyLocator(text)
        raise ConfigError([_template_problem(path, locator, p) for p in expansion.problems])
    try:
        # config_dir: lookup CSV files are named relative to the config file (config.mapping).
        config = AgentConfig.model_validate(
            expansion.data, context={"config_dir": path.absolute().parent}
        )
    except ValidationError as error:
        locator = TomlKeyLocator(text)
        details = _without_consequences(error.errors())
        raise ConfigError(_expanded_problems(path, locator, details, expansion)) from error
    config = _resolve_key_files(path, text, config)
    base = path.absolute().parent
    # Relative paths of sources (certificates, trust lists, password files) likewise.
    sources = [source.with_base_dir(base) for source in config.sources]
    state_dir = config.agent.state_dir
    agent = config.agent
    if not state_dir.is_absolute():
        agent = config.agent.model_copy(update={"state_dir": base / state_dir})
    return config.model_copy(update={"agent": agent, "sources": sources})


ModelT = typing.TypeVar("ModelT", bound=BaseModel)


def load_model(path: Path, model: type[ModelT]) -> ModelT:
    """Read, parse and validate another TOML file of this project (the hub's `hub.toml`)
    against `model`, with the same located problems as `load_config`; `ConfigError` lists
    every problem found."""
    text = _read_text(path)
    data = _parse(path, text)
    try:
        return model.model_validate(data, context={"config_dir": path.absolute().parent})
    except ValidationError as error:
        locator = TomlKeyLocator(text)
        details = _without_consequences(error.errors())
        raise ConfigError(
            [_schema_problem(path, locator, detail, model) for detail in details]
        ) from error


def _resolve_key_files(path: Path, text: str, config: AgentConfig) -> AgentConfig:
    """Make `[commands.keys]` file paths absolute (relative to the config file) and check that
    each one holds an Ed25519 public key, so check-config finds a bad key file."""
    commands = config.commands
    if not commands.keys:
        return config
    keys: dict[str, str] = {}
    problems: list[ConfigProblem] = []
    for name, spec in commands.keys.items():
        if spec.startswith(RAW_KEY_PREFIX):
            keys[name] = spec
            continue
        key_file = Path(spec)
        if not key_file.is_absolute():
            key_file = path.absolute().parent / key_file
        keys[name] = str(key_file)
        try:
            read_public_key_file(key_file, name)
        except ValueError as error:
            line = TomlKeyLocator(text).line_of(("commands", "keys", name))
            problems.append(ConfigProblem(path, line, f"commands.keys.{name}", str(error)))
    if problems:
        raise ConfigError(problems)
    return config.model_copy(update={"commands": commands.model_copy(update={"keys": keys})})


# --- reading and parsing ----------------------------------------------------------------------


def _read_text(path: Path) -> str:
    def problem(message: str) -> ConfigError:
        return ConfigError([ConfigProblem(path, None, "", message)])

    try:
        raw = path.read_bytes()
    except FileNotFoundError as error:
        raise problem("file not found") from error
    except IsADirectoryError as error:
        raise problem("is a directory, expected a TOML file") from error
    except PermissionError as error:
        raise problem("cannot read the file: permission denied") from error
    except OSError as error:
        raise problem(f"cannot read the file: {error.strerror or error}") from error
    try:
        return raw.decode("utf-8-sig")  # Windows editors may prepend a byte-order mark
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise problem(
            f"not UTF-8 text (invalid byte 0x{raw[error.start]:02x} on line {line}); "
            "save the file as UTF-8"
        ) from error


def _parse(path: Path, text: str) -> dict[str, typing.Any]:
    """`tomllib.loads`, with the two failures it lets through as other exceptions turned into
    located problems: nesting deeper than its recursion allows (RecursionError) and an integer
    longer than Python converts (ValueError from `int`)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([_syntax_problem(path, error)]) from error
    except RecursionError as error:
        raise ConfigError([_too_deep_problem(path, text)]) from error
    except ValueError as error:
        raise ConfigError([_number_problem(path, text, error)]) from error


def _too_deep_problem(path: Path, text: str) -> ConfigProblem:
    """Where the deepest nested value starts; tomllib ran out of recursion inside it."""
    locator = TomlKeyLocator(text)
    deepest = locator.deepest_value()
    message = "invalid TOML: arrays or inline tables nested too deeply"
    if deepest is None:
        return ConfigProblem(path, None, "", f"{message}; expected a few levels at most")
    key_path, line, depth = deepest
    return ConfigProblem(
        path, line, format_key(key_path),
        f"{message} ({depth} levels); expected a few levels at most",
    )


_NUMBER = re.compile(r"[0-9][0-9_]*")


def _number_problem(path: Path, text: str, error: ValueError) -> ConfigProblem:
    """An integer with more digits than `int` converts (`sys.get_int_max_str_digits()`)."""
    limit = sys.get_int_max_str_digits()
    for number, line in enumerate(text.split("\n"), start=1):
        for match in _NUMBER.finditer(line):
            digits = len(match.group().replace("_", ""))
            if limit and digits > limit:
                key_path = TomlKeyLocator(text).key_at(number)
                return ConfigProblem(
                    path, number, format_key(key_path or ()),
                    f"invalid TOML: a number of {digits} digits; expected a number of at most "
                    "19 digits (TOML integers are 64-bit)",
                )
    return ConfigProblem(path, None, "", f"invalid TOML: {str(error)[:200]}")


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _without_consequences(details: list[ErrorDetails]) -> list[ErrorDetails]:
    """Drop a list's "too short" when its own items failed: pydantic counts only the valid
    ones, so `cursor = ["a;b"]` would also say "expected at least 1 item(s), got 0"."""
    inside = {tuple(detail["loc"][:end]) for detail in details for end in range(len(detail["loc"]))}
    return [
        detail for detail in details
        if not (detail["type"] == "too_short" and tuple(detail["loc"]) in inside)
    ]


def _syntax_problem(path: Path, error: tomllib.TOMLDecodeError) -> ConfigProblem:
    """Turn tomllib's "Message (at line L, column C)" into a problem on line L."""
    text = str(error)
    match = _TOML_POSITION.search(text)
    if match is None:  # "(at end of document)": an unclosed string or array; no useful line
        return ConfigProblem(path, None, "", f"invalid TOML: {text}")
    message = text[: match.start()]
    return ConfigProblem(
        path, int(match.group(1)), "", f"invalid TOML: {message} (column {match.group(2)})"
    )


# --- schema errors ------------------------------------------------------------------------------


def _schema_problem(
    path: Path,
    locator: TomlKeyLocator,
    error: ErrorDetails,
    root: type[BaseModel] = AgentConfig,
) -> ConfigProblem:
    key_path, message = _key_and_message(error, root)
    return ConfigProblem(
        file=path,
        line=locator.line_of(key_path),
        key=format_key(key_path),
        message=message,
    )


def _key_and_message(error: ErrorDetails, root: type[BaseModel]) -> tuple[KeyPath, str]:
    walk = _SchemaWalk.of(error["loc"], root)
    key_path = walk.path
    kind = error["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        # pydantic reports these at the table; the file's culprit is its tag key (`type`).
        key_path = (*key_path, str(error.get("ctx", {}).get("discriminator", "type")).strip("'"))
    return key_path, _message(error, walk)


def _expanded_problems(
    path: Path, locator: TomlKeyLocator, details: list[ErrorDetails], expansion: Expansion
) -> list[ConfigProblem]:
    """The schema problems of a config with templates expanded. A generated signal's key is
    its template's (or its instance's override), with the instance named: that is where the
    operator reads and fixes it; one problem of a template signal in several instances (a
    mistake in the template itself) is one problem naming them all."""
    found: dict[tuple[KeyPath, str], list[Instance]] = {}
    for detail in details:
        key_path, message = _key_and_message(detail, AgentConfig)
        placed, instance = expansion.place(key_path)
        instances = found.setdefault((placed, message), [])
        if instance is not None:
            instances.append(instance)
    return [
        ConfigProblem(
            path, locator.line_of(key), format_key(key), message + _note(locator, instances)
        )
        for (key, message), instances in found.items()
    ]


def _note(locator: TomlKeyLocator, instances: list[Instance]) -> str:
    """` [template 'filler', instance sources[0].instances[1] (line 57: line = "L2")]`."""
    if not instances:
        return ""
    if len(instances) == 1:
        return f" [{instances[0].describe(locator.line_of(instances[0].key))}]"
    shown = ", ".join(f"{format_key(i.key)} (line {locator.line_of(i.key)})" for i in instances)
    return f" [template {instances[0].template!r}, instances {shown}]"


# The source types without signals, where a template instance is a mistake.
_RECORD_TYPES = frozenset(
    tag
    for model in RECORD_SOURCES
    for tag in typing.get_args(model.model_fields["type"].annotation)
)


def _template_problem(
    path: Path, locator: TomlKeyLocator, problem: TemplateProblem
) -> ConfigProblem:
    instances = [] if problem.instance is None else [problem.instance]
    message = problem.message + _note(locator, instances)
    return ConfigProblem(path, locator.line_of(problem.loc), format_key(problem.loc), message)


_EXPECTED_TYPE = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "text in double quotes",
    "path_type": "a path in double quotes",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "list_type": "an array",
}

_BOUNDS = {
    "greater_than": ("gt", "greater than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}


def _message(error: ErrorDetails, walk: _SchemaWalk) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    given = _show(error["input"])
    if kind == "missing":
        return _missing_message(walk)
    if kind == "extra_forbidden":
        return _unknown_key_message(walk)
    if kind in _EXPECTED_TYPE:
        return f"expected {_EXPECTED_TYPE[kind]}, got {given}"
    if kind in _BOUNDS:
        bound, words = _BOUNDS[kind]
        return f"expected a number {words} {ctx[bound]}, got {given}"
    if kind in ("literal_error", "enum"):
        return f"expected one of {ctx['expected']}, got {given}"
    if kind == "string_pattern_mismatch":
        return f"expected text matching the pattern {ctx['pattern']}, got {given}"
    if kind == "string_too_short":
        return f"expected at least {ctx['min_length']} character(s), got {given}"
    if kind == "string_too_long":
        return f"expected at most {ctx['max_length']} characters, got {given}"
    if kind == "too_short":
        return f"expected at least {ctx['min_length']} item(s), got {ctx['actual_length']}"
    if kind == "too_long":
        return f"expected at most {ctx['max_length']} items, got {ctx['actual_length']}"
    if kind == "union_tag_invalid":
        return f"unknown {_unquote(ctx['discriminator'])} {ctx['tag']!r} " + (
            f"(expected one of {ctx['expected_tags']})"
        )
    if kind == "union_tag_not_found":
        return "missing required key"
    message = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if kind in ("value_error", "assertion_error") or isinstance(error["input"], dict | list):
        return message
    return f"{message[:1].lower()}{message[1:]}, got {given}"


def _missing_message(walk: _SchemaWalk) -> str:
    table = _table_kind(walk.annotation)
    names = ".".join(part for part in walk.path if isinstance(part, str))
    if table is not None and not any(isinstance(part, int) for part in walk.path[:-1]):
        return f"missing section [{names}]" if table == "table" else f"missing section [[{names}]]"
    if table == "array":
        return f"missing required key (add at least one [[{names}]] section)"
    return "missing required key"


def _unknown_key_message(walk: _SchemaWalk) -> str:
    if walk.owner is None or not walk.path:
        return "unknown key"
    allowed = list(walk.owner.model_fields)
    # the loader's own keys (config.templates), expanded before the schema sees the file
    for before, added in (("sources", "templates"), ("signals", "instances")):
        if before in allowed:
            allowed.insert(allowed.index(before) + (before == "signals"), added)
    unknown = str(walk.path[-1])
    close = difflib.get_close_matches(unknown, allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key ({hint}allowed keys: {', '.join(allowed)})"


def _show(value: object) -> str:
    """A value as the user wrote it in TOML, shortened."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _unquote(text: object) -> str:
    return str(text).strip("'\"")


def _strip(annotation: object) -> tuple[object, str | None]:
    """Unwrap `Annotated[...]` and `X | None`; return the type and any union discriminator."""
    discriminator: str | None = None
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation, *metadata = typing.get_args(annotation)
            for item in metadata:
                tag = getattr(item, "discriminator", None)
                if isinstance(tag, str):
                    discriminator = tag
            continue
        if origin in (typing.Union, types.UnionType):
            members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation, discriminator


def _model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _union_members(annotation: object) -> tuple[object, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _table_kind(annotation: object) -> str | None:
    """Return "table" for a model, "array" for a list of models, else None."""
    stripped, _ = _strip(annotation)
    if _model(stripped) is not None:
        return "table"
    if typing.get_origin(stripped) is list:
        item, _ = _strip(typing.get_args(stripped)[0])
        if all(_model(member) is not None for member in _union_members(item)):
            return "array"
    return None


@dataclass(frozen=True, slots=True)
class _SchemaWalk:
    """A pydantic `loc` followed through the schema's types.

    `path` is the loc as the file spells it: pydantic inserts the tag of a discriminated union
    into the loc (`sources, 0, opcua, signals`), which the file does not have, so it is dropped.
    `owner` is the model whose field the last key is (for "allowed keys"); `annotation` is the
    type expected at the end of the path (None when unknown, e.g. an unknown key).
    """

    path: KeyPath
    owner: type[BaseModel] | None
    annotation: object

    @classmethod
    def of(cls, loc: Sequence[KeyPart], root: type[BaseModel] = AgentConfig) -> _SchemaWalk:
        path: list[KeyPart] = []
        owner: type[BaseModel] | None = None
        current: object = root
        for element in loc:
            annotation, discriminator = _strip(current)
            if discriminator is not None and isinstance(element, str):
                member = _tagged_member(annotation, discriminator, element)
                if member is not None:
                    current = member
                    continue
            model = _model(annotation)
            origin = typing.get_origin(annotation)
            if model is not None and isinstance(element, str):
                owner = model
                field = model.model_fields.get(element)
                current = field.annotation if field is not None else None
            elif origin is list and isinstance(element, int):
                current = typing.get_args(annotation)[0]
            elif origin is dict:
                current = typing.get_args(annotation)[1]
            else:
                current = None
            path.append(element)
        return cls(tuple(path), owner, current)


def _tagged_member(annotation: object, discriminator: str, tag: str) -> type[BaseModel] | None:
    """The member of a discriminated union whose `discriminator` field has the literal `tag`."""
    for member in _union_members(annotation):
        model = _model(member)
        field = model.model_fields.get(discriminator) if model is not None else None
        if field is not None and tag in typing.get_args(field.annotation):
            return model
    return None


# --- line locator -------------------------------------------------------------------------------
