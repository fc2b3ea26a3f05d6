"""The retained status always fits the broker's Maximum Packet Size (issue 13, item 6).

A real mosquitto with `max_packet_size 1200` (sent to the agent in CONNACK) and a real agent in
this loop with enough sources that its full status is larger than that: the retained status
still arrives, in a reduced form, and `edge-agent fleet`'s reader (`fleet_rows`) sees the agent
online with all its sources. The reduced forms themselves are checked without a broker.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli.fleet import fleet_rows
from agent.link.status import REDUCED_FORMS, reduced_status, snapshot
from agent.runtime import Agent
from config.loader import load_config
from testkit.broker import MosquittoBroker, ReceivedMessage, Subscriber
from testkit.commands import Requester
from testkit.durability import agent_header

STATUS_TOPIC = "mfg/plant-a/edge-01/status"
MAX_PACKET_SIZE = 1200
SOURCES = 6
WAIT_S = 30.0


def many_sources_config(tmp_path: Path, broker: MosquittoBroker) -> Path:
    sources = "".join(
        f"""
[[sources]]
name = "line-{n:02d}"
type = "simulated"
rate_hz = 2

  [[sources.signals]]
  node = "count"
  waveform = "counter"
  event = "production.count"
  asset = "line{n}/sim"
"""
        for n in range(1, SOURCES + 1)
    )
    path = tmp_path / "agent.toml"
    path.write_text(
        agent_header(hub_url=broker.url, state_dir=tmp_path / "state") + sources
    )
    return path


async def until(condition: Callable[[], bool], what: str, limit_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for: {what}")
        await asyncio.sleep(0.05)


def retained_online(message: ReceivedMessage) -> bool:
    return message.retain and json.loads(message.payload).get("state") == "online"


async def test_a_status_over_the_broker_packet_size_is_published_compact_and_fleet_sees_it(
    tmp_path: Path,
) -> None:
    with MosquittoBroker([f"max_packet_size {MAX_PACKET_SIZE}"]) as broker:
        config = load_config(many_sources_config(tmp_path, broker))
        stop = asyncio.Event()
        async with Agent.open(config) as agent:
            task = asyncio.create_task(agent.run(stop))
            try:
                await until(lambda: agent.session.connected, "hub connected")
                await until(
                    lambda: all(r.connector.health.connected for r in agent.sources),
                    "every source connected",
                )
                agent.status.changed()  # the sources came up: publish (rate limited, bounded)
                await until(lambda: agent.status.published_total >= 2, "a status published")
                full_size = len(json.dumps(await snapshot(agent), separators=(",", ":")))
                # A hub tool that starts now gets the retained status from the broker.
                with Subscriber(broker, STATUS_TOPIC) as subscriber:
                    [message] = await subscriber.wait_for_async(retained_online, WAIT_S)
                assert agent.session.max_packet_size == MAX_PACKET_SIZE
                # Asked for its status, the agent answers in a form that fits too.
                with Requester(broker) as hub:
                    answer = await hub.ask_async("status")
            finally:
                stop.set()
                await asyncio.wait_for(task, timeout=WAIT_S)
    assert answer["ok"] is True, answer
    assert answer["result"]["form"] in REDUCED_FORMS
    assert answer["result"]["sources_summary"]["total"] == SOURCES
    assert full_size > MAX_PACKET_SIZE, "the full status would not fit: the case is real"
    document = json.loads(message.payload)
    assert document["form"] in REDUCED_FORMS
    assert document["details"] == "mfg/plant-a/edge-01/cmd/status"
    assert document["sources_summary"] == {"total": SOURCES, "up": SOURCES, "paused": 0}
    [row] = fleet_rows({"plant-a/edge-01": document}, behind_s=300)
    assert row["state"] == "online"
    assert "HUB DOWN" not in row["flags"] and "STALE" not in row["flags"], row
    assert document["form"] == "compact", "6 sources fit in compact form at 1200 bytes"
    assert (row["sources_up"], row["sources_total"]) == (SOURCES, SOURCES)
    assert set(row["backlog"]) == {"telemetry", "business", "critical"}


def large_status(sources: int, *, down: int = 0) -> dict[str, Any]:
    """A full status document of the shape `agent.link.status.snapshot` makes."""
    return {
        "state": "online", "site": "plant-a", "agent": "edge-01", "version": "1.0.0",
        "at": "2026-11-26T14:00:00.000+00:00", "started_at": "2026-11-26T13:00:00+00:00",
        "uptime_s": 3600.0, "config_fingerprint": "0123456789abcdef", "interval_s": 30.0,
        "sources": {
            f"source-with-a-long-name-{n:04d}": {
                "state": "retrying" if n < down else "running",
                "connected": n >= down,
                "readings_total": 123456,
                "last_value_at": "2026-11-26T14:00:00+00:00",
                "last_error": "connection refused" if n < down else None,
                "signal_errors": {}, "disconnected_at": None, "reconnected_at": None,
                "notices": {}, "counters": {},
            }
            for n in range(sources)
        },
        "buffer": {
            "pending": 5, "oldest_pending_age_s": 1.5, "last_seq": 99, "dead_letters": 0,
            "file_bytes": 4096,
            "classes": {
                name: {"pending": 1, "oldest_pending_age_s": 1.5, "evictions": 0}
                for name in ("telemetry", "business", "critical")
            },
        },
        "pipeline": {"backpressure": False},
        "forwarder": {
            "connected": True, "last_puback_at": "2026-11-26T14:00:00+00:00",
            "events_per_s": 10.0, "paused_lanes": [], "events_forwarded_total": 5,
        },
        "commands": {},
    }


@pytest.mark.parametrize("form", REDUCED_FORMS)
def test_every_reduced_form_keeps_what_fleet_reads(form: str) -> None:
    document = large_status(200, down=3)
    reduced = reduced_status(document, form, details="mfg/plant-a/edge-01/cmd/status")
    [row] = fleet_rows({"plant-a/edge-01": reduced}, behind_s=300, now=1795701601.0)
    assert row["state"] == "online"
    assert "HUB DOWN" not in row["flags"] and "STALE" not in row["flags"], row
    assert reduced["sources_summary"] == {"total": 200, "up": 197, "paused": 0}
    size = len(json.dumps(reduced, separators=(",", ":")))
    # fleet counts from the summary, whatever the form lists.
    assert (row["sources_up"], row["sources_total"]) == (197, 200)
    assert "SOURCE DOWN" in row["flags"]
    if form == "summary":  # only the sources fleet must flag
        assert set(reduced["sources"]) == {f"source-with-a-long-name-{n:04d}" for n in range(3)}
        assert "SOURCE DOWN" in row["flags"]
    if form == "minimal":
        assert size < 400, size


def test_an_unknown_form_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown status form 'tiny'"):
        reduced_status(large_status(1), "tiny", details="x")
