"""OPC UA ingest, end to end: asyncua server processes → `edge-agent run` process → mosquitto.

K local asyncua servers (`Servers`: each its own process, `opcua_subscription.serve_commands`)
hold N Double variables between them, split evenly (`split`: server k holds `V{first}`.. of its
share); the real agent process subscribes to all of them (one OPC UA source per server, one
`telemetry` signal per item) and forwards to a private mosquitto on a free loopback port; a
subscriber in this process checks every change off as it arrives (each change is a distinct
item and value, also across servers, so a missing or repeated event is seen). Per phase, every
server makes changes at its even share of the phase's rate (or as fast as it can, `rate = 0`)
for a fixed time, then this waits (bounded) until every change arrived:

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

Beside it the peer (`bench.peer_thingsboard`, where `make bench-peer` installed it):
ThingsBoard IoT Gateway (one OPC UA connector per server) on the same servers and the same
broker through the same phases, every value checked off the same way on its telemetry topic,
with the same figures (CPU from `/proc/PID/stat`, bytes written from `/proc/PID/io`), so agent
÷ peer is a ratio measured in one run. And the reference ceiling, on the same servers:
`BareClient` (a plain asyncua client process, one client per server, that subscribes the same
way and only counts data changes) through the same phases; its CPU µs per notification is what
any Python OPC UA client pays before doing anything.

`run_ingest` takes the agent, the peer (per storage) and the bare client through the phases
`repetitions` times on the same servers and broker, who goes first rotated by one each time
(agent, peer, bare; then peer, bare, agent; ...): each subject is a fresh process each time.
The result keeps every repetition and gives per phase the median, min and max (`summarise`).

Run alone: `.venv/bin/python -m bench.ingest [--items 1000 10000] [--seconds 10] [--servers K]
[--repetitions N] [--profile DIR] [--no-peer] [--peer-storage memory sqlite]` (py-spy, when
installed, records the agent during the max-rate phase); `bench.run` calls `run_ingest` and
`footprint` for `make bench`. Printed, never asserted. Children are ended also on SIGTERM.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
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

# Every wait for arrivals ends when nothing new arrived for this long.
_STALL_S = 15.0


@dataclass(frozen=True)
class Phase:
    name: str
    rate: float  # changes/s all the servers make together; 0 = each as fast as it can
    seconds: float


@dataclass(frozen=True)
class Server:
    """One asyncua server process of a run: its port and the items it holds (`V{first}`..)."""

    port: int
    first: int
    items: int

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/bench/"

    def item_of(self, change: int) -> tuple[int, float]:
        """The (item, value) its change number `change` made (`serve_commands`)."""
        return self.first + change % self.items, float(change // self.items + 1)


def split(items: int, servers: int) -> list[Server]:
    """N items over K servers (on free loopback ports), as evenly as whole items go."""
    count = max(1, min(servers, items))
    bounds = [items * index // count for index in range(count + 1)]
    return [
        Server(free_loopback_port(), first, last - first)
        for first, last in itertools.pairwise(bounds)
    ]


@dataclass(frozen=True)
class Changes:
    """What one phase's `go` made on every server: the (item, value) pairs to check off."""

    keys: list[tuple[int, float]]
    elapsed: float  # the slowest server's

    @property
    def offered_per_s(self) -> float:
        return len(self.keys) / self.elapsed if self.elapsed > 0 else float("nan")


class Servers:
    """The K server processes of one ingest run, started together, ended together."""

    def __init__(self, layout: Sequence[Server]) -> None:
        self.layout = list(layout)
        self.children: list[LineChild] = []

    def __enter__(self) -> Servers:
        try:
            for server in self.layout:
                self.children.append(
                    LineChild(
                        "--serve",
                        "--commands",
                        "--items",
                        str(server.items),
                        "--port",
                        str(server.port),
                        "--first-item",
                        str(server.first),
                    )
                )
            for child in self.children:
                if child.expect(600) != "ready":
                    raise RuntimeError("a bench server did not start")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        for child in self.children:
            child.close()

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def go(self, phase: Phase) -> Changes:
        """Run one phase on every server at once, its rate split evenly over them."""
        share = phase.rate / len(self.children)
        for child in self.children:
            child.send(f"go {share:g} {phase.seconds:g}")
        keys: list[tuple[int, float]] = []
        elapsed = 0.0
        for server, child in zip(self.layout, self.children, strict=True):
            _, first, count, seconds = child.expect(phase.seconds + 120).split()
            keys.extend(server.item_of(g) for g in range(int(first), int(first) + int(count)))
            elapsed = max(elapsed, float(seconds))
        return Changes(keys, elapsed)


def agent_config(servers: Sequence[Server], state: Path, hub_url: str) -> str:
    """The agent's config: one OPC UA source per server, a telemetry signal per item; hub and
    buffer defaults."""
    sources = "".join(
        f"""
[[sources]]
name = "bench-{index}"
type = "opcua"
endpoint = "{server.endpoint}"
publishing_interval_ms = 100
request_timeout_s = 30
watchdog_interval_s = 10

"""
        + "".join(
            f'[[sources.signals]]\nnode = "nsu={NAMESPACE};s=V{number}"\nevent = "telemetry"\n'
            f'asset = "bench/line"\n\n'
            for number in range(server.first, server.first + server.items)
        )
        for index, server in enumerate(servers)
    )
    return f"""
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "{state}"
shutdown_grace_s = 30

[hub]
url = "{hub_url}"
{sources}"""


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
        pairs = zip(messages[self._next :], received_at[self._next :], strict=False)
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


def _delivery_phase(
    pid: int,
    servers: Servers,
    tally: Arrivals,
    phase: Phase,
    profile: Path | None,
) -> dict[str, Any]:
    """One phase through the process `pid` (the agent or the peer), every change checked off."""
    cpu0, started = cpu_seconds(pid), time.time()
    server_cpu0 = sum(cpu_seconds(server) for server in servers.pids)
    written0, threads0 = write_bytes(pid), thread_cpu_seconds(pid)
    spy = _profiler(pid, phase.seconds, profile)
    try:
        changes = servers.go(phase)
        server_cpu = sum(cpu_seconds(server) for server in servers.pids) - server_cpu0
        waiting = set(changes.keys)
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
    arrived = [tally.arrived[key] for key in changes.keys if key in tally.arrived]
    latencies = [latency for _, latency in arrived]
    count, delivered = len(changes.keys), len(arrived)
    window = max((at for at, _ in arrived), default=started) - started
    per_event = 1e6 / delivered if delivered else float("nan")
    figures = {
        "phase": phase.name,
        "items": sum(server.items for server in servers.layout),
        "servers": len(servers.layout),
        "changes": count,
        "offered_per_s": changes.offered_per_s,
        "delivered": delivered,
        "missing": count - delivered,
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
    agent: AgentProcess,
    servers: Servers,
    tally: Tally,
    phase: Phase,
    profile: Path | None,
) -> dict[str, Any]:
    figures = _delivery_phase(agent.pid, servers, tally, phase, profile)
    # The names the results files had before the peer ran beside the agent.
    figures["agent_cpu_us_per_event"] = figures["cpu_us_per_event"]
    figures["agent_cpu_share"] = figures["cpu_share"]
    return figures


def _bare_phase(bare: LineChild, servers: Servers, phase: Phase) -> dict[str, Any]:
    counted0, cpu0, started = int(bare.ask("count", 30)), cpu_seconds(bare.pid), time.monotonic()
    count = len(servers.go(phase).keys)
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
        "phase": phase.name,
        "items": sum(server.items for server in servers.layout),
        "servers": len(servers.layout),
        "changes": count,
        "notifications": notified,
        "notifications_per_s": notified / (last_at - started),
        "cpu_us_per_notification": cpu / notified * 1e6 if notified else float("nan"),
    }


def _profiler(pid: int, seconds: float, out: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy recording the agent for the phase (collapsed stacks), if asked for and found."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if out is None or not Path(spy).exists():
        return None
    return subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, int(seconds))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop_profiler(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is None:
        return
    try:
        spy.wait(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(timeout=10)


AGENT, BARE = "agent", "bare client"


def run_ingest(
    items: int,
    phases: list[Phase],
    work: Path,
    *,
    servers: int = 1,
    repetitions: int = 1,
    profile_dir: Path | None = None,
    peer_storages: Sequence[str] = peer.STORAGES,
) -> dict[str, Any]:
    """N items on K server processes, through `phases`, `repetitions` times: each time the
    agent, the peer once per storage of `peer_storages` (where installed; none: no peer) and
    the bare client, the first of them rotated by one each time; the agent and the peer
    through one broker, all on the same servers.

    The result has every repetition (`repetitions`, each shaped as one run's figures were:
    `agent`, `peer`, `bare_client` and the start-up figures), their medians in that same shape
    (counts such as `missing` summed over the repetitions instead), and `summary`: per phase,
    the median, min and max of the figures compared (`summarise`)."""
    layout = split(items, servers)
    reason = peer.unavailable() if peer_storages else "not asked for (--no-peer)"
    storages = list(peer_storages) if reason is None else []
    subjects = [AGENT, *(f"peer {storage}" for storage in storages), BARE]
    runs: list[dict[str, Any]] = []
    with Servers(layout) as server_set, MosquittoBroker(["max_queued_messages 0"]) as broker:
        for repetition in range(repetitions):
            turn = repetition % len(subjects)
            order = subjects[turn:] + subjects[:turn]
            run: dict[str, Any] = {"order": order, "peer": []}
            for subject in order:
                print(
                    f"ingest: {items} items on {len(layout)} server(s), repetition "
                    f"{repetition + 1} of {repetitions}: {subject} ...",
                    file=sys.stderr,
                    flush=True,
                )
                if subject == AGENT:
                    run.update(
                        _agent_run(
                            layout, phases, work, broker, server_set, profile_dir, repetition
                        )
                    )
                elif subject == BARE:
                    run.update(_bare_run(layout, phases, server_set))
                else:
                    run["peer"].append(
                        _peer_or_why(
                            layout, phases, work, broker, server_set, subject.removeprefix("peer ")
                        )
                    )
            runs.append(run)
    if reason is not None:
        print(
            f"ingest: {items} items: the peer ({peer.PEER_NAME}) skipped: {reason}",
            file=sys.stderr,
            flush=True,
        )
    result: dict[str, Any] = {
        "items": items,
        "servers": len(layout),
        "server_items": [[server.first, server.items] for server in layout],
    }
    result.update(median_run(runs))
    result["peer"] = (
        [median_peer(runs, storage) for storage in storages]
        if reason is None
        else [{"name": peer.PEER_NAME, "skipped": reason}]
    )
    result["summary"] = summarise(runs, storages)
    result["repetitions"] = runs
    return result


def _agent_run(
    layout: Sequence[Server],
    phases: list[Phase],
    work: Path,
    broker: MosquittoBroker,
    servers: Servers,
    profile_dir: Path | None,
    repetition: int,
) -> dict[str, Any]:
    """A fresh agent process (its own state dir) through the phases."""
    items = sum(server.items for server in layout)
    root = Path(tempfile.mkdtemp(prefix=f"ingest-{items}-", dir=work))
    config = root / "agent.toml"
    config.write_text(agent_config(layout, root / "state", broker.url))
    subscriber = TimedSubscriber(broker)
    subscriber.start()
    tally = Tally(subscriber)
    agent = AgentProcess(config, root / "agent.log")
    spawned = time.time()
    agent.start()
    try:
        agent.wait_log(f"running: {len(layout)} source(s)", timeout=120)
        first = _first_values(tally, items, lambda: True)
        if len(first) < items:
            raise RuntimeError(
                f"{items - len(first)} initial values did not arrive:\n{agent.log_text()[-3000:]}"
            )
        figures: dict[str, Any] = {
            "start_to_first_event_s": min(first.values()) - spawned,
            "start_to_all_items_s": max(first.values()) - spawned,
        }
        figures["agent"] = [
            _agent_phase(
                agent,
                servers,
                tally,
                phase,
                profile_dir / f"agent-{items}-{phase.name}-{repetition + 1}.txt"
                if profile_dir is not None and phase.rate == 0
                else None,
            )
            for phase in phases
        ]
        figures["agent_repeats"] = tally.repeats
        figures["agent_peak_rss_mib"] = peak_rss_mb(agent.pid)
        agent.terminate(timeout=60)
    finally:
        agent.ensure_stopped()
        subscriber.stop()
    return figures


def _first_values(
    tally: Arrivals,
    items: int,
    alive: Callable[[], bool],
) -> dict[int, float]:
    """item -> arrival of its first value (its current value when subscribed), waiting (at
    most 300 s, while `alive()`) until every item has one or the wait ends."""
    seen: dict[int, float] = {}
    deadline = time.monotonic() + 300
    while len(seen) < items and time.monotonic() < deadline and alive():
        time.sleep(0.1)
        tally.update()
        for (number, _), (at, _) in tally.arrived.items():
            seen.setdefault(number, at)
    return seen


def _bare_run(layout: Sequence[Server], phases: list[Phase], servers: Servers) -> dict[str, Any]:
    """A fresh bare client process (one asyncua client per server) through the phases."""
    items = sum(server.items for server in layout)
    words = [f"{server.port}:{server.first}:{server.items}" for server in layout]
    with LineChild("--bare-client", "--servers", *words) as bare:
        if bare.expect(600) != "subscribed":
            raise RuntimeError("the bare client did not subscribe")
        deadline = time.monotonic() + 60
        while int(bare.ask("count", 30)) < items and time.monotonic() < deadline:
            time.sleep(0.1)  # every item's current value first
        return {
            "bare_client": [_bare_phase(bare, servers, phase) for phase in phases],
            "bare_client_peak_rss_mib": peak_rss_mb(bare.pid),
        }


def _peer_or_why(
    layout: Sequence[Server],
    phases: list[Phase],
    work: Path,
    broker: MosquittoBroker,
    servers: Servers,
    storage: str,
) -> dict[str, Any]:
    """One peer run, or why it failed (the agent's figures stand). A gateway that did not
    start is started once more: 3.8.5 sometimes dies at start in its own logger set-up
    (`update_file_handlers`: "dictionary changed size during iteration", a race between its
    threads, seen here with two OPC UA connectors); `start_attempts` says when it took two."""
    try:
        try:
            figures = _peer_run(layout, phases, work, broker, servers, storage)
            figures["start_attempts"] = 1
        except PeerNotStarted as error:
            print(
                f"ingest: the peer did not start, once more: {_ends(str(error))}",
                file=sys.stderr,
                flush=True,
            )
            figures = _peer_run(layout, phases, work, broker, servers, storage)
            figures["start_attempts"] = 2
    except (RuntimeError, TimeoutError, OSError) as error:
        print(f"ingest: the peer failed: {error}", file=sys.stderr, flush=True)
        return {
            "name": peer.PEER_NAME,
            "storage": storage,
            "skipped": f"failed: {_ends(str(error))}",
        }
    return figures


class PeerNotStarted(RuntimeError):
    """The gateway did not deliver every item's first value (it died or hung at start)."""


def _ends(text: str, head: int = 200, tail: int = 600) -> str:
    """A long error message cut to its first and last characters (the log's tail has the
    gateway's own traceback)."""
    return text if len(text) <= head + tail else f"{text[:head]} … {text[-tail:]}"


def _peer_run(
    layout: Sequence[Server],
    phases: list[Phase],
    work: Path,
    broker: MosquittoBroker,
    servers: Servers,
    storage: str,
) -> dict[str, Any]:
    """ThingsBoard IoT Gateway through the same phases, on the same servers and broker (one
    OPC UA connector per server)."""
    items = sum(server.items for server in layout)
    config = peer.write_config(
        Path(tempfile.mkdtemp(prefix=f"peer-{items}-", dir=work)),
        broker_port=broker.port,
        servers=[(server.port, server.first, server.items) for server in layout],
        storage=storage,
    )
    subscriber = TimedSubscriber(broker, peer.TELEMETRY_TOPIC)
    subscriber.start()
    tally = peer.PeerTally(subscriber)
    figures: dict[str, Any] = {
        "name": peer.PEER_NAME,
        "version": peer.peer_version(),
        "storage": storage,
    }
    try:
        with peer.SessionLimitsResponder(broker) as limits, peer.PeerGateway(config) as gateway:
            spawned = time.time()
            seen = _first_values(tally, items, gateway.alive)
            if len(seen) < items:
                raise PeerNotStarted(
                    f"the peer delivered {len(seen)} of {items} initial values "
                    f"(session limits answered {limits.answered} time(s)):\n"
                    f"{gateway.log_text()[-3000:]}"
                )
            figures["start_to_first_event_s"] = min(seen.values()) - spawned
            figures["start_to_all_items_s"] = max(seen.values()) - spawned
            figures["phases"] = [
                _delivery_phase(gateway.pid, servers, tally, phase, None) for phase in phases
            ]
            figures["repeats"] = tally.repeats
            figures["session_limits_answered"] = limits.answered
            figures["peak_rss_mib"] = peak_rss_mb(gateway.pid)
    finally:
        subscriber.stop()
    return figures


# Counts, summed over the repetitions where the figures are their medians: a change lost in
# any repetition is lost.
SUMMED = frozenset(
    ("changes", "delivered", "missing", "write_bytes", "notifications", "repeats", "agent_repeats")
)
# The figures `summarise` gives median, min and max of, per phase.
COMPARED = (
    "cpu_us_per_event",
    "write_bytes_per_event",
    "offered_per_s",
    "delivered_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "cpu_share",
    "main_thread_cpu_us_per_event",
    "other_threads_cpu_us_per_event",
)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of the finite values (all NaN when there are none)."""
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": statistics.median(finite), "min": min(finite), "max": max(finite)}


def median_of(figures: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One figures dict from several of the same shape: each number's median (the `SUMMED`
    counts: their sum), each phase list phase by phase, anything else as the first has it."""
    merged: dict[str, Any] = {}
    for key, first in figures[0].items():
        values = [each[key] for each in figures if key in each]
        if isinstance(first, bool) or not isinstance(first, int | float | list):
            merged[key] = first
        elif isinstance(first, list):
            merged[key] = (
                [median_of([each[index] for each in values]) for index in range(len(first))]
                if first and all(isinstance(item, dict) for item in first)
                else first
            )
        elif key in SUMMED:
            merged[key] = sum(values)
        else:
            merged[key] = spread(values)["median"]
    return merged


def median_run(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The agent's and the bare client's figures of the repetitions, as medians."""
    return median_of(
        [{key: value for key, value in run.items() if key not in ("peer", "order")} for run in runs]
    )


def median_peer(runs: Sequence[dict[str, Any]], storage: str) -> dict[str, Any]:
    """The peer's figures with one storage, medians over the repetitions it completed (`runs`:
    how many), or the first failure when it completed none."""
    entries = [other for run in runs for other in run["peer"] if other["storage"] == storage]
    done = [other for other in entries if "phases" in other]
    if not done:
        failed: dict[str, Any] = entries[0]
        return failed
    return {**median_of(done), "runs": len(done)}


def summarise(runs: Sequence[dict[str, Any]], storages: Sequence[str]) -> list[dict[str, Any]]:
    """Per phase: median, min and max over the repetitions of the agent's `COMPARED` figures,
    the bare client's CPU per notification, agent ÷ bare, and per peer storage the peer's
    `COMPARED` figures and agent ÷ peer. Each ratio pairs the agent with the other side of
    the same repetition (peer runs that failed are left out)."""
    summary = []
    for index, phase in enumerate(run["phase"] for run in runs[0]["agent"]):
        agents = [run["agent"][index] for run in runs]
        bares = [run["bare_client"][index] for run in runs]
        entry: dict[str, Any] = {
            "phase": phase,
            "agent": {key: spread([each[key] for each in agents]) for key in COMPARED},
            "bare_client": {
                "cpu_us_per_notification": spread(
                    [each["cpu_us_per_notification"] for each in bares]
                )
            },
            "agent_per_bare": spread(
                [
                    agent["cpu_us_per_event"] / bare["cpu_us_per_notification"]
                    for agent, bare in zip(agents, bares, strict=True)
                ]
            ),
            "peer": {},
        }
        for storage in storages:
            pairs = [
                (run["agent"][index], other["phases"][index])
                for run in runs
                for other in run["peer"]
                if other["storage"] == storage and "phases" in other
            ]
            if pairs:
                entry["peer"][storage] = {
                    **{key: spread([them[key] for _, them in pairs]) for key in COMPARED},
                    "agent_per_peer": spread(
                        [
                            agent["cpu_us_per_event"] / them["cpu_us_per_event"]
                            for agent, them in pairs
                        ]
                    ),
                }
        summary.append(entry)
    return summary


def footprint(items: int, state: Path, work: Path, phase: Phase) -> dict[str, Any]:
    """The agent with N OPC UA items (one server) on an existing state dir (e.g. one holding a
    backlog) and no hub: its peak RSS after subscribing and running one phase. Nothing is
    delivered."""
    layout = split(items, 1)
    config = work / "footprint.toml"
    config.write_text(agent_config(layout, state, f"mqtt://127.0.0.1:{free_loopback_port()}"))
    with Servers(layout) as servers:
        agent = AgentProcess(config, work / "footprint.log").start()
        try:
            agent.wait_log(f"subscribed to {items} of {items} nodes", timeout=300)
            servers.go(phase)
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
    parser.add_argument("--servers", type=int, default=1, help="asyncua server processes")
    parser.add_argument(
        "--repetitions",
        type=int,
        default=1,
        help="times through agent, peer and bare client, order rotated",
    )
    parser.add_argument("--profile", type=Path, help="py-spy the agent at max rate, into DIR")
    parser.add_argument("--no-peer", action="store_true", help="without the peer beside it")
    parser.add_argument(
        "--peer-storage", choices=peer.STORAGES, nargs="+", default=list(peer.STORAGES)
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    phases = [Phase(f"{args.rate:g}/s", args.rate, args.seconds), Phase("max", 0, args.seconds)]
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as work:
        for items in args.items:
            result = run_ingest(
                items,
                phases,
                Path(work),
                servers=args.servers,
                repetitions=args.repetitions,
                profile_dir=args.profile,
                peer_storages=[] if args.no_peer else args.peer_storage,
            )
            print(json.dumps(result, indent=2), flush=True)


if __name__ == "__main__":
    main()
