"""Where a key is in TOML text: the line scanner behind `FILE:LINE: KEY` in config errors.

`tomllib` keeps no positions. `TomlKeyLocator` scans the same text once, line by line, and
records the line of every key path it sees (its docstring says exactly what it handles and what
it does not); `format_key` writes a key path as the file spells it (`sources[0].signals[1].event`).

Invariants: the scanner never raises on any text (it runs on text `tomllib` accepted, and on
text it refused without a position: too deeply nested, a number too long); it reads nothing but
the string it is given; a path it cannot place gives None, never a wrong line of another table.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Sequence

KeyPart = str | int
KeyPath = tuple[KeyPart, ...]

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
