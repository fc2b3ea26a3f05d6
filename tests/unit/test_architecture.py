"""The dependency direction of STYLE.md, enforced: buffer and events import nothing of ours,
connectors import neither agent, buffer, config nor events, config imports only connectors and
events, and nothing imports agent. The test harness (testkit) may import the application, but
nothing of the application imports testkit or tests. No import cycle among our modules,
counting the imports made only for type checking or inside a function."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APPLICATION = {"agent", "connectors", "buffer", "config", "events", "hub"}
HARNESS = {"testkit", "tests"}
OURS = APPLICATION | HARNESS
ALLOWED = {
    "events": {"events"},
    "buffer": {"buffer"},
    "connectors": {"connectors"},
    "config": {"config", "connectors", "events"},
    "agent": APPLICATION,
    # The hub: the contract, the config loader, the backoff, and of the agent only the shared
    # MQTT session and command signing (test_hub_uses_only_the_shared_link_code).
    "hub": {"hub", "events", "config", "connectors", "agent"},
    "testkit": APPLICATION | {"testkit"},
}


def imported_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_dependency_direction(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, package
    for path in files:
        wrong = imported_packages(path) - ALLOWED[package]
        assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}"


@pytest.mark.parametrize("package", sorted(APPLICATION))
def test_nothing_of_the_application_imports_the_harness(package: str) -> None:
    for path in sorted((REPO / package).rglob("*.py")):
        wrong = imported_packages(path) & HARNESS
        assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}"


HUB_MAY_IMPORT_OF_AGENT = {"agent.link.mqtt_session", "agent.link.signing"}


def test_hub_uses_only_the_shared_link_code() -> None:
    """The hub shares the MQTT session and the signing code; never the agent's runtime or
    any other part of it."""
    agent_modules = {module_name(path) for path in (REPO / "agent").rglob("*.py")}
    files = sorted((REPO / "hub").rglob("*.py"))
    assert files
    for path in files:
        used = {name for name in imported_modules(path, agent_modules) if name != "agent"}
        wrong = used - HUB_MAY_IMPORT_OF_AGENT
        assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}"


def test_only_the_cli_and_the_tests_import_the_hub() -> None:
    for package in sorted(OURS - {"hub"}):
        for path in sorted((REPO / package).rglob("*.py")):
            relative = path.relative_to(REPO)
            if relative.parts[0] == "tests" or relative.parts[:2] == ("agent", "cli"):
                continue
            assert "hub" not in imported_packages(path), f"{relative} imports hub"


def test_packaging_folder_is_not_a_python_package() -> None:
    assert not list((REPO / "packaging").rglob("*.py"))
    assert not (REPO / "packaging" / "__init__.py").exists()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The modules of ours that `path` imports anywhere in it (at the top, under
    TYPE_CHECKING, inside a function): `from a.b import c` counts as `a.b.c` when that is a
    module, else as `a.b`. A package's `__init__` is not counted for its submodules' sake."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in modules:
                    found.add(full)
                elif base in modules:
                    found.add(base)
    return found - {name}


def test_no_import_cycles() -> None:
    """A cycle (runtime -> commands -> runtime, even under TYPE_CHECKING) means two modules
    that cannot be read, tested or moved apart: break it with a protocol (`agent.view`)."""
    paths = {
        module_name(path): path
        for package in sorted(APPLICATION | {"testkit"})
        for path in sorted((REPO / package).rglob("*.py"))
    }
    graph = {name: imported_modules(path, set(paths)) for name, path in paths.items()}
    # The graph is read (the runtime wires the commands and the status).
    assert graph["agent.runtime"] >= {"agent.link.commands", "agent.link.status"}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        cycle = error.args[1]
        pytest.fail(f"import cycle: {' -> '.join(cycle)}")


def concrete_buffer_imports(path: Path) -> list[int]:
    """The lines where `path` imports the SQLite buffer (`buffer.sqlite` or a module of it),
    anywhere in the file: at the top, under TYPE_CHECKING or inside a function."""
    lines: list[int] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        if any(name == "buffer.sqlite" or name.startswith("buffer.sqlite.") for name in names):
            lines.append(node.lineno)
    return lines


def test_only_the_store_factory_names_the_concrete_buffer() -> None:
    """`agent.store` opens the SQLite buffer; everything else in `agent` works through the
    `buffer.base.Buffer` protocol it hands out, so the store can change in one place."""
    factory = REPO / "agent" / "store.py"
    assert concrete_buffer_imports(factory)  # the check reads what it should
    for path in sorted((REPO / "agent").rglob("*.py")):
        if path == factory:
            continue
        lines = concrete_buffer_imports(path)
        assert not lines, (
            f"{path.relative_to(REPO)}:{lines[0]} imports buffer.sqlite: use agent.store and "
            "the buffer.base.Buffer protocol"
        )
