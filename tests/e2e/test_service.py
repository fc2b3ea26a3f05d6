"""The real `edge-agent run` process as systemd runs it: sd_notify over a real datagram socket
(READY, STATUS, WATCHDOG, RELOADING, STOPPING), SIGHUP reloads (valid and invalid), and
`edge-agent status -c CONFIG` while the agent runs and after it stopped or was killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.demo.plant import GOOD_COUNT, FillingLinePlant
from agent.service.status_file import read_buffer_stats
from testkit.agent_process import REPO, AgentProcess
from testkit.broker import MosquittoBroker, Subscriber
from testkit.events import EVENTS_TOPIC, accepted_in_buffer, decode_events
from testkit.plant import agent_config_text
from testkit.sd_notify import NotifyListener

SUBSCRIBED = " 3 of 3 "  # the OPC UA source logs "... 3 of 3 signals/nodes" once subscribed


def write_config(path: Path, broker: MosquittoBroker, plant: FillingLinePlant, state: Path,
                 extra_hub: str = "status_interval_s = 1") -> None:
    path.write_text(
        agent_config_text(
            hub_url=broker.url, opcua_port=plant.port, state_dir=state, extra_hub=extra_hub
        )
    )


def status_command(config: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "status", "-c", str(config), *options],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )


async def wait_until(predicate: Callable[[], Awaitable[bool] | bool], what: str,
                     limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
        await asyncio.sleep(0.1)


async def test_sd_notify_ready_status_watchdog_stopping_and_status_command(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    config, state = tmp_path / "agent.toml", tmp_path / "state"
    write_config(config, broker, plant, state)
    with NotifyListener() as systemd:
        agent = AgentProcess(
            config, tmp_path / "agent.log",
            env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "400000"},
        )
        try:
            agent.start()
            ready = await asyncio.to_thread(systemd.wait_for, lambda m: m.get("READY") == "1")
            # READY=1 only once the buffer is open (its file exists) and the config is valid.
            assert (state / "buffer.sqlite").exists()
            # WATCHDOG=1 keeps coming from the event loop (every 0.2 s for WATCHDOG_USEC=0.4 s).
            index = ready
            for _ in range(3):
                index = await asyncio.to_thread(
                    systemd.wait_for, lambda m: m.get("WATCHDOG") == "1", after=index + 1
                )
            await asyncio.to_thread(agent.wait_log, SUBSCRIBED)
            await asyncio.to_thread(
                systemd.wait_for,
                lambda m: "hub connected, 1/1 sources running" in m.get("STATUS", ""),
                after=ready,
            )
            running = status_command(config)
            assert running.returncode == 0, running.stdout + running.stderr
            assert f"running, pid {agent.pid}" in running.stdout
            assert f"hub {broker.url}: connected" in running.stdout
            assert "source line1: running" in running.stdout

            assert await asyncio.to_thread(agent.terminate) == 0
            stopping = systemd.wait_for(lambda m: m.get("STOPPING") == "1", after=ready)
            assert stopping > ready
        finally:
            agent.ensure_stopped()
    snapshot = json.loads((state / "status.json").read_text())
    assert snapshot["state"] == "stopped"
    assert snapshot["sources"]["line1"]["readings_total"] >= 3


async def test_no_ready_and_exit_2_when_a_secret_is_missing(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    config, state = tmp_path / "agent.toml", tmp_path / "state"
    write_config(
        config, broker, plant, state,
        extra_hub='username = "edge-01"\npassword = "credential:mqtt-password"',
    )
    with NotifyListener() as systemd:
        agent = AgentProcess(
            config, tmp_path / "agent.log", env={"NOTIFY_SOCKET": str(systemd.path)}
        )
        try:
            agent.start()
            code = await asyncio.to_thread(agent.wait_exit, 30)
        finally:
            agent.ensure_stopped()
        assert code == 2
        log = agent.log_text()
        assert "hub.password: 'credential:mqtt-password' is a systemd credential" in log
        assert "$CREDENTIALS_DIRECTORY is not set" in log and "LoadCredential=mqtt-password" in log
        assert not [m for m in systemd.messages if m.get("READY") == "1"]


async def test_sighup_applies_a_valid_config_without_losing_buffered_events(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    config, state = tmp_path / "agent.toml", tmp_path / "state"
    write_config(config, broker, plant, state)
    buffer_file = state / "buffer.sqlite"
    with NotifyListener() as systemd:
        agent = AgentProcess(
            config, tmp_path / "agent.log", env={"NOTIFY_SOCKET": str(systemd.path)}
        )
        try:
            agent.start()
            await asyncio.to_thread(agent.wait_log, SUBSCRIBED)
            broker.stop()  # the hub goes away: events wait in the buffer
            for count in range(1, 21):
                await plant.write(GOOD_COUNT, count)
                await asyncio.sleep(0.03)
            await wait_until(lambda: len(accepted_in_buffer(buffer_file)) >= 20, "20 buffered")
            before = accepted_in_buffer(buffer_file)

            # The new config renames the counter signal: visible in every new event.
            config.write_text(config.read_text().replace('name = "good_count"', 'name = "good"'))
            offset = len(agent.log_text())
            agent.hup()
            await asyncio.to_thread(agent.wait_log, "reload applied", after=offset)
            await asyncio.to_thread(agent.wait_log, SUBSCRIBED, after=offset)
            reloading = systemd.wait_for(lambda m: m.get("RELOADING") == "1")
            systemd.wait_for(lambda m: m.get("READY") == "1", after=reloading)

            broker.start()
            # Everything buffered before the reload is delivered (acked on PUBACK) by the new
            # generation...
            await wait_until(
                lambda: read_buffer_stats(buffer_file).get("pending") == 0,
                "the buffered events delivered after the reload",
            )
            # ...which runs the new config.
            with Subscriber(broker, EVENTS_TOPIC) as subscriber:
                await plant.write(GOOD_COUNT, 100)

                def renamed_arrived() -> bool:
                    events = decode_events(subscriber.messages)
                    return any(e["data"].get("signal") == "good" for e in events)

                await wait_until(renamed_arrived, "an event of the renamed signal at the hub")
            assert await asyncio.to_thread(agent.terminate) == 0
        finally:
            agent.ensure_stopped()
    after = accepted_in_buffer(buffer_file)
    # Everything accepted before the reload kept its seq and reached the hub; seq has no gap.
    assert all(after[event_id] == seq for event_id, seq in before.items())
    assert sorted(after.values()) == list(range(1, len(after) + 1))
    snapshot = json.loads((state / "status.json").read_text())
    assert snapshot["last_reload"]["result"] == "applied"


async def test_sighup_with_an_invalid_config_keeps_the_running_one(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    config, state = tmp_path / "agent.toml", tmp_path / "state"
    write_config(config, broker, plant, state)
    good_text = config.read_text()
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        with Subscriber(broker, EVENTS_TOPIC) as subscriber:
            agent.start()
            await asyncio.to_thread(agent.wait_log, SUBSCRIBED)

            # 1. A typo: refused with file, line and key; the running config goes on.
            config.write_text(good_text.replace("topic_prefix = ", "topic_prefx = "))
            offset = len(agent.log_text())
            agent.hup()
            await asyncio.to_thread(agent.wait_log, "reload refused", after=offset)
            refused = agent.log_text()[offset:]
            assert "keeping the running config" in refused
            assert f"{config}:" in refused and "hub.topic_prefx: unknown key" in refused
            assert "Traceback" not in refused

            # 2. A new state dir: valid, but it needs a restart; refused and said so.
            config.write_text(good_text.replace(str(state), str(tmp_path / "elsewhere")))
            offset = len(agent.log_text())
            agent.hup()
            await asyncio.to_thread(agent.wait_log, "reload refused", after=offset)
            assert "agent.state_dir changed" in agent.log_text()[offset:]
            assert "systemctl restart" in agent.log_text()[offset:]

            # Still forwarding with the old config, never stopped in between.
            await plant.write(GOOD_COUNT, 4242)

            def counted() -> bool:
                events = decode_events(subscriber.messages)
                return any(e["data"].get("count") == 4242 for e in events)

            await wait_until(counted, "an event after the refused reloads")
            assert "stopping" not in agent.log_text()
        config.write_text(good_text)  # the status command reads the state dir from it
        shown = status_command(config)
        assert shown.returncode == 0
        assert "last reload: refused" in shown.stdout and "agent.state_dir changed" in shown.stdout
        assert await asyncio.to_thread(agent.terminate) == 0
    finally:
        agent.ensure_stopped()
    assert not (tmp_path / "elsewhere").exists()


async def test_status_works_with_the_agent_down(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    config, state = tmp_path / "agent.toml", tmp_path / "state"
    write_config(config, broker, plant, state)
    never = status_command(config)
    assert never.returncode == 3
    assert "never ran with this state dir" in never.stdout
    assert "buffer: " in never.stdout and "does not exist" in never.stdout

    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        agent.start()
        await asyncio.to_thread(agent.wait_log, SUBSCRIBED)
        broker.stop()
        for count in range(1, 6):
            await plant.write(GOOD_COUNT, count)
            await asyncio.sleep(0.03)
        buffer_file = state / "buffer.sqlite"
        await wait_until(lambda: len(accepted_in_buffer(buffer_file)) >= 5, "5 buffered")
        await asyncio.to_thread(agent.wait_log, "hub unreachable")
        await asyncio.sleep(1.5)  # one more status interval: the snapshot sees the outage
        assert await asyncio.to_thread(agent.terminate) == 0
    finally:
        agent.ensure_stopped()
    with contextlib.closing(sqlite3.connect(buffer_file)) as db:  # counted independently
        (pending,) = db.execute("SELECT count(*) FROM events WHERE acked_at IS NULL").fetchone()
    assert pending >= 5

    stopped = status_command(config)
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    assert "not running; stopped cleanly" in stopped.stdout
    assert f"{pending} pending" in stopped.stdout
    assert "hub unreachable" in stopped.stdout  # in the last problems
    report = json.loads(status_command(config, "--json").stdout)
    assert report["running"] is False
    assert report["buffer"]["pending"] == pending
    assert report["snapshot"]["hub"]["connected"] is False
    assert report["snapshot"]["hub"]["last_error"]

    # Killed: the snapshot still says running, its pid is gone.
    agent.start()
    await wait_until(
        lambda: json.loads((state / "status.json").read_text()).get("pid") == agent.pid,
        "a snapshot of the second run",
    )
    await asyncio.to_thread(agent.kill)
    killed = status_command(config)
    assert killed.returncode == 3
    assert "killed or crashed" in killed.stdout
