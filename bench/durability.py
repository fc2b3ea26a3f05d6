"""Durability, measured: the real agent process under faults, at a steady rate, for a bounded
time per scenario. Prints one table row per scenario:

    scenario | produced | accepted | delivered | lost | duplicated | max delivery delay

- produced: events the simulated source generated over the run (its ticks from the first to
  the last accepted one, times its signals; ticks while the agent was down count too: a plant
  does not stop when its agent does).
- accepted: events committed to the buffer (rows with a seq); lost: accepted but never at the
  hub after de-duplication by id; duplicated: arrivals of an id already seen; delay: arrival
  at the hub minus acceptance, worst case.

Run: `.venv/bin/python -m bench.durability [--seconds 15] [--rate 500]`. Figures are printed,
never asserted (the tests assert the guarantees).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.agent_process import AgentProcess
from tests.support.blackhole import TcpProxy
from tests.support.broker import MosquittoBroker
from tests.support.durability import (
    TimedSubscriber,
    accepted,
    arrivals,
    check_delivery,
    simulated_agent_config,
)

SIGNALS = 2
RUNNING = "running: 1 source(s)"


class Faults:
    """What a scenario may break, and the subscriber that must be back before the agent is."""

    def __init__(
        self, agent: AgentProcess, broker: MosquittoBroker, proxy: TcpProxy,
        subscriber: TimedSubscriber, rng: random.Random,
    ) -> None:
        self.agent, self.broker, self.proxy = agent, broker, proxy
        self.subscriber, self.rng = subscriber, rng


def run_scenario(
    name: str, seconds: float, rate_hz: float, fault: Callable[[Faults], None]
) -> list[str]:
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as work, MosquittoBroker() as broker:
        root = Path(work)
        with TcpProxy(broker.port) as proxy:
            subscriber = TimedSubscriber(broker).start()
            config = root / "agent.toml"
            config.write_text(
                simulated_agent_config(hub_url=proxy.url, state_dir=root / "state", rate_hz=rate_hz)
            )
            agent = AgentProcess(config, root / "agent.log").start()
            try:
                agent.wait_log(RUNNING, timeout=30)
                faults = Faults(agent, broker, proxy, subscriber, rng)
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    fault(faults)
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
            finally:
                agent.ensure_stopped()
            messages, received_at = subscriber.snapshot()
            subscriber.stop()
        report = check_delivery(buffer_file, messages, received_at=received_at)
        ticks = sorted(
            int(a.event["data"]["count"]) for a in arrivals(messages)
            if a.event["type"] == "production.count.v1"
        )
        made = (ticks[-1] - ticks[0] + 1) * SIGNALS if ticks else 0
    return [
        name, str(made), str(report.accepted), str(report.delivered), str(len(report.lost)),
        str(report.duplicated), f"{report.max_delay_s:.2f} s",
    ]


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


SCENARIOS = {
    "steady (no fault)": steady,
    "broker SIGKILL + restart, repeated": broker_kills,
    "blackholed link (keepalive only)": blackhole,
    "agent SIGKILL + restart, repeated": agent_kills,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="fault time per scenario")
    parser.add_argument("--rate", type=float, default=500.0, help="source ticks per second")
    args = parser.parse_args()
    header = ["scenario", "produced", "accepted", "delivered", "lost", "duplicated",
              "max delivery delay"]
    rows = [run_scenario(name, args.seconds, args.rate, fault) for name, fault in SCENARIOS.items()]
    print(f"| {' | '.join(header)} |")
    print(f"|{'|'.join('---' for _ in header)}|")
    for row in rows:
        print(f"| {' | '.join(row)} |")


if __name__ == "__main__":
    main()
