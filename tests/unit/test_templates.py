"""Signal templates (`config.templates`): expansion in config loading, every mistake named by
file, line and key with its template and instance, and `try` telling repeated names apart.

Configs are real files in `tmp_path`, loaded by `config.loader.load_config`; expected lines are
found in the text by a marker comment (`line_of`), so they hold whatever the text above them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent.cli import main
from config.loader import ConfigError, ConfigProblem, load_config
from config.templates import ExpandedLocator, expand

LINE_NAMES = ("L1", "L2", "L3")
REPO = Path(__file__).resolve().parents[2]
HEAD = """\
[agent]
site = "plant-a"
id = "edge-01"

[hub]
url = "mqtt://127.0.0.1:1883"
"""

FILLER = """
[templates.filler]
params = ["line"]
  [[templates.filler.signals]]
  node = "ns=2;s={line}.Filler.GoodCount"  # good-node
  event = "production.count"
  asset = "{line}/filler"
  name = "good"
  [[templates.filler.signals]]
  node = "ns=2;s={line}.Filler.State"
  event = "machine.state"
  asset = "{line}/filler"  # state-asset
  name = "state"
  states = { 0 = "idle", 1 = "running" }
"""

SOURCE = """
[[sources]]
name = "plant"
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
"""


def toml_value(value: object) -> str:
    """`value` in TOML: an inline table for a dict, else as JSON writes it."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def instance(template: str = "filler", overrides: object = None, **params: object) -> str:
    text = f'  [[sources.instances]]  # instance\n  template = "{template}"\n'
    if params:
        text += f"  params = {toml_value(params)}\n"
    if overrides is not None:
        text += f"  overrides = {toml_value(overrides)}\n"
    return text


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return caught.value.problems


def line_of(text: str, marker: str, occurrence: int = 1) -> int:
    """The 1-based line of the `occurrence`-th line holding `marker`."""
    hits = [n for n, line in enumerate(text.split("\n"), start=1) if marker in line]
    return hits[occurrence - 1]


# --- expansion ----------------------------------------------------------------------------------


def test_three_instances_load_as_the_same_signals_as_written_by_hand(tmp_path: Path) -> None:
    templated = HEAD + FILLER + SOURCE + "".join(instance(line=line) for line in ("L1", "L2", "L3"))
    by_hand = (
        HEAD
        + SOURCE
        + "".join(
            f"""
  [[sources.signals]]
  node = "ns=2;s={line}.Filler.GoodCount"
  event = "production.count"
  asset = "{line}/filler"
  name = "good"
  [[sources.signals]]
  node = "ns=2;s={line}.Filler.State"
  event = "machine.state"
  asset = "{line}/filler"
  name = "state"
  states = {{ 0 = "idle", 1 = "running" }}
"""
            for line in ("L1", "L2", "L3")
        )
    )
    expanded = load_config(write(tmp_path, templated))
    written = load_config(write(tmp_path, by_hand))  # the same file: the same relative paths
    assert [s.model_dump() for s in expanded.sources] == [s.model_dump() for s in written.sources]
    assert [s.node for s in expanded.sources[0].signals] == [
        f"ns=2;s={line}.Filler.{leaf}"
        for line in ("L1", "L2", "L3")
        for leaf in ("GoodCount", "State")
    ]


def test_hand_written_signals_come_first_and_overrides_apply_to_one_instance(
    tmp_path: Path,
) -> None:
    text = (
        HEAD
        + FILLER
        + SOURCE
        + instance(line="L1", overrides={"good": {"rollover": 65535}})
        + instance(line="L2")
        + """
  [[sources.signals]]
  node = "ns=2;s=Plant.Power"
  event = "telemetry"
  asset = "plant"
"""
    )
    # TOML puts the hand-written [[sources.signals]] in `signals` wherever it stands
    signals = load_config(write(tmp_path, text)).sources[0].signals
    assert [s.node for s in signals] == [
        "ns=2;s=Plant.Power",
        "ns=2;s=L1.Filler.GoodCount",
        "ns=2;s=L1.Filler.State",
        "ns=2;s=L2.Filler.GoodCount",
        "ns=2;s=L2.Filler.State",
    ]
    assert [s.rollover for s in signals if s.name == "good"] == [65535, None]


def test_a_whole_value_placeholder_takes_the_parameters_type_and_braces_escape() -> None:
    data = {
        "templates": {
            "t": {
                "params": ["max", "n"],
                "signals": [
                    {
                        "node": "s={n}.{{raw}}",
                        "rollover": "{max}",
                        "name": "c{n}",
                        "states": ["{n}"],
                    },
                ],
            }
        },
        "sources": [
            {
                "name": "s",
                "type": "opcua",
                "instances": [
                    {"template": "t", "params": {"max": 999, "n": 7}},
                ],
            }
        ],
    }
    expansion = expand(data)
    assert expansion.problems == []
    assert "templates" not in expansion.data  # the loader's keys: gone once expanded
    assert expansion.data["sources"] == [
        {
            "name": "s",
            "type": "opcua",
            "signals": [{"node": "s=7.{raw}", "rollover": 999, "name": "c7", "states": [7]}],
        }
    ]
    assert expansion.place(("sources", 0, "signals", 0, "rollover"))[0] == (
        "templates",
        "t",
        "signals",
        0,
        "rollover",
    )


def test_the_docs_examples_load(tmp_path: Path) -> None:
    """docs/templates.md's TOML blocks are complete configs (test_docs cannot check their
    keys against the schema: the schema never sees the loader's `templates`/`instances`)."""
    text = (REPO / "docs" / "templates.md").read_text()
    blocks = re.findall(r"^```TOML\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert blocks
    for block in blocks:
        (source,) = load_config(write(tmp_path, block)).sources
        assert source.signals[0].name == "hall_temperature"  # its own first, as the doc says
        assert len(source.signals) == 10
        assert "10 signal(s)" in text
    example = load_config(REPO / "config" / "examples" / "three-lines.toml")
    assert [s.rollover for s in example.sources[0].signals if s.name == "good_count"] == [
        65535,
        65535,
        9999,
    ]


# --- mistakes, each on its line -----------------------------------------------------------------


def one_problem(tmp_path: Path, text: str) -> tuple[int | None, str, str]:
    found = problems(tmp_path, text)
    assert len(found) == 1, [p.format() for p in found]
    problem = found[0]
    assert problem.file == tmp_path / "agent.toml"
    return problem.line, problem.key, problem.message


def test_an_unknown_template_is_named_with_the_closest_one(tmp_path: Path) -> None:
    text = HEAD + FILLER + SOURCE + instance("filer", line="L1")
    line, key, message = one_problem(tmp_path, text)
    assert (line, key) == (line_of(text, 'template = "filer"'), "sources[0].instances[0].template")
    assert message == "unknown template 'filer' (did you mean 'filler'? defined: filler)"


def test_a_missing_and_an_unknown_parameter(tmp_path: Path) -> None:
    text = HEAD + FILLER + SOURCE + instance(lnie="L1")
    found = problems(tmp_path, text)
    assert [(p.line, p.key, p.message) for p in found] == [
        (
            line_of(text, "params =", 2),
            "sources[0].instances[0].params.lnie",
            "template 'filler' has no parameter 'lnie' (did you mean 'line'? its params: line)",
        ),
        (
            line_of(text, "params =", 2),
            "sources[0].instances[0].params",
            "template 'filler' needs parameter(s) 'line' (its params: line)",
        ),
    ]
    text = HEAD + FILLER + SOURCE + instance()  # no params at all: the instance's header
    assert one_problem(tmp_path, text) == (
        line_of(text, "# instance"),
        "sources[0].instances[0].params",
        "template 'filler' needs parameter(s) 'line' (its params: line)",
    )


def test_a_parameter_outside_params_is_pointed_at_params(tmp_path: Path) -> None:
    text = HEAD + FILLER + SOURCE + instance(line="L1") + '  line = "L1"\n'
    _, key, message = one_problem(tmp_path, text)
    assert key == "sources[0].instances[0].line"
    assert message == (
        "unknown key (allowed keys: template, params, overrides); parameters go in `params`: "
        "params = { line = ... }"
    )
    text = HEAD + FILLER + SOURCE + instance(line="L1") + "  tempalte = 1\n"
    _, key, message = one_problem(tmp_path, text)
    assert message.startswith("unknown key (did you mean 'template'?")


def test_a_placeholder_that_is_not_a_parameter(tmp_path: Path) -> None:
    text = (
        HEAD
        + FILLER.replace('asset = "{line}/filler"  # state', 'asset = "{lien}/filler"  # state')
        + SOURCE
        + instance(line="L1")
    )
    line, key, message = one_problem(tmp_path, text)
    assert (line, key) == (line_of(text, "# state-asset"), "templates.filler.signals[1].asset")
    assert message == (
        "placeholder {lien} is not a parameter of template 'filler' (did you mean {line}? "
        "its params: line; declare it in `params`)"
    )


def test_an_unmatched_brace(tmp_path: Path) -> None:
    text = HEAD + FILLER.replace("s={line}.Filler.GoodCount", "s={line.Filler.GoodCount") + SOURCE
    line, key, message = one_problem(tmp_path, text + instance(line="L1"))
    assert (line, key) == (line_of(text, "# good-node"), "templates.filler.signals[0].node")
    assert message.startswith("unmatched '{' in 'ns=2;s={line.Filler.GoodCount'")


def test_template_definition_mistakes(tmp_path: Path) -> None:
    text = (
        HEAD
        + FILLER.replace('params = ["line"]', 'params = ["line", "line", "2x"]\nparms = 1')
        + SOURCE
    )
    found = problems(tmp_path, text + instance(line="L1"))
    assert [(p.line, p.key, p.message) for p in found] == [
        (
            line_of(text, "params ="),
            "templates.filler.params",
            "parameter name '2x': expected a letter or '_', then letters, digits or '_'",
        ),
        (line_of(text, "params ="), "templates.filler.params", "parameter(s) listed twice: 'line'"),
        (
            line_of(text, "parms ="),
            "templates.filler.parms",
            "unknown key (did you mean 'params'? allowed keys: params, signals, description)",
        ),
    ]


def test_two_instances_with_the_same_parameters_repeat_nodes(tmp_path: Path) -> None:
    text = HEAD + FILLER + SOURCE + instance(line="L1") + instance(line="L1")
    second = line_of(text, "# instance", 2)
    # one problem, on the parameters of the instance that repeats: they are what is wrong
    assert one_problem(tmp_path, text) == (
        line_of(text, "params =", 3),
        "sources[0].instances[1].params",
        "2 node(s) of this instance are already listed in source 'plant' by instance "
        "sources[0].instances[0]: 'ns=2;s=L1.Filler.GoodCount', 'ns=2;s=L1.Filler.State'; give "
        "the instances different parameters "
        f"[template 'filler', instance sources[0].instances[1] (line {second}: line = \"L1\")]",
    )


def test_a_template_that_gives_two_signals_one_node(tmp_path: Path) -> None:
    template = FILLER.replace("s={line}.Filler.State", "s={line}.Filler.GoodCount")
    text = HEAD + template + SOURCE + instance(line="L1")
    line, key, message = one_problem(tmp_path, text)
    assert (line, key) == (line_of(text, "node =", 2), "templates.filler.signals[1].node")
    assert message.startswith(
        "node 'ns=2;s=L1.Filler.GoodCount' is listed twice in template 'filler' (signals 0 and "
        "1); each signal needs its own node"
    )


def test_a_schema_error_on_a_generated_signal_names_the_template_line_and_instance(
    tmp_path: Path,
) -> None:
    template = FILLER.replace('params = ["line"]', 'params = ["line", "unit"]') + (
        "  [[templates.filler.signals]]\n"
        '  node = "ns=2;s={line}.Filler.Temperature"\n'
        '  event = "telemetry"\n'
        '  asset = "{line}/filler"\n'
        '  unit = "{unit}"  # unit\n'
    )
    text = HEAD + template + SOURCE + instance(line="L1", unit="Cel")
    text += instance(line="L2", unit="degC")
    line, key, message = one_problem(tmp_path, text)  # L1's unit is fine
    assert (line, key) == (line_of(text, "# unit"), "templates.filler.signals[2].unit")
    assert message.startswith("unknown unit 'degC'")
    assert message.endswith(
        f"[template 'filler', instance sources[0].instances[1] "
        f'(line {line_of(text, "# instance", 2)}: line = "L2", unit = "degC")]'
    )


def test_a_mistake_in_the_template_itself_is_one_problem_naming_every_instance(
    tmp_path: Path,
) -> None:
    template = FILLER.replace('name = "good"', 'name = "good"\n  unit = "Cel"  # unit')
    text = HEAD + template + SOURCE + instance(line="L1") + instance(line="L2")
    line, key, message = one_problem(tmp_path, text)
    assert (line, key) == (line_of(text, "# unit"), "templates.filler.signals[0].unit")
    assert message.endswith(
        "[template 'filler', instances "
        f"sources[0].instances[0] (line {line_of(text, '# instance')}), "
        f"sources[0].instances[1] (line {line_of(text, '# instance', 2)})]"
    )


def test_an_override_mistake_is_on_the_instance_line(tmp_path: Path) -> None:
    text = (
        HEAD
        + FILLER
        + SOURCE
        + instance(line="L1")
        + (
            '  [sources.instances.overrides.good]\n  rollover = "x"  # bad\n'
            "  [sources.instances.overrides.goood]\n  rollover = 1  # unknown\n"
        )
    )
    found = problems(tmp_path, text)
    assert [(p.line, p.key, p.message.split(" [")[0]) for p in found] == [
        (
            line_of(text, "[sources.instances.overrides.goood]"),
            "sources[0].instances[0].overrides.goood",
            "template 'filler' has no signal named 'goood' (did you mean 'good'? its signals: "
            "good, state)",
        ),
    ]
    text = text.replace("  [sources.instances.overrides.goood]\n  rollover = 1  # unknown\n", "")
    line, key, message = one_problem(tmp_path, text)
    assert (line, key) == (
        line_of(text, "# bad"),
        "sources[0].instances[0].overrides.good.rollover",
    )
    assert message.startswith("expected a whole number, got 'x' [template 'filler'")


def test_a_signal_name_repeated_on_an_asset_across_template_and_hand_written(
    tmp_path: Path,
) -> None:
    text = (
        HEAD
        + FILLER
        + SOURCE
        + instance(line="L1")
        + """
  [[sources.signals]]
  node = "ns=2;s=Other"
  event = "production.count"
  asset = "L1/filler"
  name = "good"
"""
    )
    line, key, message = one_problem(tmp_path, text)
    assert (line, key) == (line_of(text, 'name = "good"'), "templates.filler.signals[0].name")
    assert message.startswith("asset 'L1/filler' already has a signal named 'good'")
    assert "instance sources[0].instances[0]" in message


def test_instances_on_a_record_source_and_a_typo_of_instances(tmp_path: Path) -> None:
    text = (
        HEAD
        + FILLER
        + """
[[sources]]
name = "mes"
type = "mes-files"
path = "/tmp/x"
"""
        + instance(line="L1")
    )
    found = problems(tmp_path, text)
    assert found[0].key == "sources[0].instances"
    assert found[0].message.startswith("a mes-files source has no signals")
    text = (
        HEAD
        + FILLER
        + SOURCE
        + instance(line="L1").replace("sources.instances", "sources.instance")
    )
    found = problems(tmp_path, text)
    assert any(
        p.key == "sources[0].instance" and "did you mean 'instances'?" in p.message for p in found
    ), [p.format() for p in found]


def test_a_generated_signal_is_located_on_its_template_after_loading(tmp_path: Path) -> None:
    """What reports on a loaded config (`check-config --connect`) finds the lines too."""
    text = (
        HEAD
        + FILLER
        + SOURCE
        + instance(line="L1")
        + instance(line="L2", overrides={"good": {"rollover": 9}})
    )
    loaded = load_config(write(tmp_path, text)).sources[0].signals
    assert loaded[2].node == "ns=2;s=L2.Filler.GoodCount"
    locator = ExpandedLocator(text)
    assert locator.line_of(("sources", 0, "signals", 2, "node")) == line_of(text, "# good-node")
    line, key, note = locator.place(("sources", 0, "signals", 2, "rollover"))
    assert (line, key) == (
        line_of(text, "overrides ="),
        ("sources", 0, "instances", 1, "overrides", "good", "rollover"),
    )
    assert note == (
        f"template 'filler', instance sources[0].instances[1] (line "
        f'{line_of(text, "# instance", 2)}: line = "L2")'
    )
    assert locator.line_of(("sources", 0)) == line_of(text, "[[sources]]")


# --- try: repeated names ------------------------------------------------------------------------


def attempt(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    code = main(["try", "-c", str(config), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_try_tells_repeated_names_apart_by_asset_or_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, HEAD + FILLER + SOURCE + instance(line="L1") + instance(line="L2"))
    code, _, err = attempt(capsys, config, "--signal", "state", "--value", "1")
    assert code == 2
    assert err.strip() == (
        "edge-agent try: 'state' is ambiguous: 2 signals answer to it; pick one by ASSET/NAME "
        "or by its node: L1/filler/state (node ns=2;s=L1.Filler.State), L2/filler/state "
        "(node ns=2;s=L2.Filler.State)"
    )
    for name in ("L2/filler/state", "ns=2;s=L2.Filler.State", "plant/ns=2;s=L2.Filler.State"):
        code, out, err = attempt(
            capsys, config, "--signal", name, "--value", "1", "--set", "L2/filler/state=0"
        )
        assert code == 0, err
        (event,) = json.loads(out)
        assert event["subject"] == "L2/filler"
        assert event["data"]["state"] == "running" and event["data"]["previous"] == "idle"
    code, _, err = attempt(capsys, config, "--signal", "nope", "--value", "1")
    assert code == 2
    assert "signals: L1/filler/good, L1/filler/state, L2/filler/good, L2/filler/state" in err
