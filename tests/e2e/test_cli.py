"""The `edge-agent` command line as OT staff use it: exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testkit.agent_process import REPO

EXAMPLE = REPO / "config" / "example.toml"


def edge_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )


def test_check_config_accepts_the_annotated_example() -> None:
    result = edge_agent("check-config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "site plant-a" in result.stdout


def broken(tmp_path: Path, old: str, new: str) -> Path:
    text = EXAMPLE.read_text()
    assert old in text, f"the example no longer contains {old!r}"
    path = tmp_path / "agent.toml"
    path.write_text(text.replace(old, new, 1))
    return path


def line_of(path: Path, needle: str) -> int:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


def test_wrong_type_names_line_and_key(tmp_path: Path) -> None:
    path = broken(tmp_path, 'topic_prefix = "mfg"', 'topic_prefix = "mfg"\nkeepalive_s = "often"')
    result = edge_agent("check-config", str(path))
    assert result.returncode == 2
    assert f"{path}:{line_of(path, 'keepalive_s')}: hub.keepalive_s:" in result.stderr


def test_unknown_key_names_line_and_key(tmp_path: Path) -> None:
    path = broken(tmp_path, 'id = "edge-01"', 'id = "edge-01"\nsiet = "typo"')
    result = edge_agent("check-config", str(path))
    assert result.returncode == 2
    assert f"{path}:{line_of(path, 'siet')}: agent.siet:" in result.stderr


def test_bad_url_names_line_and_key(tmp_path: Path) -> None:
    path = broken(tmp_path, 'url = "mqtt://127.0.0.1:1883"', 'url = "http://127.0.0.1:1883"')
    result = edge_agent("check-config", str(path))
    assert result.returncode == 2
    assert f"{path}:{line_of(path, 'http://')}: hub.url:" in result.stderr
    assert "mqtt://" in result.stderr


def test_missing_section_is_named(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    start = text.index("[hub]")
    end = text.index("\n[", start + 1)
    path = tmp_path / "agent.toml"
    path.write_text(text[:start] + text[end + 1 :])
    result = edge_agent("check-config", str(path))
    assert result.returncode == 2
    assert "[hub]" in result.stderr and "hub" in result.stderr


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = broken(tmp_path, 'site = "plant-a"', 'site = "plant-a')
    result = edge_agent("check-config", str(path))
    assert result.returncode == 2
    assert f"{path}:{line_of(path, 'site = ')}:" in result.stderr


def test_run_refuses_an_invalid_config_with_exit_2(tmp_path: Path) -> None:
    path = broken(tmp_path, 'event = "telemetry"', 'event = "temperature"')
    result = edge_agent("run", "-c", str(path), timeout=30)
    assert result.returncode == 2
    assert f"{path}:{line_of(path, 'temperature')}: sources[0].signals[" in result.stderr


def test_schema_prints_every_event_type() -> None:
    result = edge_agent("schema")
    assert result.returncode == 0, result.stderr
    schemas = json.loads(result.stdout)
    from events.models import json_schemas

    assert set(schemas) == set(json_schemas())
    assert {
        "telemetry.v1", "machine.state.v1", "production.count.v1",
        "quality.alert.v1", "machine.downtime.v1", "workorder.completed.v3",
        "inventory.adjusted.v1",
    } <= set(schemas)
    for name, schema in schemas.items():
        assert schema["properties"]["type"]["const"] == name
        required = set(schema["required"])
        assert {"specversion", "id", "source", "type", "time", "subject", "site", "agent", "seq",
                "quality", "data"} <= required


def test_schema_of_one_type_and_unknown_type() -> None:
    one = edge_agent("schema", "telemetry")
    assert one.returncode == 0
    assert json.loads(one.stdout)["title"] == "telemetry.v1"
    unknown = edge_agent("schema", "nope")
    assert unknown.returncode == 2 and "telemetry.v1" in unknown.stderr
