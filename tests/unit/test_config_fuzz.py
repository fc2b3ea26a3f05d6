"""A property test of the config loader: whatever a person (or a broken editor) does to a shipped
example config, `load_config` returns a valid config or raises `ConfigError`, never anything else.

The examples are the ones the project ships and a person starts from: `config/example.toml`,
`config/examples/*.toml` and any `connectors/*/sample.toml`. Each is copied with its folder (a
lookup names its CSV file relative to the config) into a scratch directory, mutated, and loaded:

- byte mutations: bytes replaced, inserted or deleted anywhere (a truncated upload, a stray key,
  a bad encoding);
- line mutations: a line deleted, duplicated, moved, or a hostile line inserted;
- value mutations: the value of one `key = value` line replaced by a hostile value (deep
  nesting, huge numbers, names that are directories or too long for the file system, NUL).

A `ConfigError` must name the file in every problem: that is what `check-config` prints. The
known cases that used to escape as other exceptions are pinned as examples, so they are tried
on every run whatever hypothesis draws.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config.loader import ConfigError, load_config
from config.schema import AgentConfig

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(
    [
        REPO / "config" / "example.toml",
        *(REPO / "config" / "examples").glob("*.toml"),
        *(REPO / "connectors").glob("*/sample.toml"),
    ]
)
_VALUE_LINE = re.compile(rb"^(\s*[A-Za-z0-9_.\"'-]+\s*=\s*)(.+)$")

# Values a person, a script or an attacker could put on the right of `key =`.
HOSTILE_VALUES = [
    b"[" * 5_000 + b"]" * 5_000,  # nested arrays: RecursionError in tomllib
    b"{ a = " * 2_000 + b"1" + b" }" * 2_000,  # nested inline tables
    b"[" * 40 + b"]" * 40,  # nested, but within what tomllib parses
    b'"Europe"',  # a time zone that is a tzdata directory: IsADirectoryError
    b'"' + b"A" * 300 + b'"',  # a name too long for the file system: ENAMETOOLONG
    b'"Europe/../../../etc/passwd"',
    b'"/etc"',
    b'"."',
    b'"' + b"x/" * 200 + b'"',
    b'"a\\u0000b"',  # NUL inside a string
    b"9" * 5_000,  # more digits than Python converts to int by default
    b"1" + b"0" * 400,  # an int too large for a float
    b'"' + b"9" * 400 + b' GiB"',  # a byte size too large for a float
    b'"1e400 GiB"',
    b"1e400",
    b"inf",
    b"-inf",
    b"nan",
    b"-0.0",
    b"-1",
    b"0",
    b"1979-05-27T07:32:00Z",
    b"07:32:00",
    b"true",
    b'""',
    b"[]",
    b"{}",
    b'"credential:"',
    b'"file:"',
    b'"file:relative"',
    b'"ed25519:' + b"A" * 44 + b'"',
    b'"mqtt://[::1"',
    b'"mqtt://127.0.0.1:99999"',
    b'"\xff\xfe"',
]
HOSTILE_LINES = [
    b"[" + b"a." * 300 + b"b]",
    b"[[sources]]",
    b"[agent]",
    b"x = " + b"[" * 5_000,
    b'time_zone = "Europe"',
    b"a.b.c.d.e.f.g.h = 1",
    b"\x00",
]


def _value_mutation(data: st.DataObject, text: bytes) -> bytes:
    lines = text.split(b"\n")
    candidates = [index for index, line in enumerate(lines) if _VALUE_LINE.match(line)]
    index = data.draw(st.sampled_from(candidates), label="line")
    match = _VALUE_LINE.match(lines[index])
    assert match is not None
    value = data.draw(
        st.one_of(
            st.sampled_from(HOSTILE_VALUES),
            st.integers().map(lambda number: str(number).encode()),
            st.floats().map(lambda number: repr(number).encode()),
            st.text(max_size=40).map(lambda chars: ('"' + chars + '"').encode("utf-8", "replace")),
        ),
        label="value",
    )
    lines[index] = match.group(1) + value
    return b"\n".join(lines)


def _line_mutation(data: st.DataObject, text: bytes) -> bytes:
    lines = text.split(b"\n")
    index = data.draw(st.integers(0, len(lines) - 1), label="line")
    how = data.draw(st.sampled_from(["delete", "duplicate", "move", "insert"]), label="how")
    if how == "delete":
        del lines[index]
    elif how == "duplicate":
        lines.insert(index, lines[index])
    elif how == "move":
        line = lines.pop(index)
        lines.insert(data.draw(st.integers(0, len(lines)), label="to"), line)
    else:
        lines.insert(index, data.draw(st.sampled_from(HOSTILE_LINES), label="inserted"))
    return b"\n".join(lines)


def _byte_mutation(data: st.DataObject, text: bytes) -> bytes:
    buffer = bytearray(text)
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        position = data.draw(st.integers(0, len(buffer)), label="at")
        how = data.draw(st.sampled_from(["replace", "insert", "delete", "truncate"]), label="how")
        byte = data.draw(st.integers(0, 255), label="byte")
        if how == "truncate":
            del buffer[position:]
        elif how == "insert" or position == len(buffer):
            buffer.insert(position, byte)
        elif how == "replace":
            buffer[position] = byte
        else:
            del buffer[position]
    return bytes(buffer)


MUTATIONS: dict[str, Callable[[st.DataObject, bytes], bytes]] = {
    "value": _value_mutation,
    "line": _line_mutation,
    "byte": _byte_mutation,
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, Path]:
    """Each example's folder copied (TOML and CSV files), example -> its copy."""
    copies: dict[Path, Path] = {}
    for number, original in enumerate(EXAMPLES):
        folder = tmp_path_factory.mktemp(f"example{number}")
        for sibling in original.parent.iterdir():
            if sibling.suffix in (".toml", ".csv") and sibling.is_file():
                shutil.copy(sibling, folder / sibling.name)
        copies[original] = folder / original.name
    return copies


def assert_loads_or_config_error(path: Path) -> None:
    try:
        config = load_config(path)
    except ConfigError as error:
        assert error.problems, "a ConfigError names at least one problem"
        for problem in error.problems:
            assert problem.format().startswith(f"{path}"), problem.format()
            assert problem.message, problem
            assert "Traceback" not in problem.message
        return
    assert isinstance(config, AgentConfig)


def test_the_shipped_examples_are_found_and_load(scratch: dict[Path, Path]) -> None:
    assert len(EXAMPLES) >= 2, EXAMPLES
    for copy in scratch.values():
        assert isinstance(load_config(copy), AgentConfig), copy


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_a_mutated_example_loads_or_is_a_clean_config_error(
    scratch: dict[Path, Path], kind: str, data: st.DataObject
) -> None:
    original = data.draw(st.sampled_from(EXAMPLES), label="example")
    mutated = MUTATIONS[kind](data, original.read_bytes())
    path = scratch[original]
    try:
        path.write_bytes(mutated)
        assert_loads_or_config_error(path)
    finally:
        shutil.copy(original, path)


def _with_value(original: Path, key: str, value: bytes) -> bytes:
    """`original` with the first `key = ...` line's value replaced by `value`."""
    text = original.read_bytes()
    pattern = re.compile(rb"^(\s*" + re.escape(key.encode()) + rb"\s*=\s*).+$", re.MULTILINE)
    assert pattern.search(text), f"{original.name} has no {key} line"
    return pattern.sub(lambda match: match.group(1) + value, text, count=1)


MES = REPO / "config" / "examples" / "mes.toml"
PINNED = [
    ("deep nesting", REPO / "config" / "example.toml", "site", HOSTILE_VALUES[0]),
    ("deep inline tables", REPO / "config" / "example.toml", "site", HOSTILE_VALUES[1]),
    ("tz directory", MES, "time_zone", b'"Europe"'),
    ("tz too long", MES, "time_zone", b'"' + b"A" * 300 + b'"'),
    ("tz nested too long", MES, "time_zone", b'"' + b"x/" * 200 + b'"'),
    ("huge int", REPO / "config" / "example.toml", "site", b"9" * 5_000),
    ("huge int in an array", MES, "time_zone", b"[1, " + b"9" * 5_000 + b"]"),
]


@pytest.mark.parametrize(
    ("original", "key", "value"),
    [case[1:] for case in PINNED],
    ids=[case[0] for case in PINNED],
)
def test_known_hostile_values_are_clean_config_errors(
    scratch: dict[Path, Path], original: Path, key: str, value: bytes
) -> None:
    path = scratch[original]
    try:
        path.write_bytes(_with_value(original, key, value))
        with pytest.raises(ConfigError) as raised:
            load_config(path)
        problem = raised.value.problems[0]
        assert problem.line is not None, problem.format()
        assert problem.key, problem.format()
    finally:
        shutil.copy(original, path)


# The byte-size case needs a key that takes a size: the buffer's, added when absent.
def test_a_byte_size_too_large_for_a_float_is_a_config_error(tmp_path: Path) -> None:
    text = (REPO / "config" / "example.toml").read_text()
    path = tmp_path / "agent.toml"
    for size in ('"' + "9" * 400 + ' GiB"', '"1e400 GiB"', '"' + "9" * 400 + '.5 B"'):
        body = re.sub(r"(?m)^\[buffer\]\s*$", f"[buffer]\nmax_bytes = {size}", text, count=1)
        if body == text:
            body = f"{text}\n[buffer]\nmax_bytes = {size}\n"
        path.write_text(body)
        with pytest.raises(ConfigError) as raised:
            load_config(path)
        assert any(problem.key == "buffer.max_bytes" for problem in raised.value.problems), (
            raised.value
        )

