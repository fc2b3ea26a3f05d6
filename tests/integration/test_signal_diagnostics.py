"""Per-signal diagnostics in status (issue 19, item 4), against a real asyncua server.

- In this loop: a real agent with a real mosquitto; the remote status document (`snapshot`)
  shows each signal's value, quality (the StatusCode name), source timestamp and change count;
  a Bad status appears as the signal's problem and clears with the next Good value.
- A real `edge-agent run` process: the server is stopped and a new one started on the same
  port; the agent's log shows one state change ("unavailable", once), no traceback (asyncua's
  "Publish iteration crashed" is translated), and `edge-agent status --json` afterwards shows
  the source connected without the resolved error, with the signals' values.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.ua.status_codes import StatusCodes

from agent.link.status import snapshot
from connectors.base import Reading, SourceUnavailable
from connectors.opcua.config import OpcUaSettings, OpcUaSignalSettings
from connectors.opcua.connector import OpcUaConnector
from testkit.agent_process import REPO, AgentProcess
from testkit.broker import MosquittoBroker, free_loopback_port
from testkit.opcua_servers import COUNT, TEMPERATURE, LineServer, serve_line
from tests.integration.test_first_path import running_agent

WAIT_S = 20.0


def config_file(
    tmp_path: Path, hub: str, endpoint: str, *, status_interval_s: float = 3600
) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "{tmp_path / "state"}"
shutdown_grace_s = 5

[hub]
url = "{hub}"
batch_max_wait_ms = 20
reconnect_min_s = 0.1
reconnect_max_s = 0.5
status_interval_s = {status_interval_s}

[[sources]]
name = "line1"
type = "opcua"
endpoint = "{endpoint}"
publishing_interval_ms = 50
reconnect_min_s = 0.2
reconnect_max_s = 1

  [[sources.signals]]
  node = "{TEMPERATURE}"
  event = "telemetry"
  asset = "line1/filler"
  name = "temperature"
  unit = "Cel"

  [[sources.signals]]
  node = "{COUNT}"
  event = "telemetry"
  asset = "line1/filler"
  name = "count"
""")
    return path


async def until(
    condition: Callable[[], Any], what: str, limit_s: float = WAIT_S, *, threaded: bool = False
) -> Any:
    """`condition()`'s first truthy result, polled (bounded); fails naming `what`.
    `threaded`: it blocks (runs a command), so it runs on a thread, every 0.3 s."""
    deadline = time.monotonic() + limit_s
    while not (result := await asyncio.to_thread(condition) if threaded else condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for: {what}")
        await asyncio.sleep(0.3 if threaded else 0.05)
    return result


async def write_status(server: LineServer, value: float, status: int, at: datetime) -> None:
    # asyncua's annotations name its own integer and time types where plain values work.
    fields: dict[str, Any] = {
        "StatusCode": ua.StatusCode(ua.UInt32(status)),
        "SourceTimestamp": at,
        "ServerTimestamp": datetime.now(UTC),
    }
    await server.variables["Temperature"].write_value(
        ua.DataValue(ua.Variant(value, ua.VariantType.Double), **fields)
    )


async def test_status_shows_each_signal_and_a_bad_status_appears_and_clears(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    port = free_loopback_port()
    async with serve_line(port) as server:
        path = config_file(tmp_path, broker.url, server.endpoint)
        async with running_agent(path) as agent:
            seen: dict[str, Any] = {}

            async def refresh() -> None:
                document = await snapshot(agent)
                seen.update(document["sources"]["line1"]["signals"])

            for _ in range(int(WAIT_S / 0.05)):  # the server's current value comes first
                await refresh()
                if seen[TEMPERATURE]["changes"]:
                    break
                await asyncio.sleep(0.05)
            assert seen[TEMPERATURE]["value"] == 20.0, seen
            at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=5)
            await server.write("Temperature", 21.5, at=at)
            await server.write("Count", 7)

            for _ in range(int(WAIT_S / 0.05)):
                await refresh()
                if seen[TEMPERATURE]["value"] == 21.5 and seen[COUNT]["value"] == 7:
                    break
                await asyncio.sleep(0.05)
            temperature = seen[TEMPERATURE]
            assert temperature["value"] == 21.5, seen
            assert temperature["name"] == "temperature"
            assert temperature["quality"] == "Good"
            assert datetime.fromisoformat(temperature["source_timestamp"]) == at
            assert temperature["changes"] >= 2  # the initial value, then 21.5
            assert temperature["error"] is None
            assert seen[COUNT]["value"] == 7 and seen[COUNT]["name"] == "count"
            changes_before = temperature["changes"]

            bad_at = at + timedelta(seconds=1)
            await write_status(server, 21.5, StatusCodes.BadSensorFailure, bad_at)
            for _ in range(int(WAIT_S / 0.05)):
                await refresh()
                if seen[TEMPERATURE]["error"] is not None:
                    break
                await asyncio.sleep(0.05)
            bad = seen[TEMPERATURE]
            assert bad["error"] == "BadSensorFailure", bad
            assert bad["quality"] == "BadSensorFailure"
            assert bad["last_error"] == "BadSensorFailure"
            assert bad["changes"] == changes_before + 1

            await write_status(server, 22.0, StatusCodes.Good, bad_at + timedelta(seconds=1))
            for _ in range(int(WAIT_S / 0.05)):
                await refresh()
                if seen[TEMPERATURE]["value"] == 22.0:
                    break
                await asyncio.sleep(0.05)
            cleared = seen[TEMPERATURE]
            assert cleared["value"] == 22.0 and cleared["quality"] == "Good", cleared
            assert cleared["error"] is None  # resolved: no longer a problem
            assert cleared["last_error"] == "BadSensorFailure"  # kept as a record
            document = await snapshot(agent)
            assert document["sources"]["line1"]["signals_not_listed"] == 0
            assert document["sources"]["line1"]["last_error"] is None


async def test_a_server_restart_is_one_state_change_without_a_traceback(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    port = free_loopback_port()
    log = tmp_path / "agent.log"

    def log_text() -> str:
        return log.read_text(errors="replace") if log.exists() else ""

    endpoint = f"opc.tcp://127.0.0.1:{port}/line/"
    path = config_file(tmp_path, broker.url, endpoint, status_interval_s=1)
    agent = AgentProcess(path, log)
    try:
        async with serve_line(port) as server:
            agent.start()
            await until(lambda: "subscribed to 2 of 2 nodes" in log_text(), "subscribed")
            await server.write("Temperature", 20.5)
            await until(
                lambda: _local_status(path, TEMPERATURE, 20.5), "the first value", threaded=True
            )
        # The server stopped (its sessions closed); a new one starts on the same port.
        await until(lambda: "unavailable" in log_text(), "the loss is logged")
        async with serve_line(port) as restarted:
            await until(
                lambda: log_text().count("subscribed to 2 of 2 nodes") == 2, "subscribed again"
            )
            await restarted.write("Temperature", 23.5)
            status = await until(
                lambda: _local_status(path, TEMPERATURE, 23.5), "local status", threaded=True
            )
            assert await asyncio.to_thread(agent.terminate) == 0
    finally:
        agent.ensure_stopped()
    text = log_text()
    assert "Traceback" not in text, text
    assert "Publish iteration crashed" not in text, text
    assert text.count("unavailable") == 1, text  # one state change, logged once
    source = status["snapshot"]["sources"]["line1"]
    assert source["state"] == "running" and source["connected"] is True
    assert source["last_error"] is None  # resolved after the restart
    assert source["signals"][TEMPERATURE]["quality"] == "Good"
    assert source["signals"][TEMPERATURE]["changes"] >= 2
    assert source["signals"][COUNT]["name"] == "count"
    shown = await asyncio.to_thread(_status_text, path)  # the stopped agent's last snapshot
    assert shown.returncode == 3, shown.stderr  # not running
    row = next(line.split() for line in shown.stdout.splitlines() if TEMPERATURE in line)
    assert row[:4] == ["temperature", TEMPERATURE, "23.5", "Good"], shown.stdout
    assert "last error" not in shown.stdout


def _status_text(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "status", "-c", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _local_status(path: Path, signal: str, value: object) -> dict[str, Any] | None:
    """What `edge-agent status -c PATH --json` said, once `signal` shows `value` there and the
    source is connected (None before)."""
    result = subprocess.run(
        [sys.executable, "-m", "agent", "status", "-c", str(path), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    if result.returncode != 0:
        return None
    report: dict[str, Any] = json.loads(result.stdout)
    source = ((report.get("snapshot") or {}).get("sources") or {}).get("line1") or {}
    entry = (source.get("signals") or {}).get(signal) or {}
    if entry.get("value") != value or not source.get("connected"):
        return None
    return report


async def test_a_dropped_session_is_not_logged_as_a_publish_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The connection drops under asyncua's publish loop (the server closes every connection,
    as a restarting node-opcua server does): asyncua's "Publish iteration crashed" record with
    its traceback is translated at its own logger (`connectors.opcua.session`), so no CLI tool
    or embedding prints it either; the connector reports one `SourceUnavailable`."""
    port = free_loopback_port()
    caplog.set_level(logging.DEBUG, logger="connectors.opcua.session")
    async with serve_line(port) as server:
        settings = OpcUaSettings(endpoint=server.endpoint, publishing_interval_ms=50)
        connector = OpcUaConnector("line1", settings, [OpcUaSignalSettings(node=TEMPERATURE)])
        readings: list[Reading] = []

        async def emit(batch: Sequence[Reading]) -> None:
            readings.extend(batch)

        task = asyncio.create_task(connector.run(emit))
        try:
            await until(lambda: readings, "the first reading")
            await server.drop_connections()
            with pytest.raises(SourceUnavailable):
                await asyncio.wait_for(task, timeout=WAIT_S)
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await server.accept_connections()
    crashed = [r for r in caplog.records if r.getMessage().startswith("Publish iteration")]
    assert crashed == [], [r.getMessage() for r in crashed]
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert any("the session ended" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
