"""The exception tree of `agent.errors` is complete: every public exception class of ours is
drawn in its docstring, under the base it really has."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import agent.errors

REPO = Path(__file__).resolve().parents[2]
APPLICATION = ("agent", "buffer", "config", "connectors", "events", "hub")
BUILTIN_EXCEPTIONS = {
    name for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
}


def exception_classes() -> dict[str, set[str]]:
    """Public exception class name -> the names of its bases, for every module of ours
    (found from the source: a class whose base is a built-in exception or one of these)."""
    bases: dict[str, set[str]] = {}
    for package in APPLICATION:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ClassDef):
                    names = {
                        base.id if isinstance(base, ast.Name) else ast.unparse(base).split(".")[-1]
                        for base in node.bases
                    }
                    bases.setdefault(node.name, set()).update(names)
    exceptions: dict[str, set[str]] = {}
    known = set(BUILTIN_EXCEPTIONS)
    while True:
        found = {name: names for name, names in bases.items() if names & known}
        if found.keys() <= exceptions.keys():
            break
        exceptions = found
        known |= found.keys()
    return {name: names for name, names in exceptions.items() if not name.startswith("_")}


def drawn_tree() -> dict[str, str]:
    """Class name -> the class it is drawn under, from the docstring's tree (`Exception` at the
    root, each level four columns deeper; lines without `──` continue a comment)."""
    doc = agent.errors.__doc__ or ""
    lines = doc[doc.index("    Exception\n"):].splitlines()
    parents: dict[str, str] = {}
    path = ["Exception"]
    for line in lines[1:]:
        if not line.strip():
            break
        marker = line.find("── ")
        if marker < 0:
            continue
        depth = (marker - 4) // 4 + 1  # `├── ` right under the root is depth 1
        name = line[marker + 3:].split()[0]
        del path[depth:]
        parents[name] = path[-1]
        path.append(name)
    return parents


def test_every_exception_class_is_in_the_tree() -> None:
    classes = exception_classes()
    assert {"SourceUnavailable", "BufferFailure", "ConfigError", "PubAckTimeout"} <= classes.keys()
    tree = drawn_tree()
    missing = sorted(classes.keys() - tree.keys())
    assert not missing, f"agent/errors.py does not draw {missing}"


def test_the_tree_draws_each_class_under_one_of_its_bases() -> None:
    classes = exception_classes()
    for name, parent in drawn_tree().items():
        if name in BUILTIN_EXCEPTIONS:
            continue  # a built-in drawn to hang ours under it
        assert name in classes, f"agent/errors.py draws {name}, which is not a class of ours"
        assert parent in classes[name], (
            f"{name} is drawn under {parent}; its bases are {sorted(classes[name])}"
        )
