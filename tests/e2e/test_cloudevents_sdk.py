"""Each hub format (`[hub] format`), end to end, read at the hub only with the official
`cloudevents` SDK and the published schemas (`testkit.cloudevents_hub`, which imports nothing of
ours): the real `edge-agent` process with a simulated source, a real mosquitto, the real SQLite
buffer, and `edge-agent buffer replay` after it stopped.

Per format, the guarantees a hub relies on: every accepted event arrives, as a valid CloudEvent
that validates against its type's published JSON Schema; `seq` runs 1..last_seq without a gap;
nothing is left pending once delivered (acked on PUBACK); what was accepted before the first
connection comes in `backlog=true` messages and what came after in live ones; a replay resends
the same ids and seqs with `replay=true`; the binding modes carry one event per message, and in
binary mode the delivery properties never collide with an attribute. (A single event too large
for the broker is dead-lettered in every format: tests/integration/test_forwarder.py.)
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from testkit.agent_process import REPO, AgentProcess
from testkit.blackhole import TcpProxy
from testkit.broker import MosquittoBroker, Subscriber
from testkit.cloudevents_hub import HubMessage, json_form, read_message
from testkit.durability import EVENTS_TOPIC, accepted, last_seq, simulated_agent_config

CONTRACTS = REPO / "tests" / "contracts"
RUNNING = "running: 1 source(s)"
# The MQTT content type a hub sees, per format (docs/hub-contract.md, "Formats").
CONTENT_TYPES = {
    "cloudevents-batch-msgpack": "application/cloudevents-batch+msgpack",
    "cloudevents-batch-json": "application/cloudevents-batch+json",
    "cloudevents-structured": "application/cloudevents+json",
    "cloudevents-binary": "application/json",
}
ONE_EVENT_PER_MESSAGE = {"cloudevents-structured", "cloudevents-binary"}


@cache
def published_schema(event_type: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CONTRACTS / f"{event_type}.schema.json").read_text())
    return schema


class HubView:
    """What the hub read so far: each message read once, in arrival order."""

    def __init__(self, subscriber: Subscriber) -> None:
        self._subscriber = subscriber
        self.messages: list[HubMessage] = []

    def read(self) -> list[HubMessage]:
        for message in self._subscriber.messages[len(self.messages) :]:
            properties = getattr(message.properties, "UserProperty", None) or []
            self.messages.append(read_message(
                message.topic, message.payload, message.content_type,
                [(str(name), str(value)) for name, value in properties],
            ))
        return self.messages

    def ids(self, start: int = 0) -> set[str]:
        return {event.get_id() for message in self.read()[start:] for event in message.events}


def wait(condition: Callable[[], bool], what: str, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
        time.sleep(0.05)


def pending(buffer_file: Path) -> int:
    with sqlite3.connect(f"file:{buffer_file}?mode=ro", uri=True) as db:
        (count,) = db.execute("SELECT count(*) FROM events WHERE acked_at IS NULL").fetchone()
    return int(count)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], cwd=REPO, capture_output=True, text=True,
        timeout=60,
    )


@pytest.mark.parametrize("wire_format", sorted(CONTENT_TYPES))
def test_a_standard_consumer_reads_every_event_in_each_format(
    tmp_path: Path, broker: MosquittoBroker, wire_format: str
) -> None:
    config = tmp_path / "agent.toml"
    buffer_file = tmp_path / "state" / "buffer.sqlite"
    agent = AgentProcess(config, tmp_path / "agent.log")
    with TcpProxy(broker.port) as proxy, Subscriber(broker, EVENTS_TOPIC) as subscriber:
        hub = HubView(subscriber)
        config.write_text(simulated_agent_config(
            hub_url=proxy.url, state_dir=tmp_path / "state", rate_hz=50,
            extra_hub=f'format = "{wire_format}"',
            # Room for the drain on a loaded machine: a stop that runs out of grace rightly
            # leaves unacknowledged events for the next start, which this test is not about.
            grace_s=20.0,
        ))
        proxy.refuse()  # the hub is unreachable at first: a backlog builds up
        try:
            agent.start()
            agent.wait_log(RUNNING, timeout=30)
            wait(lambda: buffer_file.exists() and last_seq(buffer_file) >= 20, "20 accepted")
            before_connect = last_seq(buffer_file)  # accepted before any connection
            proxy.forward()
            wait(lambda: any(not m.backlog for m in hub.read()), "a live message")
            assert agent.terminate(timeout=90) == 0, agent.log_text()
        finally:
            agent.ensure_stopped()
        held = accepted(buffer_file)
        top = last_seq(buffer_file)
        wait(lambda: hub.ids() >= set(held), "every accepted event at the hub")
        assert pending(buffer_file) == 0, "delivered events are acked (PUBACK)"
        first = len(hub.read())
        telemetry = {
            event.get_id() for message in hub.messages for event in message.events
            if event.get_type() == "telemetry.v1"
        }
        assert telemetry, "the simulated source makes telemetry"

        replayed = cli(
            "buffer", "replay", "-c", str(config), "--since", "1h", "--type", "telemetry"
        )
        assert replayed.returncode == 0, replayed.stderr
        wait(lambda: hub.ids(first) >= telemetry, "the replay")

    messages = hub.read()
    seqs: dict[str, int] = {}
    for message in messages:
        assert message.content_type == CONTENT_TYPES[wire_format], message.content_type
        assert message.binary == (wire_format == "cloudevents-binary")
        if wire_format in ONE_EVENT_PER_MESSAGE:
            assert len(message.events) == 1
        for event in message.events:
            schema = published_schema(event.get_type())
            form = json_form(event, schema)
            jsonschema.validate(form, schema)
            assert message.topic.endswith(f"/events/{form['type']}")
            assert form["datacontenttype"] == "application/json"
            assert form["partitionkey"] == "plant-a/edge-01"
            assert held[form["id"]][0] == form["seq"], "the seq the buffer accepted it with"
            assert seqs.setdefault(form["id"], form["seq"]) == form["seq"]
            if message.binary:  # the delivery properties are never read as attributes
                assert not {"backlog", "replay"} & set(event.get_attributes())
    assert sorted(seqs.values()) == list(range(1, top + 1)), "seq without a gap"

    delivered, replays = messages[:first], messages[first:]
    backlog_seqs = {
        json_form(event, published_schema(event.get_type()))["seq"]
        for message in delivered if message.backlog for event in message.events
    }
    assert set(range(1, before_connect + 1)) <= backlog_seqs, "accepted before: backlog lane"
    assert any(not m.backlog for m in delivered), "accepted after: live lane"
    assert not any(m.replay for m in delivered)
    assert replays and all(m.replay and not m.backlog for m in replays)
    assert {e.get_id() for m in replays for e in m.events} == telemetry
