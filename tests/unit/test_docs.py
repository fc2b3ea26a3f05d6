"""The docs say only what is true of the code: every `edge-agent ...` command that README.md and
docs/*.md show exists (each sub-command path resolves in the CLI's argparse parser, and each
`--option` shown with it is an option of that sub-command), every config key their ```toml
snippets show exists in the config schema, every relative link between them reaches a file and
heading that exist, and the benchmark tables of docs/performance.md are the rendering of the
benchmarks' committed reference results (`bench.report.SECTIONS`: bench/results.reference.json
for `bench.run`, bench/results.durability.reference.json for `bench.durability`).

How the docs are read:
- A command is a line of a fenced block that starts with `edge-agent` (after an optional `$ `
  prompt or a `.../bin/` path; `\\` continues it on the next line; in a ```console block only a
  `$ ` line, the others are output), or an inline code span that starts with `edge-agent `.
  Shell quoting, `# comments` and a ` | ` pipe are honoured;
  `[` `]` mark optional parts and are dropped; `a|b|c` in a sub-command's place means each of
  them, and an upper-case placeholder there (`COMMAND`) means every sub-command of that level.
- A TOML snippet may be partial: a table header (`[hub]`, `[[sources]]`, `[sources.columns]`)
  sets the path of the keys below it. A source's keys are checked against the source type its
  `type` names (a discriminated union), or against any source type when the snippet has none.
  A commented-out key (`# key = value`, an optional setting shown at its default) is a shown
  key too, checked at its table's path.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel

from agent import cli
from bench import report
from config.schema import AgentConfig
from hub.config import HubConfig

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^[ \t]*```([\w-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_COMMAND_LINE = re.compile(r"^\s*(?:\$\s+)?(?:\S*/)?edge-agent(?:\s+(?P<words>.*))?$")
_OPTION = re.compile(r"^--?[A-Za-z][\w-]*")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*$")
_HEADER = re.compile(r"^\s*\[\[?\s*(?P<key>[^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_COMMENTED_KEY = re.compile(r"^\s*#\s*(?P<key>[A-Za-z_][\w-]*)\s*=\s*\S")


@dataclass(frozen=True, slots=True)
class Shown:
    """Something a doc shows: a command or a TOML snippet, and where."""

    where: str
    text: str


# --- reading the docs ---------------------------------------------------------------------------


def fenced_blocks(text: str) -> Iterator[tuple[str, int, str]]:
    """(language, line of the opening fence, body) of each fenced code block."""
    for match in _FENCE.finditer(text):
        yield match.group(1), text.count("\n", 0, match.start()) + 1, match.group(2)


def shown_commands(path: Path) -> list[Shown]:
    """Every `edge-agent ...` command the file shows, as the words after `edge-agent`."""
    text = path.read_text().replace("\\|", "|")  # a `|` escaped inside a Markdown table
    found: list[Shown] = []
    for language, first_line, body in fenced_blocks(text):
        lines = body.replace("\\\n", " ").splitlines()
        for offset, line in enumerate(lines):
            if language == "console" and not line.startswith("$ "):
                continue  # a terminal session: a command's output, not a command
            match = _COMMAND_LINE.match(line)
            if match:
                found.append(Shown(f"{path.name}:{first_line + 1 + offset}",
                                   match.group("words") or ""))
    prose = _without_fences(text)
    for span in _INLINE.finditer(prose):
        words = " ".join(span.group(1).split())
        if words.startswith("edge-agent "):
            number = prose.count("\n", 0, span.start()) + 1
            found.append(Shown(f"{path.name}:{number}", words.removeprefix("edge-agent ")))
    return found


def broken_links(path: Path) -> list[str]:
    """Relative links of the file whose target file, or `#anchor` in it, does not exist."""
    broken = []
    for link in _LINK.finditer(_without_fences(path.read_text())):
        target, _, anchor = link.group(1).partition("#")
        if re.match(r"^[a-z]+:", target):
            continue  # https:, mailto:
        resolved = (path.parent / target).resolve() if target else path
        if not resolved.exists():
            broken.append(f"{path.name}: {link.group(1)}: no such file")
        elif anchor and anchor not in heading_anchors(resolved):
            broken.append(f"{path.name}: {link.group(1)}: no such heading")
    return broken


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the file's headings: lower case, punctuation dropped, spaces
    as hyphens."""
    if path.suffix != ".md":
        return set()
    headings = re.findall(r"^#+ (.+)$", _without_fences(path.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in headings}


def _without_fences(text: str) -> str:
    return _FENCE.sub(lambda block: "\n" * block.group(0).count("\n"), text)


def shown_toml(path: Path) -> list[Shown]:
    return [
        Shown(f"{path.name}:{line}", body)
        for language, line, body in fenced_blocks(path.read_text())
        if language == "toml"
    ]


# --- commands against the CLI -------------------------------------------------------------------


def edge_agent_parser() -> argparse.ArgumentParser:
    """The `edge-agent` parser, built from the CLI's command groups as `agent.cli.main` does."""
    parser = argparse.ArgumentParser(prog="edge-agent")
    parser.add_argument("--version", action="version", version="edge-agent")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in cli._GROUPS:
        group.register(commands)
    return parser


def _sub_commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _words(command: str) -> list[str]:
    try:
        words = shlex.split(command, comments=True)
    except ValueError:  # an unbalanced quote in prose: plain words are enough to check
        words = command.split()
    if "|" in words:
        words = words[: words.index("|")]
    return [bare for word in words if (bare := word.strip("[]")) and bare != "..."]


def command_problems(parser: argparse.ArgumentParser, command: str) -> list[str]:
    """What in `command` (the words after `edge-agent`) the CLI does not have."""
    words = _words(command)
    parsers = {"edge-agent": parser}
    while words and not _OPTION.match(words[0]):
        levels = {path: _sub_commands(each) for path, each in parsers.items()}
        if not any(levels.values()):
            break  # a positional argument of the sub-command reached
        word = words.pop(0)
        following: dict[str, argparse.ArgumentParser] = {}
        for path, choices in levels.items():
            names = list(choices) if _PLACEHOLDER.match(word) else word.split("|")
            for name in names:
                if name not in choices:
                    return [f"`{path}` has no sub-command {name!r} (it has {sorted(choices)})"]
                following[f"{path} {name}"] = choices[name]
        parsers = following
    problems = []
    for word in words:
        option = _OPTION.match(word)
        if option is None:
            continue
        for path, each in parsers.items():
            if option.group(0) not in _options(each):
                problems.append(f"`{path}` has no option {option.group(0)}")
    return problems


# --- TOML keys against the schema ---------------------------------------------------------------


def _shapes(annotation: object) -> list[object]:
    """The types a TOML value may take for `annotation`: models, dicts and scalars, with
    `Annotated`, `X | None`, unions and lists (arrays of tables) unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _shapes(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, set, frozenset):
        return [shape for arg in typing.get_args(annotation) for shape in _shapes(arg)]
    return [annotation]


def _models(shapes: Sequence[object]) -> list[type[BaseModel]]:
    return [shape for shape in shapes if isinstance(shape, type) and issubclass(shape, BaseModel)]


def _tags(model: type[BaseModel], field: str) -> tuple[object, ...]:
    """The literal values of a discriminator field (`type: Literal["opcua"]`)."""
    found = model.model_fields.get(field)
    if found is None:
        return ()
    return tuple(arg for shape in _shapes(found.annotation) for arg in typing.get_args(shape))


def key_problems(table: Mapping[str, object], shapes: Sequence[object], path: str) -> list[str]:
    """Keys of `table` that no shape of `shapes` has, recursively (`path` names `table`)."""
    mappings = [shape for shape in shapes if typing.get_origin(shape) is dict]
    models = _models(shapes)
    if isinstance(table.get("type"), str) and any(_tags(model, "type") for model in models):
        models = [model for model in models if table["type"] in _tags(model, "type")]
        if not models:
            return [f"{path}.type: no such source type {table['type']!r}"]
    if not mappings and not models:
        return [f"{path}: not a table in the schema"]
    problems: list[str] = []
    for key, value in table.items():
        children: list[object] = [
            shape for mapping in mappings for shape in _shapes(typing.get_args(mapping)[1])
        ]
        known = bool(mappings)
        for model in models:
            field = model.model_fields.get(key)
            if field is not None:
                known = True
                children.extend(_shapes(field.annotation))
        if not known:
            problems.append(f"{path}.{key}: unknown key")
            continue
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict):
                problems.extend(key_problems(item, children, f"{path}.{key}"))
    return problems


def _header_path(header: str) -> list[str]:
    """`assets."line1"` -> ["assets", "line1"] (TOML parses the dotted key)."""
    parsed: object = tomllib.loads(f"{header} = 0")
    path: list[str] = []
    while isinstance(parsed, dict):
        ((key, parsed),) = parsed.items()
        path.append(key)
    return path


def commented_keys(snippet: str) -> dict[str, object]:
    """The commented-out keys of a snippet (`# key = value`), nested under their table."""
    document: dict[str, object] = {}
    table: list[str] = []
    for line in snippet.splitlines():
        header = _HEADER.match(line)
        if header:
            table = _header_path(header.group("key"))
            continue
        commented = _COMMENTED_KEY.match(line)
        if commented:
            node = document
            for key in table:
                child = node.setdefault(key, {})
                assert isinstance(child, dict)
                node = child
            node.setdefault(commented.group("key"), None)
    return document


def toml_problems(snippet: str) -> list[str]:
    """Keys of a TOML snippet, set or commented out, that the config schema does not have."""
    try:
        document = tomllib.loads(snippet)
    except tomllib.TOMLDecodeError as error:
        return [f"not valid TOML: {error}"]
    # A hub.toml snippet (docs/hub-guide.md) has only the hub's sections; check it against
    # the hub's model, every other snippet against the agent's.
    tables = set(document) | set(commented_keys(snippet))
    model: type[BaseModel] = (
        HubConfig if tables and tables <= set(HubConfig.model_fields) else AgentConfig
    )
    root = "hub" if model is HubConfig else "config"
    return [
        *key_problems(document, [model], root),
        *key_problems(commented_keys(snippet), [model], f"{root} (commented out)"),
    ]


# --- the tests ----------------------------------------------------------------------------------


def test_the_docs_show_commands_and_snippets() -> None:
    commands = [shown for path in DOCS for shown in shown_commands(path)]
    snippets = [shown for path in DOCS for shown in shown_toml(path)]
    assert len(commands) >= 40, commands
    assert len(snippets) >= 10, snippets


@pytest.mark.parametrize("path", DOCS, ids=[path.name for path in DOCS])
def test_every_command_shown_exists(path: Path) -> None:
    parser = edge_agent_parser()
    problems = [
        f"{shown.where}: edge-agent {shown.text}: {problem}"
        for shown in shown_commands(path)
        for problem in command_problems(parser, shown.text)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=[path.name for path in DOCS])
def test_every_config_key_shown_exists(path: Path) -> None:
    problems = [
        f"{shown.where}: {problem}"
        for shown in shown_toml(path)
        for problem in toml_problems(shown.text)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", DOCS, ids=[path.name for path in DOCS])
def test_every_link_between_the_docs_resolves(path: Path) -> None:
    assert not broken_links(path), "\n".join(broken_links(path))


def test_the_command_checker_finds_made_up_commands_and_options() -> None:
    parser = edge_agent_parser()
    assert command_problems(parser, "buffer stats -c CONFIG [--json]") == []
    assert command_problems(parser, "remote sources|buffer|ping --hub URL --site S --agent A") == []
    assert command_problems(parser, "remote COMMAND --hub URL --site SITE --agent ID") == []
    assert command_problems(parser, "frobnicate -c CONFIG")
    assert command_problems(parser, "buffer statz -c CONFIG")
    assert command_problems(parser, "buffer stats -c CONFIG --frobnicate")
    assert command_problems(parser, "remote status|frobnicate --hub URL")
    assert command_problems(parser, "remote COMMAND --since 1d")  # only `replay` takes it
    assert command_problems(parser, "run -c CONFIG --json")  # --json is not an option of `run`


def test_the_key_checker_finds_made_up_keys() -> None:
    assert toml_problems('[hub]\nurl = "mqtt://h:1883"\n# keepalive_s = 30\n') == []
    assert toml_problems('[[sources]]\ntype = "mes-files"\nfolder = "drop"\n') == []
    assert toml_problems("[hub]\nurll = 1\n") == ["config.hub.urll: unknown key"]
    assert toml_problems('[broker]\nurl = "mqtt://h:1883"\nclient_id = "h"\n') == []
    assert toml_problems("[broker]\nurll = 1\n") == ["hub.broker.urll: unknown key"]
    assert toml_problems("[dashboard]\n# portt = 1\n") == [
        "hub (commented out).dashboard.portt: unknown key"
    ]
    assert toml_problems('[[sources]]\ntype = "opcua"\nfolder = "drop"\n') == [
        "config.sources.folder: unknown key"
    ]
    assert toml_problems('[[sources]]\ntype = "modbus"\n') == [
        "config.sources.type: no such source type 'modbus'"
    ]
    assert toml_problems("[[sources.signals]]\nnodee = 1\n") == [
        "config.sources.signals.nodee: unknown key"
    ]
    assert toml_problems("[agent]\n# sitee = 1\n") == [
        "config (commented out).agent.sitee: unknown key"
    ]
    assert toml_problems("[hub\n")[0].startswith("not valid TOML")


@pytest.mark.parametrize("section", report.SECTIONS, ids=[s.benchmark for s in report.SECTIONS])
def test_performance_tables_are_the_reference_results_rendered(section: report.Section) -> None:
    reference = json.loads(section.reference.read_text())
    assert report.section_of(reference) is section  # the file is that benchmark's results
    assert section.generated(report.PERFORMANCE_DOC.read_text()) == section.render(reference)


def test_the_hub_landing_tables_are_its_reference_results_rendered() -> None:
    # bench.hub_landing renders its own section (`--write-docs`); bench.report's SECTIONS are
    # the agent's benchmarks, which `python -m bench.report --write` renders together.
    from bench import hub_landing

    section = hub_landing.SECTION
    reference = json.loads(section.reference.read_text())
    assert reference["benchmark"] == section.benchmark
    assert section.generated(report.PERFORMANCE_DOC.read_text()) == section.render(reference)
