"""The dependency direction of STYLE.md, enforced: buffer and events import nothing of ours,
connectors import neither agent, buffer, config nor events, config imports only connectors and
events, and nothing imports agent. The test harness (testkit) may import the application, but
nothing of the application imports testkit or tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APPLICATION = {"agent", "connectors", "buffer", "config", "events"}
HARNESS = {"testkit", "tests"}
OURS = APPLICATION | HARNESS
ALLOWED = {
    "events": {"events"},
    "buffer": {"buffer"},
    "connectors": {"connectors"},
    "config": {"config", "connectors", "events"},
    "agent": APPLICATION,
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


def test_packaging_folder_is_not_a_python_package() -> None:
    assert not list((REPO / "packaging").rglob("*.py"))
    assert not (REPO / "packaging" / "__init__.py").exists()
