"""An agent whose buffer evicted keeps writing its status snapshot and keeps running.

The pipeline keys its eviction totals by (class, event type, reason); a snapshot written with
those tuple keys once raised a TypeError out of the status cycle and ended the agent. Real agent
process, a hub that never answers (nothing listens), a small buffer, a one-second status cycle.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker
from testkit.durability import simulated_agent_config


def _snapshot(state: Path) -> dict[str, Any] | None:
    try:
        document = json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def test_an_agent_that_evicted_writes_its_status_and_keeps_running(tmp_path: Path) -> None:
    state = tmp_path / "state"
    unreachable = MosquittoBroker()  # a free port with nothing listening
    config = tmp_path / "agent.toml"
    text = simulated_agent_config(
        hub_url=unreachable.url, state_dir=state, rate_hz=200,
        extra_buffer='max_bytes = "24KiB"',
    ).replace("status_interval_s = 3600", "status_interval_s = 1")
    config.write_text(text)
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        agent.start()
        deadline = time.monotonic() + 60
        evicted: dict[str, Any] = {}
        while time.monotonic() < deadline and not evicted:
            assert agent.exit_code() is None, agent.log_text()
            snapshot = _snapshot(state) or {}
            evicted = (snapshot.get("pipeline") or {}).get("overflow_total") or {}
            time.sleep(0.2)
        assert evicted, f"no eviction in the snapshot within 60 s:\n{agent.log_text()}"
        assert any(key.startswith("telemetry/") and key.endswith("/evicted") for key in evicted), (
            evicted
        )
        # Three more status cycles after the eviction: each one written, the agent alive.
        written = _snapshot(state)
        assert written is not None
        first = written["written_at"]
        deadline = time.monotonic() + 30
        cycles: set[str] = {first}
        while time.monotonic() < deadline and len(cycles) < 4:
            assert agent.exit_code() is None, agent.log_text()
            latest = _snapshot(state)
            if latest is not None:
                cycles.add(latest["written_at"])
            time.sleep(0.2)
        assert len(cycles) >= 4, cycles
        assert "cannot encode the status snapshot" not in agent.log_text()
        assert agent.terminate() == 0, agent.log_text()
    finally:
        agent.ensure_stopped()
