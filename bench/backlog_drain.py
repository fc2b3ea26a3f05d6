"""Backlog drain, measured: 1,000,000 events buffered while the broker is down, then drained.

1. Fill (`fill`): the real agent process with a fast simulated source and no broker (its hub URL
   points at a port nothing listens on) runs until its buffer holds `--events` pending events,
   then is stopped with SIGTERM. Figures: accepted events/s, buffer bytes on disk (the SQLite
   file with its -wal and -shm) per buffered event, the agent's peak RSS (VmHWM).
2. Drain (`drain`): a private mosquitto starts, the agent starts again on the same state dir (its
   source slowed to `live_rate` ticks/s so the backlog is what it sends; backlog pacing lifted to
   measure the agent, not the cap), and runs until no backlog event is pending. Drain rate =
   backlog events acked in the buffer (PUBACK-proven) / seconds from the agent's hub connection
   to the last backlog event's arrival at the hub. With a subscriber, also the latency of the
   live events produced during the drain (arrival at the hub minus the event's `time`).

Run: `.venv/bin/python -m bench.backlog_drain [--events 1000000]`. Printed, never asserted;
`bench.run` calls `fill` and `drain` for `make bench`.
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker, free_loopback_port
from testkit.durability import TimedSubscriber, simulated_agent_config, user_property
from testkit.events import decode_message_of

RUNNING = "running: 1 source(s)"
_SIGNAL = "  [[sources.signals]]\n"


def pending(buffer_file: Path, up_to_seq: int | None = None) -> tuple[int, int]:
    """(pending events, with seq <= up_to_seq if given; last_seq), read-only (the agent keeps
    writing)."""
    bound = "" if up_to_seq is None else f" AND seq <= {int(up_to_seq)}"
    try:
        with sqlite3.connect(f"file:{buffer_file}?mode=ro", uri=True, timeout=5) as db:
            (count,) = db.execute(
                f"SELECT count(*) FROM events WHERE acked_at IS NULL{bound}"
            ).fetchone()
            (last,) = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        return int(count), int(last)
    except sqlite3.Error:
        return -1, -1


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def buffer_bytes(state: Path) -> int:
    """Bytes on disk of the buffer: the SQLite file with its -wal and -shm."""
    return sum(path.stat().st_size for path in state.glob("buffer.sqlite*"))


def agent_config(
    hub_url: str, state: Path, rate_hz: float, *, telemetry_only: bool, extra_buffer: str = ""
) -> str:
    """`simulated_agent_config`, optionally with its telemetry signal only (1 event per tick)."""
    text = simulated_agent_config(
        hub_url=hub_url, state_dir=state, rate_hz=rate_hz, grace_s=30, extra_buffer=extra_buffer
    )
    if telemetry_only:
        head, counter, sine = text.split(_SIGNAL)
        assert "production.count" in counter and "telemetry" in sine, text
        text = head + _SIGNAL + sine
    return text


def fill(
    root: Path, events: int, fill_rate: float, *, telemetry_only: bool = False,
    timeout_s: float = 1800.0,
) -> dict[str, Any]:
    """Buffer `events` events in `root/state` with no broker; the agent stopped at the end."""
    state = root / "state"
    buffer_file = state / "buffer.sqlite"
    config = root / "fill.toml"
    config.write_text(agent_config(
        f"mqtt://127.0.0.1:{free_loopback_port()}", state, fill_rate,
        telemetry_only=telemetry_only,
    ))
    agent = AgentProcess(config, root / "fill.log").start()
    try:
        agent.wait_log(RUNNING, timeout=60)
        started = time.monotonic()
        rss = 0.0
        while pending(buffer_file)[0] < events:
            rss = max(rss, peak_rss_mib(agent.pid))
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"the buffer did not reach {events} events in {timeout_s} s")
            time.sleep(min(1.0, max(0.1, events / 200_000)))
        fill_s = time.monotonic() - started
        rss = max(rss, peak_rss_mib(agent.pid))
        agent.terminate(timeout=120)
    finally:
        agent.ensure_stopped()
    count, last = pending(buffer_file)
    size = buffer_bytes(state)
    return {
        "events": count, "last_seq": last, "seconds": fill_s, "accepted_per_s": count / fill_s,
        "buffer_bytes": size, "db_file_bytes": buffer_file.stat().st_size,
        "bytes_per_event": size / count if count > 0 else float("nan"),
        "peak_rss_mib": rss,
    }


def drain(
    root: Path, broker: MosquittoBroker, *, live_rate: float = 1.0, telemetry_only: bool = False,
    subscriber: TimedSubscriber | None = None, timeout_s: float = 1800.0,
) -> dict[str, Any]:
    """Start the agent on `root/state` with `broker` up; run until the backlog is acked."""
    state = root / "state"
    buffer_file = state / "buffer.sqlite"
    backlog, top = pending(buffer_file)
    config = root / "drain.toml"
    config.write_text(agent_config(
        broker.url, state, live_rate, telemetry_only=telemetry_only,
        extra_buffer="backlog_max_rate = 10000000\n",
    ).replace("backlog_max_rate = 50000\n", ""))
    agent = AgentProcess(config, root / "drain.log").start()
    try:
        agent.wait_log("hub connected", timeout=120)
        connected, started = time.time(), time.monotonic()
        rss = 0.0
        while pending(buffer_file, top)[0] != 0:
            rss = max(rss, peak_rss_mib(agent.pid))
            time.sleep(0.2)
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"the drain did not finish within {timeout_s} s")
        drained = time.time()
        rss = max(rss, peak_rss_mib(agent.pid))
        time.sleep(1.0)  # the last live events of the drain reach the subscriber
        agent.terminate(timeout=120)
    finally:
        agent.ensure_stopped()
    result: dict[str, Any] = {
        "backlog_events": backlog, "drain_s": drained - connected,
        "drained_per_s": backlog / (drained - connected), "peak_rss_mib": rss,
    }
    if subscriber is not None:
        result.update(_hub_view(subscriber, top, connected, drained))
    return result


def _hub_view(
    subscriber: TimedSubscriber, top: int, connected: float, drained: float
) -> dict[str, Any]:
    """What the hub saw: backlog events (seq <= top) arrived, the last one's arrival, and the
    latency of live events (seq > top) produced during the drain."""
    messages, received_at = subscriber.snapshot()
    backlog_seqs: set[int] = set()
    last_backlog = connected
    latencies: list[float] = []
    for message, at in zip(messages, received_at, strict=False):
        if "/events/" not in message.topic:
            continue
        backlog = user_property(message, "backlog") == "true"
        for event in decode_message_of(message):  # any hub format
            if event["seq"] <= top:
                backlog_seqs.add(event["seq"])
                last_backlog = max(last_backlog, at)
            elif not backlog:
                made = datetime.fromisoformat(event["time"]).timestamp()
                if connected <= made <= drained:
                    latencies.append(at - made)
    drain_s = last_backlog - connected
    return {
        "backlog_arrived": len(backlog_seqs),
        "hub_drain_s": drain_s,
        "hub_drained_per_s": len(backlog_seqs) / drain_s if drain_s > 0 else float("nan"),
        "live_events": len(latencies),
        "live_p50_s": percentile(latencies, 50),
        "live_p99_s": percentile(latencies, 99),
    }


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(q / 100 * len(ordered))) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--fill-rate", type=float, default=20_000.0, help="source ticks/s (x2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work, MosquittoBroker() as broker:
        root = Path(work)
        broker.stop()
        filled = fill(root, args.events, args.fill_rate)
        print(f"fill: {filled['events']} events pending (last_seq {filled['last_seq']}) in "
              f"{filled['seconds']:.0f} s ({filled['accepted_per_s']:,.0f} events/s accepted), "
              f"buffer {filled['buffer_bytes'] / 2**20:.0f} MiB "
              f"({filled['bytes_per_event']:.0f} bytes/event), "
              f"agent peak RSS {filled['peak_rss_mib']:.0f} MiB")
        broker.start()
        drained = drain(root, broker)
        print(f"drain: {drained['backlog_events']} events in {drained['drain_s']:.1f} s = "
              f"{drained['drained_per_s']:,.0f} events/s (PUBACK-acked), "
              f"agent peak RSS {drained['peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
