"""Durability, measured: the real agent process under faults, at a steady rate, for a bounded
time per scenario. Prints one table row per scenario, and writes the figures as JSON
(`bench/results.durability.json`, or `--out`; `bench.report` renders the docs' table from the
committed `bench/results.durability.reference.json`):

    scenario | produced | accepted | delivered | lost | duplicated | max delivery delay

- produced: events the simulated source generated over the run (its ticks from the first to
  the last accepted one, times its signals; ticks while the agent was down count too: a plant
  does not stop when its agent does).
- accepted: events committed to the buffer: the last `seq` handed out (seqs are gap-free, and
  continue across a corrupt file moved aside). lost: accepted seqs that never reached the hub
  (after de-duplication by id) and that no `agent.buffer.overflow` event at the hub named as
  evicted: silent losses. Evictions the hub was told about are shown beside it ("+N evicted,
  reported"). duplicated: arrivals of an id already seen; delay: arrival at the hub minus
  acceptance, worst case.

Run: `.venv/bin/python -m bench.durability [--seconds 15] [--rate 500] [--only WORD ...]
[--out FILE]`. Figures are printed, never asserted (the tests assert the guarantees).

The results file holds `bench.results.about_the_run` (mode `full`, or `partial` with `--only`),
the run's `seconds_per_scenario`, `rate_hz`, `events_per_tick` and `seconds`, and `scenarios`:
one object per scenario, in the table's order, with `scenario` (its name), `produced`,
`accepted`, `delivered`, `lost` (silent losses only), `evicted_reported`, `duplicated`,
`max_delay_s` and `webhook_posts` (HTTP status, "0" for no answer, to a count); or only
`scenario` and `skipped` (the reason) for a scenario that could not run here.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.results import about_the_run, write
from testkit.agent_process import AgentProcess
from testkit.blackhole import TcpProxy
from testkit.broker import MosquittoBroker, free_loopback_port
from testkit.durability import (
    TimedSubscriber,
    accepted,
    arrivals,
    check_delivery,
    last_seq,
    simulated_agent_config,
)
from testkit.mes_http import completions_webhook_source, post_completion
from testkit.mqtt_proxy import MqttProxy
from testkit.short_disk import Filler, small_tmpfs

RESULTS = Path(__file__).resolve().parent / "results.durability.json"
SIGNALS = 2
RUNNING = "running: 1 source(s)"
OVERFLOW_TYPE = "agent.buffer.overflow.v1"
# The disk-short scenario: the reserve sits this far below the free space, and a filler file of
# FILLER_BYTES takes the free space below it for real (no mock; statvfs sees it).
RESERVE_MARGIN = 512 * 2**20
FILLER_BYTES = 1024 * 2**20


class Faults:
    """What a scenario may break, and the subscriber that must be back before the agent is."""

    def __init__(
        self, agent: AgentProcess, broker: MosquittoBroker, proxy: TcpProxy,
        subscriber: TimedSubscriber, rng: random.Random, root: Path,
        mqtt_proxy: MqttProxy | None = None,
    ) -> None:
        self.agent, self.broker, self.proxy = agent, broker, proxy
        self.subscriber, self.rng, self.root = subscriber, rng, root
        self.mqtt_proxy = mqtt_proxy
        self.webhook_port = 0
        self.webhook_answers: list[int] = []  # legitimate posts during a fault: HTTP statuses
        self.calls = 0


@dataclass(frozen=True)
class Scenario:
    fault: Callable[[Faults], None]
    broker_options: tuple[str, ...] = ()
    broker_files: Mapping[str, str] = field(default_factory=dict)
    # The [buffer] and [hub] lines of the config, given the work dir (for a disk-free reserve).
    extra_buffer: Callable[[Path], str] = lambda _root: ""
    extra_hub: str = ""
    # An MQTT-aware proxy between the agent's link and the broker (it can swallow PUBACKs).
    mqtt_proxy: bool = False
    # The state dir on a tmpfs of this many bytes (as root), to fill to the last byte.
    state_tmpfs_bytes: int | None = None
    # A webhook source beside the simulated one (its port), and the agent's RLIMIT_NOFILE.
    webhook: bool = False
    nofile: int | None = None


@contextlib.contextmanager
def threaded_mqtt_proxy(target_port: int) -> Iterator[MqttProxy]:
    """`MqttProxy` (asyncio) on a loop of its own thread, for this synchronous runner; its
    `swallow_pubacks` flag is a plain attribute that the proxy reads per packet."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="mqtt-proxy", daemon=True)
    thread.start()
    proxy = MqttProxy(target_port)
    try:
        asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(10)
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def run_scenario(name: str, seconds: float, rate_hz: float, scenario: Scenario) -> dict[str, Any]:
    """The scenario's figures (see the module docstring: one object of `scenarios`)."""
    rng = random.Random(7)
    with (
        tempfile.TemporaryDirectory() as work,
        MosquittoBroker(list(scenario.broker_options), files=scenario.broker_files) as broker,
        contextlib.ExitStack() as stack,
    ):
        root = Path(work)
        if scenario.state_tmpfs_bytes is not None:
            stack.enter_context(small_tmpfs(root / "state", scenario.state_tmpfs_bytes))
        mqtt_proxy = (
            stack.enter_context(threaded_mqtt_proxy(broker.port)) if scenario.mqtt_proxy else None
        )
        upstream = mqtt_proxy.port if mqtt_proxy is not None else broker.port
        with TcpProxy(upstream) as proxy:
            subscriber = TimedSubscriber(broker).start()
            config = root / "agent.toml"
            webhook_port = free_loopback_port()
            config.write_text(
                simulated_agent_config(
                    hub_url=proxy.url, state_dir=root / "state", rate_hz=rate_hz,
                    extra_buffer=scenario.extra_buffer(root), extra_hub=scenario.extra_hub,
                )
                + (
                    completions_webhook_source(webhook_port, root / "tokens")
                    if scenario.webhook else ""
                )
            )
            agent = AgentProcess(config, root / "agent.log", nofile=scenario.nofile).start()
            try:
                agent.wait_log(RUNNING if not scenario.webhook else "running: 2 source(s)",
                               timeout=30)
                faults = Faults(agent, broker, proxy, subscriber, rng, root, mqtt_proxy)
                faults.webhook_port = webhook_port
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    scenario.fault(faults)
                    faults.calls += 1
                subscriber.wait_subscribed(15)
                proxy.forward()
                buffer_file = root / "state" / "buffer.sqlite"
                settle = time.monotonic() + 60
                while time.monotonic() < settle:
                    held = set(accepted(buffer_file))
                    if held <= {a.event["id"] for a in arrivals(subscriber.messages)}:
                        break
                    time.sleep(0.5)
                agent.terminate()
                answers = faults.webhook_answers
            finally:
                agent.ensure_stopped()
            messages, received_at = subscriber.snapshot()
            subscriber.stop()
        delivery = check_delivery(buffer_file, messages, received_at=received_at)
        top = last_seq(buffer_file)
        everything = arrivals(messages)
        ticks = sorted(
            int(a.event["data"]["count"]) for a in everything
            if a.event["type"] == "production.count.v1"
        )
        made = (ticks[-1] - ticks[0] + 1) * SIGNALS if ticks else 0
        reported: set[int] = set()  # seqs the hub was told were evicted
        for arrival in everything:
            if arrival.event["type"] == OVERFLOW_TYPE:
                for first, last in arrival.event["data"].get("seq_ranges", []):
                    reported.update(range(int(first), int(last) + 1))
        silent = [seq for seq in delivery.seq_gaps if seq not in reported]
        evicted = len(reported & set(delivery.seq_gaps))
    return {
        "scenario": name, "produced": made, "accepted": top, "delivered": delivery.delivered,
        "lost": len(silent), "evicted_reported": evicted, "duplicated": delivery.duplicated,
        "max_delay_s": delivery.max_delay_s,
        "webhook_posts": {
            str(status): n for status, n in sorted(collections.Counter(answers).items())
        },
    }


def steady(f: Faults) -> None:
    time.sleep(0.5)


def broker_kills(f: Faults) -> None:
    time.sleep(f.rng.uniform(0.5, 2.0))
    f.proxy.refuse()
    f.broker.kill()
    time.sleep(f.rng.uniform(0.2, 2.0))
    f.broker.start()
    f.subscriber.wait_subscribed(15)  # a broker without persistence forgot the subscription
    f.proxy.forward()


def blackhole(f: Faults) -> None:
    time.sleep(f.rng.uniform(1.0, 2.0))
    f.proxy.blackhole()
    time.sleep(f.rng.uniform(8.0, 12.0))  # keepalive 5 s: noticed after about 7.5 s
    f.proxy.forward()


def agent_kills(f: Faults) -> None:
    time.sleep(f.rng.uniform(0.1, 1.0))
    f.agent.kill()
    offset = len(f.agent.log_text())
    f.agent.start()
    f.agent.wait_log(RUNNING, after=offset, timeout=30)


def disk_short(f: Faults) -> None:
    """Free space taken below the configured reserve by a real file, then given back."""
    time.sleep(f.rng.uniform(0.5, 1.5))
    filler = f.root / "filler"
    with filler.open("wb") as file:
        os.posix_fallocate(file.fileno(), 0, FILLER_BYTES)
    try:
        time.sleep(f.rng.uniform(2.0, 4.0))
    finally:
        filler.unlink()


def disk_full(f: Faults) -> None:
    """The state dir's file system (a small tmpfs) filled to the last byte by a real file,
    kept full for a while, then freed."""
    time.sleep(f.rng.uniform(0.5, 1.5))
    filler = Filler(f.root / "state")
    try:
        deadline = time.monotonic() + f.rng.uniform(2.0, 4.0)
        while time.monotonic() < deadline:
            filler.top_up()  # the agent frees a page now and then: take it too
            time.sleep(0.05)
    finally:
        filler.remove()


def reserve_below_free_space(root: Path) -> str:
    stat = os.statvfs(root)
    return f"disk_free_reserve = {stat.f_bavail * stat.f_frsize - RESERVE_MARGIN}"


def corrupt_at_start(f: Faults) -> None:
    """Once: stop the agent, damage a page in the middle of its buffer file, start it (the
    file is moved aside and a fresh one continues the seq); then a steady run."""
    if f.calls:
        time.sleep(0.5)
        return
    time.sleep(2.0)
    f.agent.terminate()
    buffer_file = f.root / "state" / "buffer.sqlite"
    with buffer_file.open("r+b") as file:
        size = file.seek(0, 2)
        file.seek(max(4096 * 3, size // 2))
        file.write(b"\xff" * 4096)
    offset = len(f.agent.log_text())
    f.agent.start()
    f.agent.wait_log(RUNNING, after=offset, timeout=30)
    if "moved aside" not in f.agent.log_text()[offset:]:
        raise RuntimeError("the damaged buffer file was not moved aside")


def second_agent(f: Faults) -> None:
    """Another agent on the same state dir: it must be refused, the first keeps going."""
    time.sleep(f.rng.uniform(0.2, 1.0))
    other = AgentProcess(f.agent.config, f.root / "second.log").start()
    try:
        if other.wait_exit(30) != 1 or "is in use by" not in other.log_text():
            raise RuntimeError(f"a second agent was not refused:\n{other.log_text()[-2000:]}")
    finally:
        other.ensure_stopped()


def puback_stall(f: Faults) -> None:
    """The path keeps the connection and its keepalive but loses every PUBACK for longer than
    the PUBACK deadline (`STALL_HUB`), then carries them again."""
    assert f.mqtt_proxy is not None
    time.sleep(f.rng.uniform(1.0, 2.0))
    f.mqtt_proxy.swallow_pubacks = True
    try:
        time.sleep(f.rng.uniform(6.0, 9.0))
    finally:
        f.mqtt_proxy.swallow_pubacks = False


STALL_HUB = "puback_timeout_s = 3"
COUNT_TOPIC = "mfg/plant-a/edge-01/events/production.count.v1"
ACL_DENY_COUNT = f"topic deny {COUNT_TOPIC}\ntopic readwrite #\n"
ACL_ALLOW_ALL = "topic readwrite #\n"


def acl_denial(f: Faults) -> None:
    """The broker's ACL denies the business event topic (PUBACK 0x87) for a while, then is
    fixed and reloaded (SIGHUP): the agent must hold those events and resume by itself."""
    time.sleep(f.rng.uniform(0.5, 1.5))
    f.broker.write_file("acl", ACL_DENY_COUNT)
    f.broker.reload()
    try:
        time.sleep(f.rng.uniform(3.0, 5.0))
    finally:
        f.broker.write_file("acl", ACL_ALLOW_ALL)
        f.broker.reload()


IDLE_CONNECTIONS = 1100  # more than the agent's whole descriptor limit (`NOFILE`)
NOFILE = 1024  # what systemd gives a unit without LimitNOFILE=


def descriptor_flood(f: Faults) -> None:
    """More idle TCP connections to the webhook than the agent has descriptors, held for a
    while (a legitimate post is tried meanwhile), then closed."""
    time.sleep(f.rng.uniform(0.5, 1.0))
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE_CONNECTIONS):  # bounded; a refused connect counts as tried
            with contextlib.suppress(OSError):
                idle.append(socket.create_connection(("127.0.0.1", f.webhook_port), timeout=2))
        f.webhook_answers.append(post_completion(f.webhook_port, f"WO-{f.calls}"))
        time.sleep(f.rng.uniform(1.0, 2.0))
    finally:
        for connection in idle:
            connection.close()
    if f.agent.exit_code() is not None:
        raise RuntimeError(f"the agent died of the flood:\n{f.agent.log_text()[-3000:]}")


SIZE_LIMITS = ("max_packet_size 20000", "message_size_limit 4000")

SCENARIOS = {
    "steady (no fault)": Scenario(steady),
    "broker SIGKILL + restart, repeated": Scenario(broker_kills),
    "blackholed link (keepalive only)": Scenario(blackhole),
    "agent SIGKILL + restart, repeated": Scenario(agent_kills),
    "disk short (free space below the reserve), repeated": Scenario(
        disk_short, extra_buffer=reserve_below_free_space
    ),
    "state dir file system filled to the last byte, repeated": Scenario(
        disk_full, extra_buffer=lambda _root: "disk_free_reserve = 0",
        state_tmpfs_bytes=64 * 2**20,
    ),
    "descriptor exhaustion (1,100 idle webhook connections, RLIMIT_NOFILE 1024)":
        Scenario(descriptor_flood, webhook=True, nofile=NOFILE),
    "corrupt buffer file at start": Scenario(corrupt_at_start),
    "second agent on the same state dir, repeated": Scenario(second_agent),
    "broker max_packet_size 20000 + message_size_limit 4000": Scenario(
        steady, broker_options=SIZE_LIMITS
    ),
    "PUBACK stall (connection and keepalive alive, PUBACKs lost), repeated": Scenario(
        puback_stall, extra_hub=STALL_HUB, mqtt_proxy=True
    ),
    "broker ACL denies the business topic (0x87), then fixed (SIGHUP), repeated": Scenario(
        acl_denial, broker_options=("acl_file {workdir}/acl",),
        broker_files={"acl": ACL_ALLOW_ALL},
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="fault time per scenario")
    parser.add_argument("--rate", type=float, default=500.0, help="source ticks per second")
    parser.add_argument("--only", nargs="*", help="run only scenarios whose name contains these")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON results file")
    args = parser.parse_args()
    started = time.monotonic()
    results = about_the_run("partial" if args.only else "full")
    results.update(benchmark=report.DURABILITY.benchmark, seconds_per_scenario=args.seconds,
                   rate_hz=args.rate, events_per_tick=SIGNALS, scenarios=[])
    chosen = {
        name: scenario for name, scenario in SCENARIOS.items()
        if not args.only or any(word in name for word in args.only)
    }
    for name, scenario in chosen.items():
        print(f"{name} ...", file=sys.stderr, flush=True)
        try:
            figures = run_scenario(name, args.seconds, args.rate, scenario)
        except pytest.skip.Exception as skipped:  # small_tmpfs: not root, or no mount here
            figures = {"scenario": name, "skipped": skipped.msg}
        results["scenarios"].append(figures)
    results["seconds"] = time.monotonic() - started
    print(report.render_durability(results), end="")
    write(args.out, results)
    print(f"\n{results['seconds']:.0f} s; figures written to {args.out}")


if __name__ == "__main__":
    main()
