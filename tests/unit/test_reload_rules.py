"""What a reload refuses (`agent.service.reload_rules`): the rule that SIGHUP and the remote
command share."""

from __future__ import annotations

from pathlib import Path

from agent.service.reload_rules import reload_refusal
from config.loader import load_config
from config.schema import AgentConfig

CONFIG = """
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "{state_dir}"

[hub]
url = "mqtt://127.0.0.1:1883"

[buffer]
max_bytes = {max_bytes}

[[sources]]
name = "{source}"
type = "simulated"
  [[sources.signals]]
  node = "temperature"
  event = "telemetry"
  asset = "line1"
"""


def config(
    tmp_path: Path, *, state_dir: str = "state", max_bytes: int = 100_000_000,
    source: str = "sim",
) -> AgentConfig:
    path = tmp_path / f"agent-{state_dir}-{max_bytes}-{source}.toml"
    path.write_text(CONFIG.format(state_dir=state_dir, max_bytes=max_bytes, source=source))
    return load_config(path)


def test_anything_but_the_state_dir_and_the_buffer_may_change(tmp_path: Path) -> None:
    assert reload_refusal(config(tmp_path), config(tmp_path)) is None
    assert reload_refusal(config(tmp_path), config(tmp_path, source="other")) is None


def test_a_new_state_dir_is_refused_and_says_both_dirs(tmp_path: Path) -> None:
    running, new = config(tmp_path), config(tmp_path, state_dir="elsewhere")
    refusal = reload_refusal(running, new)
    assert refusal is not None
    assert refusal.startswith("agent.state_dir changed")
    assert str(running.agent.state_dir) in refusal and str(new.agent.state_dir) in refusal
    assert "restart" in refusal


def test_changed_buffer_settings_are_refused(tmp_path: Path) -> None:
    refusal = reload_refusal(config(tmp_path), config(tmp_path, max_bytes=200_000_000))
    assert refusal is not None
    assert refusal.startswith("[buffer] settings changed") and "restart" in refusal
