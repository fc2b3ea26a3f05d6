"""`edge-agent opcua watch` (issue 19, item 4): the real CLI in a subprocess against a real
asyncua server in this loop, showing live values, bounded by --count / --seconds, ended
cleanly by SIGINT; and its refreshing table (drawn in this process to a text buffer, since a
terminal is what selects it)."""

from __future__ import annotations

import asyncio
import io
import signal
import sys
from pathlib import Path

from agent.cli.opcua_watch import Watch
from connectors.opcua.config import OpcUaSettings, OpcUaSignalSettings
from connectors.opcua.connector import OpcUaConnector
from testkit.agent_process import REPO
from testkit.broker import free_loopback_port
from testkit.opcua_servers import COUNT, TEMPERATURE, LineServer, serve_line

WAIT_S = 30.0


def config_file(tmp_path: Path, endpoint: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "{tmp_path / "state"}"

[hub]
url = "mqtt://127.0.0.1:1"

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


async def start_watch(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "opcua",
        "watch",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def next_line(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout=WAIT_S)
    assert line, "watch ended before printing a line"
    return line.decode()


async def write_until_seen(
    server: LineServer, process: asyncio.subprocess.Process, value: float
) -> list[str]:
    """Write `value` to Temperature and read lines until it is shown (bounded)."""
    await server.write("Temperature", value)
    lines = [await next_line(process)]
    for _ in range(20):
        if f"= {value} Good" in lines[-1]:
            return lines
        lines.append(await next_line(process))
    raise AssertionError(f"{value} not shown in: {lines}")


async def test_watch_shows_live_values_and_ends_at_its_count(tmp_path: Path) -> None:
    async with serve_line(free_loopback_port()) as server:
        path = config_file(tmp_path, server.endpoint)
        process = await start_watch("-c", str(path), "--count", "3", "--seconds", str(WAIT_S))
        try:
            first = await next_line(process)  # the server sends each current value first
            second = await next_line(process)
            shown = await write_until_seen(server, process, 21.5)
            code = await asyncio.wait_for(process.wait(), timeout=WAIT_S)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.stderr is not None
        errors = (await process.stderr.read()).decode()
        assert code == 0, errors
        assert "Traceback" not in errors
        assert "line1: connected to" in errors
        lines = [first, second, *shown]
        assert len(lines) == 3, lines
        assert any(f"line1/count [{COUNT}] = 0 Good" in line for line in lines), lines
        latest = lines[-1]
        assert f"line1/temperature [{TEMPERATURE}] = 21.5 Good source_time=" in latest
        assert "changes=2" in latest  # the initial value, then 21.5


async def test_watch_of_one_signal_bounded_by_seconds_and_an_unknown_signal(
    tmp_path: Path,
) -> None:
    port = free_loopback_port()
    path = config_file(tmp_path, f"opc.tcp://127.0.0.1:{port}/line/")
    unknown = await start_watch("-c", str(path), "--signal", "nope", "--count", "1")
    out, err = await asyncio.wait_for(unknown.communicate(), timeout=WAIT_S)
    assert unknown.returncode == 2  # refused before it connects
    assert b"no signal 'nope' in line1 (its signals: temperature, count)" in err
    assert out == b""
    async with serve_line(port) as server:
        process = await start_watch(
            "-c", str(path), "--signal", "count", "--count", "3", "--seconds", "4"
        )
        try:
            first = await next_line(process)
            await server.write("Count", 5)
            second = await next_line(process)
            code = await asyncio.wait_for(process.wait(), timeout=WAIT_S)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.stdout is not None and process.stderr is not None
    assert await process.stdout.read() == b""  # nothing of the other signal
    errors = (await process.stderr.read()).decode()
    assert code == 1, errors  # --seconds ended it before --count was reached
    assert "2 of 3 readings in" in errors
    assert f"line1/count [{COUNT}] = 0 Good" in first
    assert f"line1/count [{COUNT}] = 5 Good" in second


async def test_a_server_that_comes_up_later_is_waited_for_and_told_once(tmp_path: Path) -> None:
    port = free_loopback_port()
    path = config_file(tmp_path, f"opc.tcp://127.0.0.1:{port}/line/")
    process = await start_watch("-c", str(path), "--count", "2", "--seconds", str(WAIT_S))
    try:
        assert process.stderr is not None
        told = await asyncio.wait_for(process.stderr.readline(), timeout=WAIT_S)
        assert b"line1: unavailable: cannot connect" in told
        assert b"nothing listens on 127.0.0.1 port" in told
        async with serve_line(port):
            lines = [await next_line(process), await next_line(process)]
            code = await asyncio.wait_for(process.wait(), timeout=WAIT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    errors = (await process.stderr.read()).decode()
    assert code == 0, errors
    assert "unavailable" not in errors  # the retries for the same reason are quiet
    assert "line1: connected to" in errors
    assert sorted(line.split(" [")[0].split()[-1] for line in lines) == [
        "line1/count",
        "line1/temperature",
    ]


async def test_sigint_ends_the_watch_cleanly(tmp_path: Path) -> None:
    async with serve_line(free_loopback_port()) as server:
        path = config_file(tmp_path, server.endpoint)
        process = await start_watch("-c", str(path))  # unbounded: only the signal ends it
        try:
            await next_line(process)
            process.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(process.wait(), timeout=WAIT_S)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.stderr is not None
        errors = (await process.stderr.read()).decode()
        assert code == 0, errors
        assert "Traceback" not in errors and "KeyboardInterrupt" not in errors


async def test_the_table_shows_each_signal_with_its_quality_and_changes() -> None:
    async with serve_line(free_loopback_port()) as server:
        settings = OpcUaSettings(endpoint=server.endpoint, publishing_interval_ms=50)
        signals = [OpcUaSignalSettings(node=TEMPERATURE), OpcUaSignalSettings(node=COUNT)]
        out, err = io.StringIO(), io.StringIO()
        watch = Watch(
            [OpcUaConnector("line1", settings, signals)],
            count=2,
            table=True,
            refresh_s=0.1,
            out=out,
            err=err,
        )
        code = await asyncio.wait_for(watch.run(WAIT_S), timeout=WAIT_S + 5)
    assert code == 0, err.getvalue()
    final = out.getvalue().rsplit("\x1b[J", 1)[-1]  # the last drawing
    assert f"line1 ({server.endpoint}): " in final
    header, *rows = final.splitlines()[1:4]
    assert header.split() == [
        "SIGNAL",
        "ADDRESS",
        "VALUE",
        "QUALITY",
        "SOURCE",
        "TIME",
        "CHANGES",
        "PROBLEM",
    ]
    by_address = {row.split()[1]: row.split() for row in rows}
    assert by_address[TEMPERATURE][2:4] == ["20.0", "Good"]
    assert by_address[COUNT][2:4] == ["0", "Good"]
    assert by_address[COUNT][-2:] == ["1", "-"]  # one change, no problem
