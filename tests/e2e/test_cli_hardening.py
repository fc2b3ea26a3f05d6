"""The real `edge-agent` command line against hostile configs and closed pipes (issue 13).

- A config that used to escape the loader as another exception (a traceback, exit 1, so
  systemd kept restarting the unit) is a located error and exit 2, in `check-config` and `run`.
- `edge-agent status -c FILE` shows the status from the state dir even when FILE is invalid,
  and says that it is invalid, with the located problem.
- Output into a pipe whose reader is gone (`... | head`) ends with exit 1 and no traceback.
  The reader (`head -n 0`) has exited before the command starts, so every write meets a closed
  pipe: the outcome does not depend on how much fits in the pipe buffer or on timing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.service.status_file import write_status
from testkit.agent_process import REPO
from testkit.broker import MosquittoBroker

EXAMPLE = REPO / "config" / "example.toml"
MES = REPO / "config" / "examples" / "mes.toml"


def edge_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )


def with_value(tmp_path: Path, original: Path, key: str, value: str) -> tuple[Path, int]:
    """A copy of `original` (with its folder's CSV files) whose first `key = ...` line has
    `value`; returns the file and that line's number."""
    for sibling in original.parent.glob("*.csv"):
        shutil.copy(sibling, tmp_path / sibling.name)
    lines = original.read_text().split("\n")
    pattern = re.compile(rf"^(\s*{re.escape(key)}\s*=\s*).+$")
    index = next(index for index, line in enumerate(lines) if pattern.match(line))
    lines[index] = pattern.sub(lambda match: match.group(1) + value, lines[index])
    path = tmp_path / original.name
    path.write_text("\n".join(lines))
    return path, index + 1


HOSTILE_CONFIGS = {
    # tomllib recursed until RecursionError.
    "nested arrays": (EXAMPLE, "site", "[" * 5_000 + "]" * 5_000, "agent.site"),
    # zoneinfo opened a file name longer than NAME_MAX: OSError ENAMETOOLONG.
    "time zone of 300 characters": (MES, "time_zone", '"' + "A" * 300 + '"', "sources[0]"),
    # zoneinfo opened tzdata's Europe folder: IsADirectoryError.
    "time zone Europe": (MES, "time_zone", '"Europe"', "sources[0]"),
}


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize("case", sorted(HOSTILE_CONFIGS))
def test_a_hostile_config_is_a_located_error_and_exit_2(
    tmp_path: Path, case: str, command: str
) -> None:
    original, key, value, key_path = HOSTILE_CONFIGS[case]
    path, line = with_value(tmp_path, original, key, value)
    args = ("check-config", str(path)) if command == "check-config" else ("run", "-c", str(path))
    result = edge_agent(*args, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
    assert f"{path}:{line}: {key_path}" in result.stderr, result.stderr[-2000:]
    assert "invalid config" in result.stderr


# -- status with an invalid config -----------------------------------------------------------


def write_snapshot(state_dir: Path, *, pid: int, state: str) -> None:
    """A status.json as the agent writes it (the agent's own writer), for a live process."""
    write_status(state_dir, {
        "state": state, "site": "plant-a", "agent": "edge-01", "pid": pid,
        "started_at": "2026-01-31T08:00:00+00:00",
        "written_at": "2026-01-31T08:00:05+00:00",
        "hub": {"url": "mqtt://127.0.0.1:1", "connected": True},
        "sources": {"line1": {"state": "running", "readings_total": 42}},
    })


def status_command(config: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return edge_agent("status", "-c", str(config), *options)


@pytest.fixture
def running_pid() -> Iterator[int]:
    """The pid of a live process that `edge-agent status` takes for the agent (its command line
    names the agent); the snapshots written below stand for what that agent wrote."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", "edge-agent-stand-in"],
        stdin=subprocess.PIPE,
    )
    try:
        yield process.pid
    finally:
        assert process.stdin is not None
        process.stdin.close()  # it reads to EOF, then exits
        process.wait(timeout=30)


def test_status_shows_the_state_dir_when_the_config_is_invalid(
    tmp_path: Path, running_pid: int
) -> None:
    state = tmp_path / "var" / "state"
    write_snapshot(state, pid=running_pid, state="online")
    text = EXAMPLE.read_text().replace('state_dir = "./state"', f'state_dir = "{state}"', 1)
    assert str(state) in text
    config = tmp_path / "agent.toml"
    # Invalid for the schema, valid TOML: the state dir comes from the parsed file.
    config.write_text(text.replace('topic_prefix = "mfg"', 'topic_prefix = "mfg"\nkeepalive = 5'))
    result = status_command(config)
    assert result.returncode == 0, result.stdout + result.stderr  # 0: the agent is running
    assert "Traceback" not in result.stderr
    assert f"{config} is invalid (1 problem(s))" in result.stderr
    assert re.search(rf"{re.escape(str(config))}:\d+: hub.keepalive: unknown key", result.stderr)
    assert f"state dir {state}" in result.stdout
    assert "agent: running, pid" in result.stdout and "source line1: running" in result.stdout
    assert "INVALID" in result.stdout

    # Not even TOML (a quote left open elsewhere): the [agent] table alone still names it.
    config.write_text(text.replace('topic_prefix = "mfg"', 'topic_prefix = "mfg'))
    broken = status_command(config, "--json")
    assert broken.returncode == 0, broken.stdout + broken.stderr
    report = json.loads(broken.stdout)
    assert report["state_dir"] == str(state) and report["running"] is True
    assert report["snapshot"]["sources"]["line1"]["state"] == "running"
    assert any("invalid TOML" in problem for problem in report["config_invalid"])
    assert f"{config} is invalid" in broken.stderr


def test_status_falls_back_to_the_default_state_dir(tmp_path: Path) -> None:
    # The default state dir, ./state next to the config, holds a snapshot of a stopped agent.
    write_snapshot(tmp_path / "state", pid=os.getpid(), state="stopped")
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nsite = "plant-a\n')  # even [agent] does not parse
    result = status_command(config)
    assert result.returncode == 3, result.stdout + result.stderr  # 3: not running
    assert "Traceback" not in result.stderr
    assert f"{config}:2: invalid TOML" in result.stderr
    assert "the default state_dir" in result.stderr
    assert f"state dir {tmp_path / 'state'}" in result.stdout
    assert "stopped cleanly" in result.stdout
    assert "plant-a/edge-01" in result.stdout  # site and id from the snapshot


# -- output into a closed pipe -----------------------------------------------------------------


def into_closed_pipe(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `edge-agent ARGS` with stdout a pipe whose reader, `head -n 0`, has already exited."""
    read_end, write_end = os.pipe()
    try:
        reader = subprocess.Popen(["head", "-n", "0"], stdin=read_end)
        os.close(read_end)
        read_end = -1
        assert reader.wait(timeout=30) == 0  # the reader is gone: no process holds the read end
        return subprocess.run(
            [sys.executable, "-m", "agent", *args],
            cwd=REPO, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=timeout,
            check=False,
        )
    finally:
        os.close(write_end)
        if read_end >= 0:
            os.close(read_end)


def assert_quiet_exit_1(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "BrokenPipeError" not in result.stderr, result.stderr[-2000:]
    assert "Exception ignored" not in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize(
    "args",
    [("schema",), ("check-config", str(EXAMPLE))],
    ids=["schema", "check-config"],
)
def test_a_local_command_into_a_closed_pipe_exits_quietly(args: tuple[str, ...]) -> None:
    assert_quiet_exit_1(into_closed_pipe(*args))


@contextmanager
def answering_agent(broker: MosquittoBroker, root: str) -> Iterator[None]:
    """A stand-in for the agent on the real broker: answers every request on `root/cmd/+` with
    an ok status, on the request's Response Topic with its Correlation Data. (A real agent
    answers the same way; this one needs no OPC UA plant, which the pipe case does not need.)"""
    subscribed = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"test-agent-{uuid.uuid4().hex[:8]}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )

    def on_message(_client: mqtt.Client, _userdata: Any, message: Any) -> None:
        # paho's Properties is untyped.
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.CorrelationData = message.properties.CorrelationData
        answer = {"ok": True, "command": "status", "agent": "plant-a/edge-01",
                  "at": "2026-01-31T08:00:00.000+00:00",
                  "result": {"state": "online", "lines": ["x" * 80] * 200}}
        client.publish(message.properties.ResponseTopic, json.dumps(answer), qos=1,
                       properties=properties)

    client.on_connect = lambda c, *_a: c.subscribe(f"{root}/cmd/+", qos=1)
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_message = on_message
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    try:
        assert subscribed.wait(10.0), "stand-in agent not subscribed within 10 s"
        yield
    finally:
        client.disconnect()
        client.loop_stop()


def test_remote_status_into_a_closed_pipe_exits_quietly(broker: MosquittoBroker) -> None:
    with answering_agent(broker, "mfg/plant-a/edge-01"):
        result = into_closed_pipe(
            "remote", "status", "--hub", broker.url, "--site", "plant-a", "--agent", "edge-01",
            "--json", "--timeout", "30",
        )
    assert_quiet_exit_1(result)


def test_tail_into_a_closed_pipe_stops_at_the_first_event(broker: MosquittoBroker) -> None:
    event = {"type": "telemetry.v1", "site": "plant-a", "agent": "edge-01", "seq": 1,
             "time": "2026-01-31T08:00:00Z", "subject": "line1/filler", "data": {"value": 1}}
    stop = threading.Event()
    publisher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    publisher.connect(broker.host, broker.port, keepalive=10)
    publisher.loop_start()

    def publish_until_stopped() -> None:  # the CLI subscribes at some point: keep events coming
        deadline = time.monotonic() + 60
        while not stop.wait(0.2) and time.monotonic() < deadline:
            publisher.publish("mfg/plant-a/edge-01/events/telemetry", msgpack.packb([event]))

    feeder = threading.Thread(target=publish_until_stopped, daemon=True)
    feeder.start()
    try:
        # Without the fix the broken pipe is swallowed by the session callback and tail runs
        # its whole --duration (then exits 0); with it, tail stops at the first event it
        # cannot print, with exit 1.
        result = into_closed_pipe("tail", "--hub", broker.url, "--duration", "45", timeout=90)
    finally:
        stop.set()
        feeder.join(10)
        publisher.disconnect()
        publisher.loop_stop()
    assert_quiet_exit_1(result)
