"""The demo path, measured: simulated OPC UA line → `edge-agent run` process → mosquitto.

Runs the plant (its own process), a private mosquitto on a free loopback port and the real
agent process, at a few plant rates, for a fixed time each; a subscriber counts the events
that arrive. Prints, per rate: events/s delivered to the broker, the agent's CPU time per
delivered event (from /proc, so it includes everything the agent process does) and its peak
RSS. Run: `make bench` or `.venv/bin/python -m bench.demo_path [--seconds 15]`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.demo.run import _free_port, _wait_port
from testkit.broker import MosquittoBroker, Subscriber
from testkit.events import EVENTS_TOPIC, decode_events

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

CONFIG = """
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "{state}"

[hub]
url = "{hub}"

[[sources]]
name = "line1"
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:{port}/plant/"
publishing_interval_ms = 50

{signals}
"""
SIGNALS = [
    ("ns=2;s=Line1.Filler.GoodCount", "production.count", ""),
    ("ns=2;s=Line1.Filler.RejectCount", "production.count", ""),
    ("ns=2;s=Line1.Filler.State", "machine.state",
     'states = { 0 = "idle", 1 = "running", 2 = "down", 3 = "fault" }'),
    ("ns=2;s=Line1.Filler.Temperature", "telemetry", 'unit = "Cel"'),
    ("ns=2;s=Line1.Tank.Temperature", "telemetry", 'unit = "Cel"'),
]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_once(rate: float, seconds: float) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-demo-path-"))
    port = _free_port()
    plant = subprocess.Popen(
        [sys.executable, "-m", "agent.demo.plant", "--port", str(port), "--rate", str(rate)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        if not _wait_port(port, timeout=20, process=plant):
            raise RuntimeError("plant did not start")
        with MosquittoBroker() as broker, Subscriber(broker, EVENTS_TOPIC) as subscriber:
            signals = "\n".join(
                f'[[sources.signals]]\nnode = "{node}"\nevent = "{event}"\n'
                f'asset = "line1"\n{extra}\n'
                for node, event, extra in SIGNALS
            )
            config = work / "agent.toml"
            config.write_text(CONFIG.format(state=work / "state", hub=broker.url, port=port,
                                            signals=signals))
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "-c", str(config)],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(3)  # connect and subscribe
                start_count = len(decode_events(subscriber.messages))
                start_cpu, started = cpu_seconds(agent.pid), time.monotonic()
                time.sleep(seconds)
                delivered = len(decode_events(subscriber.messages)) - start_count
                cpu = cpu_seconds(agent.pid) - start_cpu
                elapsed = time.monotonic() - started
                rss = peak_rss_mb(agent.pid)
            finally:
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=30)
    finally:
        plant.send_signal(signal.SIGTERM)
        plant.wait(timeout=10)
    return {
        "rate": rate,
        "events_per_s": delivered / elapsed,
        "cpu_us_per_event": cpu / delivered * 1e6 if delivered else float("nan"),
        "agent_cpu_share": cpu / elapsed,
        "peak_rss_mb": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rates", default="100,1000", help="plant ticks/s, comma-separated")
    args = parser.parse_args()
    print(f"{'plant ticks/s':>13} {'events/s':>9} {'agent CPU µs/event':>19} "
          f"{'agent CPU share':>16} {'peak RSS MB':>12}")
    for rate in (float(r) for r in args.rates.split(",")):
        row = run_once(rate, args.seconds)
        print(f"{row['rate']:>13.0f} {row['events_per_s']:>9.0f} "
              f"{row['cpu_us_per_event']:>19.0f} {row['agent_cpu_share']:>15.0%} "
              f"{row['peak_rss_mb']:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
