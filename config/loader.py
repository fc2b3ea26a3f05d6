"""Load the agent's TOML configuration and report every problem as `FILE:LINE: KEY: MESSAGE`.

`load_config` reads the file (UTF-8; a leading byte-order mark is accepted), parses it with the
standard library's `tomllib`, validates it against `config.schema.AgentConfig` and resolves a
relative `agent.state_dir` against the directory that holds the config file.

Whatever goes wrong, the caller gets one exception, `ConfigError`, carrying a list of
`ConfigProblem`s: a missing or unreadable file and a TOML syntax error give one problem each; a
schema violation gives one problem per pydantic error. The messages are written for the OT staff
who edit the file: what is wrong and what is expected, in the file's own terms (keys, sections,
`[[sources]]`), never pydantic's internal names.

`tomllib` keeps no positions, so line numbers of schema problems come from `TomlKeyLocator`, a
small line scanner over the same text (see its docstring for what it handles and what it does
not). It only runs on text that `tomllib` has already accepted, so it need not detect errors.
"""

from __future__ import annotations

import difflib
import json
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

from config.schema import RAW_KEY_PREFIX, AgentConfig, read_public_key_file

KeyPart = str | int
KeyPath = tuple[KeyPart, ...]


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
    data = _parse(path, text)
    try:
        # config_dir: lookup CSV files are named relative to the config file (config.mapping).
        config = AgentConfig.model_validate(data, context={"config_dir": path.absolute().parent})
    except ValidationError as error:
        locator = TomlKeyLocator(text)
        details = _without_consequences(error.errors())
        problems = [_schema_problem(path, locator, detail) for detail in details]
        raise ConfigError(problems) from error
    config = _resolve_key_files(path, text, config)
    base = path.absolute().parent
    # Relative paths of sources (certificates, trust lists, password files) likewise.
    sources = [source.with_base_dir(base) for source in config.sources]
    state_dir = config.agent.state_dir
    agent = config.agent
    if not state_dir.is_absolute():
        agent = config.agent.model_copy(update={"state_dir": base / state_dir})
    return config.model_copy(update={"agent": agent, "sources": sources})


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


def _schema_problem(path: Path, locator: TomlKeyLocator, error: ErrorDetails) -> ConfigProblem:
    walk = _SchemaWalk.of(error["loc"])
    key_path = walk.path
    kind = error["type"]
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        # pydantic reports these at the table; the file's culprit is its tag key (`type`).
        key_path = (*key_path, str(error.get("ctx", {}).get("discriminator", "type")).strip("'"))
    return ConfigProblem(
        file=path,
        line=locator.line_of(key_path),
        key=format_key(key_path),
        message=_message(error, walk),
    )


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


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_key(path: Sequence[KeyPart]) -> str:
    """`("sources", 0, "signals", 1, "event")` -> `sources[0].signals[1].event`.

    Keys that are not TOML bare keys are quoted as TOML would: `states."1.5"`.
    """
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        name = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
        text += f".{name}" if text else name
    return text


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
    def of(cls, loc: Sequence[KeyPart]) -> _SchemaWalk:
        path: list[KeyPart] = []
        owner: type[BaseModel] | None = None
        current: object = AgentConfig
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


class TomlKeyLocator:
    """Find the line of a key path in TOML text, for error messages (`tomllib` keeps no positions).

    The text is scanned once, line by line. The scanner tracks the current table from headers:
    `[agent]`, `[a.b]`, and arrays of tables `[[sources]]`, whose elements are numbered from 0 in
    file order; a nested `[[sources.signals]]` belongs to the latest `[[sources]]`, so its numbering
    restarts within each source. Each `key = value` line (bare, "quoted" and 'literal' keys,
    dotted keys) records the line of its full path. A value that spans lines (a multi-line array,
    a `\"\"\"` or `'''` string) is followed to its end, brackets and `#` inside strings included,
    so its continuation lines are never taken for keys or headers.

    `line_of(path)`:
    - a recorded path: the line of its key or header (for an array of tables, its first header);
    - a path inside a value (a sub-key of an inline table `states = { 0 = "idle" }`, an element of
      an array): the line where that value's key is;
    - a key absent from an existing table (a missing key): the line of that table's header;
    - otherwise (the table itself is absent): None.

    `key_at(line)` is the path of the value on (or continuing over) a line, and `deepest_value()`
    the value with the most nested brackets: they locate what tomllib fails on without a
    position (a nesting too deep for its recursion, a number too long for `int`), so for them
    the scanner also runs on text tomllib refused.

    Not handled, because hand-written agent configs do not need it: keys inside inline tables and
    arrays of inline tables get the line of the enclosing key, not their own; a value continuing
    on later lines is located at its first line; the scanner assumes valid TOML (it runs only on
    text `tomllib` accepted, or that failed as above) and does not detect redefinitions.
    """

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        self._values: set[KeyPath] = set()  # paths set by `key = value` (not headers)
        self._array_sizes: dict[KeyPath, int] = {}  # array-of-tables path -> elements so far
        self._spans: list[tuple[int, int, KeyPath]] = []  # first line, last line, value path
        self._deepest: tuple[KeyPath, int, int] | None = None  # path, line, nesting depth
        self._scan(text)

    def key_at(self, line: int) -> KeyPath | None:
        """The path of the `key = value` whose value is on `line`, or None."""
        for first, last, path in self._spans:
            if first <= line <= last:
                return path
        return None

    def deepest_value(self) -> tuple[KeyPath, int, int] | None:
        """(path, line, depth) of the value with the most nested `[`/`{`, or None if none."""
        return self._deepest

    def line_of(self, path: Sequence[KeyPart]) -> int | None:
        """The 1-based line for `path` (e.g. `("sources", 0, "signals", 1, "event")`), or None."""
        wanted = tuple(path)
        if wanted in self._lines:
            return self._lines[wanted]
        for size in range(len(wanted) - 1, 0, -1):
            prefix = wanted[:size]
            if prefix in self._lines:
                missing_key = size == len(wanted) - 1 and isinstance(wanted[-1], str)
                if prefix in self._values or missing_key:
                    return self._lines[prefix]
                return None
        return None

    def _scan(self, text: str) -> None:
        table: KeyPath = ()
        value = _ValueScanner()
        for number, line in enumerate(text.split("\n"), start=1):
            if value.is_open:
                value.feed(line, 0)
                self._value_continues(number, value.max_depth)
                continue
            start = len(line) - len(line.lstrip())
            if start == len(line) or line[start] == "#":
                continue
            if line[start] == "[":
                is_array = line.startswith("[[", start)
                parsed = _parse_key(line, start + (2 if is_array else 1))
                if parsed is not None:
                    table = self._open_table(parsed[0], is_array, number)
                continue
            parsed = _parse_key(line, start)
            if parsed is None:
                continue
            keys, end = parsed
            full = table + tuple(keys)
            for size in range(len(table) + 1, len(full) + 1):  # dotted keys make tables too
                self._lines.setdefault(full[:size], number)
            self._values.add(full)
            equals = line.find("=", end)
            value.max_depth = 0
            value.feed(line, equals + 1)
            self._spans.append((number, number, full))
            self._value_continues(number, value.max_depth)

    def _value_continues(self, number: int, depth: int) -> None:
        """The latest value reaches line `number` with nesting `depth` so far."""
        if not self._spans:
            return
        first, _, path = self._spans[-1]
        self._spans[-1] = (first, number, path)
        if depth and (self._deepest is None or depth > self._deepest[2]):
            self._deepest = (path, first, depth)

    def _open_table(self, keys: list[str], is_array: bool, number: int) -> KeyPath:
        path: KeyPath = ()
        for position, key in enumerate(keys):
            path = (*path, key)
            self._lines.setdefault(path, number)
            last = position == len(keys) - 1
            if last and is_array:
                index = self._array_sizes.get(path, 0)
                self._array_sizes[path] = index + 1
                path = (*path, index)
                self._lines[path] = number
            elif path in self._array_sizes:  # a parent that is an array: its latest element
                path = (*path, self._array_sizes[path] - 1)
        self._lines.setdefault(path, number)
        return path


def _parse_key(line: str, start: int) -> tuple[list[str], int] | None:
    """Parse a (dotted) key at `start`; return its parts and the index just after it."""
    parts: list[str] = []
    position = start
    while True:
        while position < len(line) and line[position] in " \t":
            position += 1
        if position >= len(line):
            return None
        char = line[position]
        if char == '"':
            end = _end_of_basic_string(line, position + 1)
            if end is None:
                return None
            try:  # decodes escapes; text tomllib refused elsewhere may hold a bad one here
                parts.append(tomllib.loads(f"k = {line[position:end]}")["k"])
            except tomllib.TOMLDecodeError:
                return None
            position = end
        elif char == "'":
            end = line.find("'", position + 1)
            if end < 0:
                return None
            parts.append(line[position + 1 : end])
            position = end + 1
        else:
            match = _BARE_KEY.match(line, position)
            if match is None:
                return None
            parts.append(match.group())
            position = match.end()
        while position < len(line) and line[position] in " \t":
            position += 1
        if position < len(line) and line[position] == ".":
            position += 1
            continue
        return parts, position


def _end_of_basic_string(line: str, position: int) -> int | None:
    """Index just after the `"` closing a basic string whose content starts at `position`."""
    while position < len(line):
        if line[position] == "\\":
            position += 2
        elif line[position] == '"':
            return position + 1
        else:
            position += 1
    return None


class _ValueScanner:
    """Follows a TOML value across lines: open brackets and an open multi-line string."""

    def __init__(self) -> None:
        self._depth = 0  # open `[` and `{`
        self.max_depth = 0  # the most `[` and `{` open at once since it was last set to 0
        self._string: str | None = None  # the delimiter of an open multi-line string

    @property
    def is_open(self) -> bool:
        return self._depth > 0 or self._string is not None

    def feed(self, line: str, position: int) -> None:
        """Consume `line` from `position`, up to its end or a comment."""
        while position < len(line):
            if self._string is not None:
                position = self._close_multiline(line, position)
                continue
            char = line[position]
            if char == "#":
                return
            if line.startswith(('"""', "'''"), position):
                self._string = line[position : position + 3]
                position += 3
            elif char == '"':
                position = _end_of_basic_string(line, position + 1) or len(line)
            elif char == "'":
                end = line.find("'", position + 1)
                position = len(line) if end < 0 else end + 1
            else:
                if char in "[{":
                    self._depth += 1
                    self.max_depth = max(self.max_depth, self._depth)
                elif char in "]}":
                    self._depth = max(0, self._depth - 1)
                position += 1

    def _close_multiline(self, line: str, position: int) -> int:
        """Skip string content; return the index after the closing delimiter, or the line end."""
        assert self._string is not None
        while position < len(line):
            if self._string == '"""' and line[position] == "\\":
                position += 2
            elif line.startswith(self._string, position):
                position += 3
                while position < len(line) and line[position] == self._string[0]:
                    position += 1  # up to two quotes may end the content: `"""a""""`
                self._string = None
                return position
            else:
                position += 1
        return position
