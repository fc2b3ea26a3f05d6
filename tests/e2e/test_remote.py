"""The hub-side CLI (`edge-agent remote|fleet|tail|keys`) against real `edge-agent run`
processes, a real mosquitto and a real asyncua plant."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.demo.plant import FILLER_TEMPERATURE, FillingLinePlant
from testkit.agent_process import REPO, AgentProcess
from testkit.broker import MosquittoBroker, ReceivedMessage, Subscriber
from testkit.plant import agent_config_text


def source_connected(message: ReceivedMessage) -> bool:
    """A status saying the agent is online with its source connected (published on change)."""
    status = json.loads(message.payload)
    return bool(status.get("state") == "online" and status["sources"]["line1"]["connected"])


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )


def agent_process(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant, agent_id: str,
    commands: str = "",
) -> AgentProcess:
    home = tmp_path / agent_id
    home.mkdir()
    text = agent_config_text(
        hub_url=broker.url, opcua_port=plant.port, state_dir=home / "state",
        extra_hub="status_interval_s = 5",
    ).replace('id = "edge-01"', f'id = "{agent_id}"')
    config = home / "agent.toml"
    config.write_text(text + commands)
    return AgentProcess(config, home / "agent.log")


async def _write_temperatures(plant: FillingLinePlant) -> None:
    value = 50.0
    while True:
        value += 0.5
        await plant.write(FILLER_TEMPERATURE, value)
        await asyncio.sleep(0.05)


@contextmanager
def stopped_at_exit(*agents: AgentProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for agent in agents:
            agent.ensure_stopped()


async def test_keys_status_pause_and_will_through_the_cli(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    created = cli("keys", "create", "--out", str(tmp_path / "keys"), "--name", "ops")
    assert created.returncode == 0, created.stderr
    private = tmp_path / "keys" / "ops.key.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    commands = f"""
[commands.keys]
ops = "{tmp_path / 'keys' / 'ops.pub.pem'}"

[commands.allow]
pause = ["ops"]
resume = ["ops"]
"""
    agent = agent_process(tmp_path, broker, plant, "edge-01", commands)
    target = ["--hub", broker.url, "--site", "plant-a", "--agent", "edge-01", "--timeout", "10"]
    with stopped_at_exit(agent), Subscriber(broker, "mfg/plant-a/edge-01/status") as statuses:
        agent.start()
        # The CLI runs that change nothing run side by side (each is mostly Python start-up);
        # the pause comes after them and `sources` after the pause, which it shows.
        again, retained = await asyncio.gather(
            asyncio.to_thread(cli, "keys", "create", "--out", str(tmp_path / "keys"),
                              "--name", "ops"),
            statuses.wait_for_async(source_connected, timeout=20),
        )
        table, as_json, ping, unsigned, missing = await asyncio.gather(
            asyncio.to_thread(cli, "remote", "status", *target),
            asyncio.to_thread(cli, "remote", "status", *target, "--json"),
            asyncio.to_thread(cli, "remote", "ping", *target),
            asyncio.to_thread(cli, "remote", "pause", "line1", *target[:-2], "--timeout", "10",
                              "--key", str(private), "--key-id", "nobody"),
            asyncio.to_thread(cli, "remote", "ping", "--hub", broker.url, "--site", "plant-a",
                              "--agent", "edge-99", "--timeout", "2"),
        )
        paused = await asyncio.to_thread(cli, "remote", "pause", "line1", *target,
                                         "--key", str(private))
        sources = await asyncio.to_thread(cli, "remote", "sources", *target)
        await asyncio.to_thread(agent.kill)
        will = await statuses.wait_for_async(
            lambda m: json.loads(m.payload).get("state") == "offline", timeout=15
        )
    with Subscriber(broker, "mfg/plant-a/edge-01/status") as late:  # retained for newcomers
        seen = await late.wait_for_async(1, timeout=5)

    assert again.returncode == 2 and "not overwriting" in again.stderr
    assert retained[0].content_type == "application/json"
    assert table.returncode == 0, table.stderr
    assert "plant-a/edge-01: online" in table.stdout and "line1" in table.stdout
    assert "telemetry" in table.stdout and "config " in table.stdout
    answer = json.loads(as_json.stdout)
    assert answer["ok"] is True and answer["result"]["sources"]["line1"]["connected"] is True
    assert ping.returncode == 0 and "pong" in ping.stdout
    assert unsigned.returncode == 1 and "unknown_key" in unsigned.stderr
    assert paused.returncode == 0, paused.stderr
    assert "paused" in sources.stdout
    assert missing.returncode == 1
    assert "agent plant-a/edge-99 did not answer 'ping' within 2 s" in missing.stderr
    assert json.loads(will[0].payload)["reason"] == "connection lost"
    assert seen[0].retain and json.loads(seen[0].payload)["state"] == "offline"


async def test_fleet_lists_three_agents_and_marks_the_stopped_one_offline(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    agents = [agent_process(tmp_path, broker, plant, f"edge-0{n}") for n in (1, 2, 3)]
    with stopped_at_exit(*agents), Subscriber(broker, "mfg/+/+/status") as statuses:
        for agent in agents:
            agent.start()

        def online(agent_id: str) -> bool:
            return any(m.topic == f"mfg/plant-a/{agent_id}/status" and source_connected(m)
                       for m in statuses.messages)

        deadline = time.monotonic() + 20
        while not all(online(f"edge-0{n}") for n in (1, 2, 3)):
            assert time.monotonic() < deadline, "three agents online"
            await asyncio.sleep(0.1)
        assert await asyncio.to_thread(agents[1].terminate) == 0
        fleet_json, fleet_text = await asyncio.gather(
            asyncio.to_thread(cli, "fleet", "--hub", broker.url, "--json"),
            asyncio.to_thread(cli, "fleet", "--hub", broker.url),
        )
        producer = asyncio.create_task(_write_temperatures(plant))
        try:
            tail = await asyncio.to_thread(
                cli, "tail", "--hub", broker.url, "--agent", "edge-03", "--type", "telemetry",
                "--count", "2", "--duration", "20"
            )
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

    assert fleet_json.returncode == 0, fleet_json.stderr
    rows = {row["agent"]: row for row in map(json.loads, fleet_json.stdout.splitlines())}
    assert set(rows) == {"plant-a/edge-01", "plant-a/edge-02", "plant-a/edge-03"}
    assert rows["plant-a/edge-02"]["state"] == "offline"
    assert rows["plant-a/edge-02"]["flags"] == ["OFFLINE"]
    assert rows["plant-a/edge-02"]["reason"] == "stopped"
    for name in ("plant-a/edge-01", "plant-a/edge-03"):
        assert rows[name]["state"] == "online" and rows[name]["flags"] == [], rows[name]
        assert rows[name]["sources_up"] == rows[name]["sources_total"] == 1
        assert set(rows[name]["backlog"]) == {"telemetry", "business", "critical"}
        by_class = rows[name]["oldest_pending_age_s_by_class"]
        assert set(by_class) == {"telemetry", "business", "critical"}
        assert all(age is None or age >= 0 for age in by_class.values())
    lines = fleet_text.stdout.splitlines()
    assert len(lines) == 4 and "SITE/AGENT" in lines[0]
    assert "OLDEST PENDING tel/bus/crit" in lines[0]
    offline = [line for line in lines if "edge-02" in line]
    assert offline[0].startswith("!") and "OFFLINE" in offline[0]
    assert tail.returncode == 0, tail.stderr
    events = tail.stdout.splitlines()
    assert len(events) == 2
    assert all("plant-a/edge-03" in line and "telemetry.v1" in line for line in events)
