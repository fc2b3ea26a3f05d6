"""The config loader: real files in `tmp_path`, every problem named by file, line and key.

`BASE` is a small valid config with two sources. Every line ends with a comment giving its
number, so the line numbers asserted below can be checked by eye; each broken variant replaces
whole lines one for one, so the numbering holds.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import pytest

from config.loader import ConfigError, ConfigProblem, load_config
from config.schema import AgentConfig, OpcUaSource
from config.toml_locator import TomlKeyLocator, format_key

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "example.toml"

BASE = """\
[agent]  # 1
site = "plant-a"  # 2
id = "edge-01"  # 3
# 4
[hub]  # 5
url = "mqtt://127.0.0.1:1883"  # 6
keepalive_s = 30  # 7
# 8
[[sources]]  # 9
name = "line1"  # 10
type = "opcua"  # 11
endpoint = "opc.tcp://127.0.0.1:4840"  # 12
# 13
[[sources.signals]]  # 14
node = "ns=2;s=Line1.Filler.GoodCount"  # 15
event = "production.count"  # 16
asset = "line1/filler"  # 17
# 18
[[sources]]  # 19
name = "line2"  # 20
type = "opcua"  # 21
endpoint = "opc.tcp://127.0.0.1:4841"  # 22
# 23
[[sources.signals]]  # 24
node = "ns=2;s=Line2.Filler.GoodCount"  # 25
event = "production.count"  # 26
asset = "line2/filler"  # 27
# 28
[[sources.signals]]  # 29
node = "ns=2;s=Line2.Filler.State"  # 30
event = "machine.state"  # 31
asset = "line2/filler"  # 32
states = { 0 = "idle", 1 = "running" }  # 33
"""


def variant(*replacements: tuple[str, str]) -> str:
    """BASE with each line that contains `old` replaced by `new` (each `old` must match once)."""
    lines = BASE.splitlines()
    for old, new in replacements:
        matches = [number for number, line in enumerate(lines) if old in line]
        assert len(matches) == 1, f"{old!r} matches lines {matches}"
        lines[matches[0]] = new
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def only_problem(path: Path) -> ConfigProblem:
    problems = problems_of(path)
    assert len(problems) == 1, problems
    return problems[0]


# --- valid files --------------------------------------------------------------------------------


def test_the_example_loads_with_its_state_dir_next_to_it() -> None:
    config = load_config(EXAMPLE)

    assert config.agent.site == "plant-a"
    assert config.agent.id == "edge-01"
    assert config.agent.state_dir == EXAMPLE.parent / "state"
    assert config.hub.url == "mqtt://127.0.0.1:1883"
    assert config.hub.topic_prefix == "mfg"
    [source] = config.sources
    assert isinstance(source, OpcUaSource)  # narrows the union for the checker
    assert (source.name, source.type, source.endpoint) == (
        "line1",
        "opcua",
        "opc.tcp://127.0.0.1:4840",
    )
    signals = {signal.node: signal for signal in source.signals}
    assert list(signals) == [
        "ns=2;s=Line1.Filler.GoodCount",
        "ns=2;s=Line1.Filler.RejectCount",
        "ns=2;s=Line1.Filler.State",
        "ns=2;s=Line1.Filler.Temperature",
        "ns=2;s=Line1.Tank.Temperature",
    ]
    assert signals["ns=2;s=Line1.Filler.RejectCount"].name == "reject_count"
    state = signals["ns=2;s=Line1.Filler.State"]
    assert state.states is not None
    assert {raw: value.value for raw, value in state.states.items()} == {
        "0": "idle",
        "1": "running",
        "2": "down",
        "3": "fault",
    }
    assert signals["ns=2;s=Line1.Tank.Temperature"].asset == "line1/tank"
    assert signals["ns=2;s=Line1.Tank.Temperature"].unit == "Cel"


def test_the_example_only_uses_loopback_addresses() -> None:
    config = load_config(EXAMPLE)
    urls = [config.hub.url, *(cast(OpcUaSource, source).endpoint for source in config.sources)]

    assert {urlsplit(url).hostname for url in urls} == {"127.0.0.1"}


def test_the_defaults_the_example_documents_are_the_real_defaults(tmp_path: Path) -> None:
    # Optional settings appear as `# key = default`; uncommenting them all changes nothing.
    text = EXAMPLE.read_text(encoding="utf-8")
    uncommented, count = re.subn(r"(?m)^# ([a-z_]+ = .+)$", r"\1", text)
    assert count >= 15
    copy = write(tmp_path, uncommented)

    assert load_config(copy).model_dump() == load_config(write(tmp_path, text)).model_dump()


def test_every_key_of_the_example_is_located_on_its_own_line() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    lines = text.splitlines()
    locator = TomlKeyLocator(text)
    leaves = list(_leaf_paths(tomllib.loads(text)))
    assert len(leaves) > 20
    for path in leaves:
        line = locator.line_of(path)
        assert line is not None, path
        assert lines[line - 1].startswith(f"{path[-1]} = "), (path, line)


def _leaf_paths(data: Any, prefix: tuple[str | int, ...] = ()) -> Any:
    """Key paths of the values in parsed TOML, not descending into inline tables' keys."""
    for key, value in data.items():
        path = (*prefix, key)
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for index, item in enumerate(value):
                yield from _leaf_paths(item, (*path, index))
        elif isinstance(value, dict) and key != "states":
            yield from _leaf_paths(value, path)
        else:
            yield path


def test_base_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))

    assert [source.name for source in config.sources] == ["line1", "line2"]
    assert config.agent.state_dir == tmp_path / "state"


def test_a_relative_state_dir_is_relative_to_the_config_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    write(folder, variant(("# 4", 'state_dir = "data/../buffer"  # 4')))
    monkeypatch.chdir(tmp_path)

    config = load_config(Path("etc/agent.toml"))

    assert config.agent.state_dir.is_absolute()
    assert config.agent.state_dir == folder / "data/../buffer"


def test_an_absolute_state_dir_is_kept(tmp_path: Path) -> None:
    state = tmp_path / "elsewhere"
    config = load_config(write(tmp_path, variant(("# 4", f'state_dir = "{state}"  # 4'))))

    assert config.agent.state_dir == state


# --- one problem, named by line and key ---------------------------------------------------------


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, variant(("keepalive_s", 'keepalive_s = "abc"  # 7')))

    assert only_problem(path) == ConfigProblem(
        path, 7, "hub.keepalive_s", "expected a whole number, got 'abc'"
    )


def test_number_out_of_range(tmp_path: Path) -> None:
    path = write(tmp_path, variant(("keepalive_s", "keepalive_s = 1  # 7")))

    assert only_problem(path) == ConfigProblem(
        path, 7, "hub.keepalive_s", "expected a number at least 5, got 1"
    )


def test_unknown_key_in_agent(tmp_path: Path) -> None:
    path = write(tmp_path, variant(("# 4", 'colour = "red"  # 4')))

    problem = only_problem(path)

    assert (problem.line, problem.key) == (4, "agent.colour")
    assert problem.message == (
        "unknown key (allowed keys: site, id, state_dir, log_level, log_format, shutdown_grace_s)"
    )


def test_unknown_key_in_a_signal_of_the_second_source(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        variant(("states =", 'states = { 0 = "idle" }  # 33\nsampling_interval = 5  # 34')),
    )

    problem = only_problem(path)

    assert (problem.line, problem.key) == (34, "sources[1].signals[1].sampling_interval")
    assert problem.message.startswith("unknown key (did you mean 'sampling_interval_ms'? ")
    assert "node" in problem.message and "states" in problem.message


def test_bad_hub_url(tmp_path: Path) -> None:
    path = write(tmp_path, variant(("url =", 'url = "http://127.0.0.1:1883"  # 6')))

    problem = only_problem(path)

    assert (problem.line, problem.key) == (6, "hub.url")
    assert problem.message.startswith("unsupported scheme 'http' in 'http://127.0.0.1:1883'")
    assert "Value error" not in problem.message


def test_missing_section(tmp_path: Path) -> None:
    path = write(tmp_path, variant(("[hub]", "# 5"), ("url =", "# 6"), ("keepalive_s", "# 7")))

    problem = only_problem(path)

    assert problem == ConfigProblem(path, None, "hub", "missing section [hub]")
    assert problem.format() == f"{path}: hub: missing section [hub]"


def test_missing_sources(tmp_path: Path) -> None:
    text = BASE.split("[[sources]]  # 9")[0]
    path = write(tmp_path, text)

    assert only_problem(path) == ConfigProblem(path, None, "sources", "missing section [[sources]]")


def test_missing_required_key_points_at_its_table(tmp_path: Path) -> None:
    path = write(tmp_path, variant(('asset = "line2/filler"  # 27', "# 27")))

    assert only_problem(path) == ConfigProblem(
        path, 24, "sources[1].signals[0].asset", "missing required key"
    )


def test_missing_required_key_in_a_section(tmp_path: Path) -> None:
    path = write(tmp_path, variant(("site =", "# 2")))

    assert only_problem(path) == ConfigProblem(path, 1, "agent.site", "missing required key")


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, variant(("keepalive_s", "keepalive_s = 30 30  # 7")))

    problem = only_problem(path)

    assert (problem.line, problem.key) == (7, "")
    assert problem.message.startswith("invalid TOML: Expected newline or end of document")
    assert problem.message.endswith("(column 18)")
    assert problem.format() == f"{path}:7: {problem.message}"


def test_toml_error_at_end_of_document_has_no_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + 'extra = """never closed\n')

    problem = only_problem(path)

    assert (problem.line, problem.key) == (None, "")
    assert "at end of document" in problem.message


def test_bad_node_id(tmp_path: Path) -> None:
    path = write(tmp_path, variant(("Line2.Filler.State", 'node = "Line2.Filler.State"  # 30')))

    problem = only_problem(path)

    assert (problem.line, problem.key) == (30, "sources[1].signals[1].node")
    assert problem.message.startswith("not an OPC UA NodeId: 'Line2.Filler.State'")


def test_machine_state_without_states(tmp_path: Path) -> None:
    path = write(tmp_path, variant(("states =", "# 33")))

    problem = only_problem(path)

    assert (problem.line, problem.key) == (29, "sources[1].signals[1]")
    assert problem.message.startswith("a machine.state signal needs `states`")


def test_unknown_state_inside_an_inline_table(tmp_path: Path) -> None:
    path = write(tmp_path, variant(("states =", 'states = { 0 = "idle", 1 = "busy" }  # 33')))

    assert only_problem(path) == ConfigProblem(
        path,
        33,
        "sources[1].signals[1].states.1",
        "expected one of 'running', 'idle', 'down' or 'fault', got 'busy'",
    )


def test_duplicate_source_names(tmp_path: Path) -> None:
    path = write(tmp_path, variant(('name = "line2"', 'name = "line1"  # 20')))

    assert only_problem(path) == ConfigProblem(
        path, 9, "sources", "source names must be unique; repeated: line1"
    )


def test_unknown_source_type(tmp_path: Path) -> None:
    path = write(tmp_path, variant(('type = "opcua"  # 21', 'type = "modbus"  # 21')))

    assert only_problem(path) == ConfigProblem(
        path, 21, "sources[1].type",
        "unknown type 'modbus' (expected one of 'opcua', 'simulated', 'mes-files', 'mes-http', "
        "'mes-sql')",
    )


def test_nonexistent_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert caught.value.problems == [ConfigProblem(path, None, "", "file not found")]
    assert str(caught.value) == f"{path}: file not found"


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    assert only_problem(tmp_path) == ConfigProblem(
        tmp_path, None, "", "is a directory, expected a TOML file"
    )


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(BASE.replace("plant-a", "plant-\xe4").encode("latin-1"))

    problem = only_problem(path)

    assert (problem.line, problem.key) == (None, "")
    assert problem.message == "not UTF-8 text (invalid byte 0xe4 on line 2); save the file as UTF-8"


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_bytes(BASE.encode("utf-8-sig"))

    assert isinstance(load_config(path), AgentConfig)


def test_all_problems_are_reported_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        variant(
            ("[hub]", "# 5"),
            ("url =", "# 6"),
            ("keepalive_s", "# 7"),
            ("Line2.Filler.State", 'node = "bad"  # 30'),
            ("id =", 'id = "edge 01"  # 3'),
        ),
    )

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert [(p.line, p.key) for p in caught.value.problems] == [
        (None, "hub"),
        (3, "agent.id"),
        (30, "sources[1].signals[1].node"),
    ]
    assert str(caught.value) == "\n".join(p.format() for p in caught.value.problems)
    assert str(caught.value).splitlines()[1] == (
        f"{path}:3: agent.id: expected text matching the pattern "
        "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$, got 'edge 01'"
    )


MES_EXAMPLE = EXAMPLE.parent / "examples" / "mes.toml"


@pytest.mark.parametrize(
    ("cursor", "expected"),
    [
        ('["a;drop"]', ["sources[2].cursor[0]: 'a;drop' is not a plain SQL name"]),
        ("[]", ["sources[2].cursor: expected at least 1 item(s), got 0"]),
    ],
)
def test_a_list_whose_items_failed_is_not_also_called_too_short(
    tmp_path: Path, cursor: str, expected: list[str]
) -> None:
    text = MES_EXAMPLE.read_text()
    assert 'cursor = ["changed_at", "id"]' in text
    path = tmp_path / "mes.toml"
    path.write_text(text.replace('cursor = ["changed_at", "id"]', f"cursor = {cursor}"))

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    said = [f"{p.key}: {p.message}" for p in caught.value.problems]
    assert len(said) == len(expected), said
    for line, start in zip(said, expected, strict=True):
        assert line.startswith(start), said


# --- the line locator ---------------------------------------------------------------------------


def test_locator_numbers_nested_arrays_of_tables_within_their_parent() -> None:
    locator = TomlKeyLocator(
        "[[a]]\n"  # 1
        "x = 1\n"  # 2
        "[[a.b]]\n"  # 3
        "y = 1\n"  # 4
        "[[a.b]]\n"  # 5
        "y = 2\n"  # 6
        "[[a]]\n"  # 7
        "[[a.b]]\n"  # 8
        "y = 3\n"  # 9
        "[a.c]\n"  # 10
        "z = 4\n"  # 11
    )

    assert locator.line_of(("a",)) == 1
    assert locator.line_of(("a", 0)) == 1
    assert locator.line_of(("a", 0, "x")) == 2
    assert locator.line_of(("a", 0, "b", 0, "y")) == 4
    assert locator.line_of(("a", 0, "b", 1, "y")) == 6
    assert locator.line_of(("a", 1)) == 7
    assert locator.line_of(("a", 1, "b", 0)) == 8
    assert locator.line_of(("a", 1, "b", 0, "y")) == 9
    assert locator.line_of(("a", 1, "c", "z")) == 11


def test_locator_missing_key_gives_its_table_and_missing_table_gives_none() -> None:
    locator = TomlKeyLocator("top = 1\n[t]\nk = 1\n[[arr]]\nk = 2\n")

    assert locator.line_of(("t", "absent")) == 2
    assert locator.line_of(("arr", 0, "absent")) == 4
    assert locator.line_of(("arr", 1)) is None
    assert locator.line_of(("arr", 1, "k")) is None
    assert locator.line_of(("nope",)) is None
    assert locator.line_of(("nope", "k")) is None
    assert locator.line_of(("top",)) == 1


def test_locator_skips_multiline_arrays_and_strings() -> None:
    locator = TomlKeyLocator(
        "[t]\n"  # 1
        "list = [\n"  # 2
        '  "[fake]",  # a comment with ] in it\n'  # 3
        "  'not = a key',\n"  # 4
        "  [1, 2],\n"  # 5
        "]\n"  # 6
        'text = """\n'  # 7
        "[[also.fake]]\n"  # 8
        'inner = 1 \\"""\n'  # 9
        '"""\n'  # 10
        "literal = '''\n"  # 11
        "[fake2]\n"  # 12
        "'''\n"  # 13
        "after = 1\n"  # 14
    )

    assert locator.line_of(("t", "list")) == 2
    assert locator.line_of(("t", "list", 2)) == 2
    assert locator.line_of(("t", "text")) == 7
    assert locator.line_of(("t", "literal")) == 11
    assert locator.line_of(("t", "after")) == 14
    for fake in (("fake",), ("also",), ("fake2",)):
        assert locator.line_of(fake) is None, fake
    assert locator.line_of(("t", "inner")) == 1  # absent: the table's line
    assert locator.line_of(("t", "not")) == 1


def test_locator_gives_inline_table_keys_the_line_of_the_table() -> None:
    locator = TomlKeyLocator('[s]\nstates = { 0 = "idle", 1 = { deep = true } }\nnext = 1\n')

    assert locator.line_of(("s", "states")) == 2
    assert locator.line_of(("s", "states", "0")) == 2
    assert locator.line_of(("s", "states", "1", "deep")) == 2
    assert locator.line_of(("s", "next")) == 3


def test_locator_ignores_comments() -> None:
    locator = TomlKeyLocator(
        "# [commented]\n"  # 1
        "  # key = 1\n"  # 2
        "[t]  # [[other]]\n"  # 3
        'k = "a # b"  # c = 2\n'  # 4
        "\n"  # 5
        "   m = 1\n"  # 6
    )

    assert locator.line_of(("commented",)) is None
    assert locator.line_of(("key",)) is None
    assert locator.line_of(("other",)) is None
    assert locator.line_of(("t",)) == 3
    assert locator.line_of(("t", "k")) == 4
    assert locator.line_of(("t", "c")) == 3  # absent: the table's line
    assert locator.line_of(("t", "m")) == 6


def test_locator_reads_quoted_and_dotted_keys() -> None:
    locator = TomlKeyLocator(
        '["my table".inner]\n'  # 1
        '"quoted key" = 1\n'  # 2
        "'literal.key' = 2\n"  # 3
        'a . "b.c" . d = 3\n'  # 4
        '"esc\\u0041ped" = 4\n'  # 5
        "[ spaced . header ]\n"  # 6
        "x=1\n"  # 7
    )

    assert locator.line_of(("my table", "inner")) == 1
    assert locator.line_of(("my table", "inner", "quoted key")) == 2
    assert locator.line_of(("my table", "inner", "literal.key")) == 3
    assert locator.line_of(("my table", "inner", "a")) == 4
    assert locator.line_of(("my table", "inner", "a", "b.c", "d")) == 4
    assert locator.line_of(("my table", "inner", "escAped")) == 5
    assert locator.line_of(("spaced", "header", "x")) == 7


def test_format_key() -> None:
    assert format_key(("sources", 0, "signals", 1, "event")) == "sources[0].signals[1].event"
    assert format_key(("states", "1.5")) == 'states."1.5"'
    assert format_key(()) == ""
