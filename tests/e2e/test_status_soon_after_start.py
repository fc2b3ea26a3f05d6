"""`status.json` says the sources run soon after they started, not one whole status interval
later: the snapshot written when the agent got ready shows them `starting`. Real agent process,
a real broker, a simulated source, a status interval of an hour."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker
from testkit.durability import simulated_agent_config


def _sources(state: Path) -> dict[str, Any]:
    try:
        document = json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    sources = document.get("sources") if isinstance(document, dict) else None
    return sources if isinstance(sources, dict) else {}


def test_the_snapshot_shows_the_running_sources_within_seconds(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    text = simulated_agent_config(hub_url=broker.url, state_dir=state, rate_hz=20)
    assert "status_interval_s = 3600" in text  # the interval alone would take an hour
    config.write_text(text)
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        agent.start()
        deadline = time.monotonic() + 30
        sim: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert agent.exit_code() is None, agent.log_text()
            sim = _sources(state).get("sim") or {}
            if sim.get("state") == "running" and (sim.get("readings_total") or 0) > 0:
                break
            time.sleep(0.2)
        assert sim.get("state") == "running", sim
        assert sim["readings_total"] > 0, sim
        assert agent.terminate() == 0, agent.log_text()
    finally:
        agent.ensure_stopped()
