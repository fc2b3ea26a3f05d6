"""OPC UA ingest, end to end: asyncua server process → `edge-agent run` process → mosquitto.

A local asyncua server (its own process, `opcua_subscription.serve_commands`) holds N Double
variables; the real agent process subscribes to all of them (one `telemetry` signal each) and
forwards to a private mosquitto on a free loopback port; a subscriber in this process checks
every change off as it arrives (each change is a distinct item and value, so a missing or
repeated event is seen). Per phase, the server makes changes at a fixed rate (or as fast as it
can, `rate = 0`) for a fixed time, then this waits (bounded) until every change arrived:

- events/s delivered: changes that arrived / seconds from the first change to the last arrival;
- the agent's CPU µs per delivered event: its process CPU time (utime + stime from /proc) over
  the same window / events: everything from the OPC UA notification to the PUBACK;
- latency p50/p99: arrival at the subscriber minus the event's `time` (the server's source
  timestamp, stamped when it made the change; same host clock);
- start to first forwarded event (from spawning the agent), and peak RSS (VmHWM) over its life;
- disk bytes written per event (`/proc/PID/io` `write_bytes` over the phase: what reached the
  block layer for the agent, SQLite's WAL, checkpoints and its logs) and CPU % of a core;
- the cost per stage, cheaply: CPU per event of the event-loop thread (the main thread) and of
  all other threads (SQLite writer and lease reader, paho) from `/proc/PID/task`; with
  `profile_dir` and py-spy installed, the max-rate samples grouped by stage (`STAGES`).

Then the peer, side by side (`bench.peer_thingsboard`, where `make bench-peer` installed it):
ThingsBoard IoT Gateway on the same server process and the same broker through the same
phases, every value checked off the same way on its telemetry topic, with the same figures
(CPU from `/proc/PID/stat`, bytes written from `/proc/PID/io`), so agent ÷ peer is a ratio
measured in one run.

Then the reference ceiling, against the same server: `BareClient` (a plain asyncua client
process that subscribes the same way and only counts data changes) runs the same phases; its
CPU µs per notification is what any Python OPC UA client pays before doing anything.

Run alone: `.venv/bin/python -m bench.ingest [--items 1000 10000] [--seconds 10]
[--profile DIR] [--no-peer] [--peer-storage memory sqlite]` (py-spy, when installed, records
the agent during the max-rate phase); `bench.run` calls `run_ingest` and `footprint` for `make
bench`. Printed, never asserted. Children are ended also on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from bench import peer_thingsboard as peer
from bench.backlog_drain import percentile
from bench.demo_path import CLOCK_TICKS, cpu_seconds, peak_rss_mb
from bench.opcua_subscription import NAMESPACE, LineChild
from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker, free_loopback_port
from testkit.durability import TimedSubscriber
from testkit.events import decode_message_of

RUNNING = "running: 1 source(s)"
# Every wait for arrivals ends when nothing new arrived for this long.
_STALL_S = 15.0


@dataclass(frozen=True)
class Phase:
    name: str
    rate: float  # changes/s the server makes; 0 = as fast as it can
    seconds: float


def agent_config(items: int, port: int, state: Path, hub_url: str) -> str:
    """The agent's config: one OPC UA source, N telemetry signals; hub and buffer defaults."""
    signals = "".join(
        f'[[sources.signals]]\nnode = "nsu={NAMESPACE};s=V{number}"\nevent = "telemetry"\n'
        f'asset = "bench/line"\n\n'
        for number in range(items)
    )
    return f"""
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "{state}"
shutdown_grace_s = 30

[hub]
url = "{hub_url}"

[[sources]]
name = "bench"
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:{port}/bench/"
publishing_interval_ms = 100
request_timeout_s = 30
watchdog_interval_s = 10

{signals}"""


class Arrivals(Protocol):
    """What a phase reads arrivals from: `Tally` (the agent's events), `peer.PeerTally`."""

    arrived: dict[tuple[int, float], tuple[float, float]]

    def update(self) -> None: ...


def write_bytes(pid: int) -> int:
    """Bytes the process caused to be written to storage so far (`/proc/PID/io`)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/io has no write_bytes line")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (utime + stime) of each live thread of the process, by thread id."""
    result: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended meanwhile
        result[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return result


# py-spy frames -> stage: a sample counts for the first stage (in this order) one of whose
# needles is in one of its frames (a frame reads "function (path/file.py:line)").
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("SQLite (buffer threads)", ("sqlite3", "/aiosqlite/", "/buffer/", "/agent/store.py")),
    ("asyncua receive + decode", ("/asyncua/",)),
    ("mapping", ("/agent/flow/mapping", "/agent/flow/signal_values", "/agent/flow/corrections")),
    ("event build + encode", ("/events/", "msgpack", "msgspec")),
    ("forwarder + MQTT (paho)", ("/agent/link/", "/paho/")),
    ("pipeline", ("/agent/flow/",)),
    ("event loop, idle, other", ("",)),
)


def stage_shares(raw: str) -> dict[str, float]:
    """Share of py-spy samples per stage, from its `--format raw` output (collapsed stacks:
    `frame;frame;...;leaf COUNT` per line)."""
    counts = dict.fromkeys((name for name, _ in STAGES), 0)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        for name, needles in STAGES:
            if any(needle in frame for frame in reversed(frames) for needle in needles):
                counts[name] += int(count)
                break
    total = sum(counts.values())
    return {name: count / total for name, count in counts.items()} if total else {}


class Tally:
    """The events that reached a `TimedSubscriber`, decoded as they come: (item, value) ->
    (arrival time, latency), plus repeats."""

    def __init__(self, subscriber: TimedSubscriber) -> None:
        self.subscriber = subscriber
        self.arrived: dict[tuple[int, float], tuple[float, float]] = {}
        self.repeats = 0
        self._next = 0

    def update(self) -> None:
        messages, received_at = self.subscriber.snapshot()
        pairs = zip(messages[self._next:], received_at[self._next:], strict=False)
        for message, at in pairs:
            self._next += 1
            if "/events/" not in message.topic:
                continue
            for event in decode_message_of(message):  # any hub format
                data = event["data"]
                key = (int(str(data["signal"]).rsplit("V", 1)[1]), float(data["value"]))
                if key in self.arrived:
                    self.repeats += 1
                    continue
                made = datetime.fromisoformat(event["time"]).timestamp()
                self.arrived[key] = (at, at - made)


def _go(server: LineChild, phase: Phase) -> tuple[int, int, float]:
    """Run one phase on the server: (first change number, changes made, seconds)."""
    _, first, count, elapsed = server.ask(
        f"go {phase.rate:g} {phase.seconds:g}", phase.seconds + 120
    ).split()
    return int(first), int(count), float(elapsed)


def _delivery_phase(
    pid: int, server: LineChild, tally: Arrivals, items: int, phase: Phase,
    profile: Path | None,
) -> dict[str, Any]:
    """One phase through the process `pid` (the agent or the peer), every change checked off."""
    cpu0, server_cpu0, started = cpu_seconds(pid), cpu_seconds(server.pid), time.time()
    written0, threads0 = write_bytes(pid), thread_cpu_seconds(pid)
    spy = _profiler(pid, phase.seconds, profile)
    try:
        first, count, elapsed = _go(server, phase)
        server_cpu = cpu_seconds(server.pid) - server_cpu0
        waiting = {(g % items, float(g // items + 1)) for g in range(first, first + count)}
        deadline = time.monotonic() + max(120.0, 5 * phase.seconds)
        last_progress = time.monotonic()
        while waiting and time.monotonic() < deadline:
            before = len(waiting)
            tally.update()
            waiting.difference_update(tally.arrived)
            if len(waiting) < before:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > _STALL_S:
                break
            time.sleep(0.25)
        cpu = cpu_seconds(pid) - cpu0
        written, threads = write_bytes(pid) - written0, thread_cpu_seconds(pid)
    finally:
        _stop_profiler(spy)
    loop = threads.get(pid, 0.0) - threads0.get(pid, 0.0)
    arrived = [
        tally.arrived[key]
        for key in ((g % items, float(g // items + 1)) for g in range(first, first + count))
        if key in tally.arrived
    ]
    latencies = [latency for _, latency in arrived]
    delivered = len(arrived)
    window = max((at for at, _ in arrived), default=started) - started
    per_event = 1e6 / delivered if delivered else float("nan")
    figures = {
        "phase": phase.name, "items": items, "changes": count, "offered_per_s": count / elapsed,
        "delivered": delivered, "missing": count - delivered,
        "delivered_per_s": delivered / window if window > 0 else float("nan"),
        "cpu_us_per_event": cpu * per_event,
        "cpu_share": cpu / window if window > 0 else float("nan"),
        "main_thread_cpu_us_per_event": loop * per_event,
        "other_threads_cpu_us_per_event": (cpu - loop) * per_event,
        "write_bytes": written,
        "write_bytes_per_event": written * per_event / 1e6,
        "server_cpu_us_per_change": server_cpu / count * 1e6 if count else float("nan"),
        "latency_p50_ms": percentile(latencies, 50) * 1e3,
        "latency_p99_ms": percentile(latencies, 99) * 1e3,
        "latency_max_ms": max(latencies, default=float("nan")) * 1e3,
    }
    if profile is not None and profile.exists():
        figures["stage_shares"] = stage_shares(profile.read_text())
    return figures


def _agent_phase(
    agent: AgentProcess, server: LineChild, tally: Tally, items: int, phase: Phase,
    profile: Path | None,
) -> dict[str, Any]:
    figures = _delivery_phase(agent.pid, server, tally, items, phase, profile)
    # The names the results files had before the peer ran beside the agent.
    figures["agent_cpu_us_per_event"] = figures["cpu_us_per_event"]
    figures["agent_cpu_share"] = figures["cpu_share"]
    return figures


def _bare_phase(bare: LineChild, server: LineChild, items: int, phase: Phase) -> dict[str, Any]:
    counted0, cpu0, started = int(bare.ask("count", 30)), cpu_seconds(bare.pid), time.monotonic()
    _, count, _ = _go(server, phase)
    counted, last_at = counted0, time.monotonic()
    deadline = time.monotonic() + max(60.0, 2 * phase.seconds)
    while counted - counted0 < count and time.monotonic() < deadline:
        now = int(bare.ask("count", 30))
        if now > counted:
            counted, last_at = now, time.monotonic()
        elif time.monotonic() - last_at > _STALL_S / 3:
            break
        time.sleep(0.1)
    cpu = cpu_seconds(bare.pid) - cpu0
    notified = counted - counted0
    return {
        "phase": phase.name, "items": items, "changes": count, "notifications": notified,
        "notifications_per_s": notified / (last_at - started),
        "cpu_us_per_notification": cpu / notified * 1e6 if notified else float("nan"),
    }


def _profiler(pid: int, seconds: float, out: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy recording the agent for the phase (collapsed stacks), if asked for and found."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if out is None or not Path(spy).exists():
        return None
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
         "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _stop_profiler(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is None:
        return
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(timeout=10)


def run_ingest(
    items: int, phases: list[Phase], work: Path, *, profile_dir: Path | None = None,
    peer_storages: Sequence[str] = peer.STORAGES,
) -> dict[str, Any]:
    """The agent, then the peer once per storage of `peer_storages` (where installed; none:
    no peer), then the bare client, through `phases` against one server with N items; the
    agent and the peer through one broker. `result["peer"]`: one entry per peer run, or one
    saying why it was skipped."""
    port = free_loopback_port()
    result: dict[str, Any] = {"items": items}
    with LineChild("--serve", "--commands", "--items", str(items), "--port", str(port)) as server:
        if server.expect(600) != "ready":
            raise RuntimeError("the bench server did not start")
        with MosquittoBroker(["max_queued_messages 0"]) as broker:
            subscriber = TimedSubscriber(broker)
            subscriber.start()
            try:
                result.update(_agent_run(items, phases, work, port, broker, subscriber,
                                         server, profile_dir))
            finally:
                subscriber.stop()
            reason = peer.unavailable() if peer_storages else "not asked for (--no-peer)"
            if reason is None:
                result["peer"] = []
                for storage in peer_storages:
                    print(f"ingest: {items} items: the peer, {storage} storage ...",
                          file=sys.stderr, flush=True)
                    try:
                        result["peer"].append(
                            _peer_run(items, phases, work, port, broker, server, storage))
                    except (RuntimeError, TimeoutError, OSError) as error:  # the agent stands
                        print(f"ingest: {items} items: the peer failed: {error}",
                              file=sys.stderr, flush=True)
                        result["peer"].append({"name": peer.PEER_NAME, "storage": storage,
                                               "skipped": f"failed: {str(error)[:300]}"})
            else:
                print(f"ingest: {items} items: the peer ({peer.PEER_NAME}) skipped: {reason}",
                      file=sys.stderr, flush=True)
                result["peer"] = [{"name": peer.PEER_NAME, "skipped": reason}]
        with LineChild("--bare-client", "--items", str(items), "--port", str(port)) as bare:
            if bare.expect(600) != "subscribed":
                raise RuntimeError("the bare client did not subscribe")
            deadline = time.monotonic() + 60
            while int(bare.ask("count", 30)) < items and time.monotonic() < deadline:
                time.sleep(0.1)  # every item's current value first
            result["bare_client"] = [_bare_phase(bare, server, items, phase) for phase in phases]
            result["bare_client_peak_rss_mib"] = peak_rss_mb(bare.pid)
    return result


def _agent_run(
    items: int, phases: list[Phase], work: Path, port: int, broker: MosquittoBroker,
    subscriber: TimedSubscriber, server: LineChild, profile_dir: Path | None,
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"ingest-{items}-", dir=work))
    config = root / "agent.toml"
    config.write_text(agent_config(items, port, root / "state", broker.url))
    tally = Tally(subscriber)
    agent = AgentProcess(config, root / "agent.log")
    spawned = time.time()
    agent.start()
    try:
        agent.wait_log(RUNNING, timeout=120)
        initial = {(number, 0.0) for number in range(items)}  # each item's value at subscribe
        deadline = time.monotonic() + 300
        while not initial <= tally.arrived.keys():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(initial - tally.arrived.keys())} initial values "
                                   f"did not arrive:\n{agent.log_text()[-3000:]}")
            time.sleep(0.1)
            tally.update()
        arrivals = [tally.arrived[key][0] for key in initial]
        figures: dict[str, Any] = {
            "start_to_first_event_s": min(arrivals) - spawned,
            "start_to_all_items_s": max(arrivals) - spawned,
        }
        figures["agent"] = [
            _agent_phase(
                agent, server, tally, items, phase,
                profile_dir / f"agent-{items}-{phase.name}.txt"
                if profile_dir is not None and phase.rate == 0 else None,
            )
            for phase in phases
        ]
        figures["agent_repeats"] = tally.repeats
        figures["agent_peak_rss_mib"] = peak_rss_mb(agent.pid)
        agent.terminate(timeout=60)
    finally:
        agent.ensure_stopped()
    return figures


def _peer_run(
    items: int, phases: list[Phase], work: Path, port: int, broker: MosquittoBroker,
    server: LineChild, storage: str,
) -> dict[str, Any]:
    """ThingsBoard IoT Gateway through the same phases, on the same server and broker."""
    config = peer.write_config(Path(tempfile.mkdtemp(prefix=f"peer-{items}-", dir=work)),
                               broker_port=broker.port, opcua_port=port, items=items,
                               storage=storage)
    subscriber = TimedSubscriber(broker, peer.TELEMETRY_TOPIC)
    subscriber.start()
    tally = peer.PeerTally(subscriber)
    figures: dict[str, Any] = {"name": peer.PEER_NAME, "version": peer.peer_version(),
                               "storage": storage}
    try:
        with peer.SessionLimitsResponder(broker) as limits, peer.PeerGateway(config) as gateway:
            spawned = time.time()
            seen: dict[int, float] = {}  # item -> first arrival (its value at subscribe)
            deadline = time.monotonic() + 300
            while len(seen) < items:
                if time.monotonic() > deadline or not gateway.alive():
                    raise RuntimeError(
                        f"the peer delivered {len(seen)} of {items} initial values "
                        f"(session limits answered {limits.answered} time(s)):\n"
                        f"{gateway.log_text()[-3000:]}")
                time.sleep(0.1)
                tally.update()
                for (number, _), (at, _) in tally.arrived.items():
                    seen.setdefault(number, at)
            figures["start_to_first_event_s"] = min(seen.values()) - spawned
            figures["start_to_all_items_s"] = max(seen.values()) - spawned
            figures["phases"] = [
                _delivery_phase(gateway.pid, server, tally, items, phase, None)
                for phase in phases
            ]
            figures["repeats"] = tally.repeats
            figures["session_limits_answered"] = limits.answered
            figures["peak_rss_mib"] = peak_rss_mb(gateway.pid)
    finally:
        subscriber.stop()
    return figures


def footprint(items: int, state: Path, work: Path, phase: Phase) -> dict[str, Any]:
    """The agent with N OPC UA items on an existing state dir (e.g. one holding a backlog) and
    no hub: its peak RSS after subscribing and running one phase. Nothing is delivered."""
    port = free_loopback_port()
    config = work / "footprint.toml"
    config.write_text(
        agent_config(items, port, state, f"mqtt://127.0.0.1:{free_loopback_port()}")
    )
    with LineChild("--serve", "--commands", "--items", str(items), "--port", str(port)) as server:
        if server.expect(600) != "ready":
            raise RuntimeError("the bench server did not start")
        agent = AgentProcess(config, work / "footprint.log").start()
        try:
            agent.wait_log(f"subscribed to {items} of {items} nodes", timeout=300)
            _go(server, phase)
            time.sleep(1.0)
            rss = peak_rss_mb(agent.pid)
            agent.terminate(timeout=60)
        finally:
            agent.ensure_stopped()
    return {"items": items, "phase": phase.name, "peak_rss_mib": rss}


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds every `finally`: the children are ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rate", type=float, default=2000.0, help="changes/s, moderate phase")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--profile", type=Path, help="py-spy the agent at max rate, into DIR")
    parser.add_argument("--no-peer", action="store_true", help="without the peer beside it")
    parser.add_argument("--peer-storage", choices=peer.STORAGES, nargs="+",
                        default=list(peer.STORAGES))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    phases = [Phase(f"{args.rate:g}/s", args.rate, args.seconds), Phase("max", 0, args.seconds)]
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as work:
        for items in args.items:
            result = run_ingest(items, phases, Path(work), profile_dir=args.profile,
                                peer_storages=[] if args.no_peer else args.peer_storage)
            print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
