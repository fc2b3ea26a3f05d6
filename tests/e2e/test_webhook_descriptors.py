"""The real `edge-agent` process with a webhook source, started with a low descriptor limit
(RLIMIT_NOFILE 256, soft and hard), against more idle loopback connections than that limit.

The agent must stay up, lower the webhook's connection cap to keep its reserve (and say so),
answer a legitimate authenticated post (202, or 503 while over the cap; 202 once the idle
connections are gone), and keep forwarding a simulated counter's events to a real subscriber
meanwhile (each of its commits writes counters.json: it needs descriptors too)."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testkit.agent_process import REPO, AgentProcess
from testkit.broker import MosquittoBroker, Subscriber, free_loopback_port
from testkit.durability import EVENTS_TOPIC, agent_header, arrivals
from testkit.mes_http import completions_webhook_source, post_completion

pytestmark = pytest.mark.e2e

NOFILE = 256
IDLE_SOCKETS = 300  # more than the agent's whole descriptor limit
LIMIT_S = 30.0


class LimitedAgentProcess(AgentProcess):
    """`AgentProcess` started with RLIMIT_NOFILE set to `NOFILE` (soft and hard)."""

    def start(self) -> LimitedAgentProcess:
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "-c", str(self.config)],
                cwd=REPO, stdout=log, stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"},
                preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE)),
            )
        return self


def config_text(tmp_path: Path, hub_url: str, port: int) -> str:
    return agent_header(hub_url=hub_url, state_dir=tmp_path / "state") + """
[[sources]]
name = "sim"
type = "simulated"
rate_hz = 100

  [[sources.signals]]
  node = "count"
  waveform = "counter"
  event = "production.count"
  asset = "line1/sim"
""" + completions_webhook_source(port, tmp_path / "tokens")


def open_idle(port: int, count: int) -> list[socket.socket]:
    """Open `count` connections and send nothing on them; a connect the agent's side refuses
    (its accept queue is full) counts as tried, not as a failure of the test."""
    idle = []
    for _ in range(count):  # bounded: `count` connects, each with a timeout
        try:
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            pass
    return idle


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def events_of(subscriber: Subscriber, kind: str) -> list[dict[str, Any]]:
    return [a.event for a in arrivals(subscriber.messages) if a.event["type"].startswith(kind)]


def wait_for(condition: Callable[[], bool], agent: AgentProcess, what: str) -> None:
    deadline = time.monotonic() + LIMIT_S
    while not condition():
        assert alive(agent.pid), f"agent exited:\n{agent.log_text()[-4000:]}"
        assert time.monotonic() < deadline, f"{what} not within {LIMIT_S} s:\n" \
            f"{agent.log_text()[-4000:]}"
        time.sleep(0.1)


def test_more_idle_connections_than_descriptors_do_not_kill_the_agent(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < IDLE_SOCKETS + 64:
        pytest.skip("this test process itself may not open that many sockets")
    port = free_loopback_port()
    config = tmp_path / "agent.toml"
    config.write_text(config_text(tmp_path, broker.url, port))
    agent = LimitedAgentProcess(config, tmp_path / "agent.log")
    idle: list[socket.socket] = []
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        try:
            agent.start()
            agent.wait_log("running: 2 source(s)", timeout=30)
            agent.wait_log("webhook listening", timeout=30)
            assert "max_connections 256 lowered to 192" in agent.log_text()
            idle = open_idle(port, IDLE_SOCKETS)
            counted = len(events_of(subscriber, "production.count"))
            # Over the cap: a legitimate post is answered (503 at once, or taken: 202).
            assert post_completion(port, "WO-1") in (202, 503)
            wait_for(lambda: len(events_of(subscriber, "production.count")) > counted + 50,
                     agent, "counter events flowing while the webhook is flooded")
            for sock in idle:
                sock.close()
            idle = []
            statuses: list[int] = []

            def answered_202() -> bool:
                statuses.append(post_completion(port, "WO-2"))
                return statuses[-1] == 202

            wait_for(answered_202, agent, "a 202 once the idle connections are gone")
            wait_for(lambda: any(e["data"]["order"] == "WO-2"
                                 for e in events_of(subscriber, "workorder.completed")),
                     agent, "the posted work order at the hub")
            assert alive(agent.pid)
            assert agent.terminate() == 0
        finally:
            for sock in idle:
                sock.close()
            agent.ensure_stopped()
