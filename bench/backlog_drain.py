"""Backlog drain, measured: 1,000,000 events buffered while the broker is down, then drained.

1. Fill: the real agent process with a fast simulated source and no broker (its hub URL points
   at a port nothing listens on) runs until its buffer holds `--events` pending events, then
   is stopped with SIGTERM.
2. Drain: a private mosquitto starts, the agent starts again on the same state dir (its source
   slowed to 1 tick/s so the backlog is what it sends; backlog pacing lifted to measure the
   agent, not the cap), and runs until nothing is pending. Drain rate = events acked in the
   buffer (PUBACK-proven) / seconds from the agent's hub connection to an empty queue.

Prints fill rate, drain rate (events/s), and the agent's peak RSS (VmHWM) in each phase.
Run: `.venv/bin/python -m bench.backlog_drain [--events 1000000]`. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from tests.support.agent_process import AgentProcess
from tests.support.broker import MosquittoBroker, free_loopback_port
from tests.support.durability import simulated_agent_config

RUNNING = "running: 1 source(s)"


def pending(buffer_file: Path) -> tuple[int, int]:
    """(pending events, last_seq), read-only (the agent keeps writing)."""
    try:
        with sqlite3.connect(f"file:{buffer_file}?mode=ro", uri=True, timeout=5) as db:
            (count,) = db.execute("SELECT count(*) FROM events WHERE acked_at IS NULL").fetchone()
            (last,) = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        return int(count), int(last)
    except sqlite3.Error:
        return -1, -1


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--fill-rate", type=float, default=20_000.0, help="source ticks/s (x2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work, MosquittoBroker() as broker:
        root = Path(work)
        broker.stop()
        state = root / "state"
        buffer_file = state / "buffer.sqlite"
        config = root / "agent.toml"
        config.write_text(simulated_agent_config(
            hub_url=f"mqtt://127.0.0.1:{free_loopback_port()}", state_dir=state,
            rate_hz=args.fill_rate, grace_s=30,
        ))
        agent = AgentProcess(config, root / "fill.log").start()
        try:
            agent.wait_log(RUNNING, timeout=60)
            started = time.monotonic()
            fill_rss = 0.0
            while (count := pending(buffer_file)[0]) < args.events:
                fill_rss = max(fill_rss, peak_rss_mib(agent.pid))
                time.sleep(1.0)
            fill_s = time.monotonic() - started
            fill_rss = max(fill_rss, peak_rss_mib(agent.pid))
            agent.terminate(timeout=120)
        finally:
            agent.ensure_stopped()
        count, last = pending(buffer_file)
        size_mib = sum(
            p.stat().st_size for p in state.glob("buffer.sqlite*")
        ) / 2**20
        print(f"fill: {count} events pending (last_seq {last}) in {fill_s:.0f} s "
              f"({count / fill_s:,.0f} events/s accepted), buffer {size_mib:.0f} MiB, "
              f"agent peak RSS {fill_rss:.0f} MiB")

        broker.start()
        config.write_text(simulated_agent_config(
            hub_url=broker.url, state_dir=state, rate_hz=1, grace_s=30,
            extra_buffer="backlog_max_rate = 10000000\n",
        ).replace("backlog_max_rate = 50000\n", ""))
        agent = AgentProcess(config, root / "drain.log").start()
        try:
            agent.wait_log("hub connected", timeout=120)
            started = time.monotonic()
            drain_rss = 0.0
            while pending(buffer_file)[0] != 0:
                drain_rss = max(drain_rss, peak_rss_mib(agent.pid))
                time.sleep(0.5)
                if time.monotonic() - started > 1800:
                    raise SystemExit("drain did not finish within 30 minutes")
            drain_s = time.monotonic() - started
            drain_rss = max(drain_rss, peak_rss_mib(agent.pid))
            agent.terminate(timeout=120)
        finally:
            agent.ensure_stopped()
        print(f"drain: {count} events in {drain_s:.1f} s = {count / drain_s:,.0f} events/s "
              f"(PUBACK-acked), agent peak RSS {drain_rss:.0f} MiB")


if __name__ == "__main__":
    main()
