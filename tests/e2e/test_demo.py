"""`edge-agent demo` as a new user runs it, pointed at a private broker."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from testkit.agent_process import REPO
from testkit.broker import MosquittoBroker, Subscriber
from testkit.events import EVENTS_TOPIC, decode_events


def _everything_shown(output: Path, subscriber: Subscriber) -> bool:
    """What the first test checks has happened: the demo printed its MES post's answer and
    its status page, and the broker has the line's events and the MES's."""
    text = output.read_text()
    types = [e["type"] for e in decode_events(subscriber.messages)]
    return (
        "-> 202" in text and "status page http" in text and len(types) > 20
        and types.count("workorder.completed.v3") >= 2 and "inventory.adjusted.v1" in types
        and {"telemetry.v1", "production.count.v1"} <= set(types)
    )


def test_demo_forwards_the_simulated_line_to_the_broker(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Stopped with Ctrl-C (SIGINT) once everything below has happened, as a user stops it
    (`--duration` only bounds it)."""
    output = tmp_path / "demo.out"
    with Subscriber(broker, EVENTS_TOPIC) as subscriber, output.open("w") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "agent", "demo", "--duration", "60", "--hub", broker.url,
             "--state-dir", str(tmp_path / "state"), "--rate", "20"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while demo.poll() is None and time.monotonic() < deadline:
                if _everything_shown(output, subscriber):
                    demo.send_signal(signal.SIGINT)
                    break
                time.sleep(0.2)
            returncode = demo.wait(timeout=90)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
        events = decode_events(subscriber.messages)
    stdout = output.read_text()
    assert returncode == 0, stdout
    assert "at the hub, on mfg/plant-a/edge-01/events/" in stdout
    assert "hub connected" in stdout
    assert "status page http://127.0.0.1:" in stdout  # agent.web, on a free port
    assert {e["type"] for e in events} >= {"telemetry.v1", "production.count.v1"}
    assert len(events) > 20
    # The MES side: a dropped file's two work orders and a webhook's inventory adjustment.
    assert "MES: POST http://127.0.0.1:" in stdout and "-> 202" in stdout
    orders = {e["data"]["order"] for e in events if e["type"] == "workorder.completed.v3"}
    assert orders == {"WO-4711", "WO-4712"}
    [adjusted] = [e for e in events if e["type"] == "inventory.adjusted.v1"]
    assert adjusted["data"]["delta"] == -12.5 and adjusted["data"]["unit"] == "kg"


def test_demo_without_a_broker_says_so_and_keeps_buffering(tmp_path: Path) -> None:
    broker = MosquittoBroker()  # a free port with nothing listening
    result = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--duration", "6", "--hub", broker.url,
         "--state-dir", str(tmp_path / "state")],
        cwd=REPO, capture_output=True, text=True, timeout=90, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"no MQTT broker answers at {broker.url}" in result.stdout
    assert "hub unreachable" in result.stdout
    last = [line for line in result.stdout.splitlines() if line.startswith("read ")][-1]
    backlog = int(last.split("backlog ")[1].split(" ")[0])
    assert backlog > 0, last
