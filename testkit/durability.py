"""Durability checks shared by the fault tests and `bench/durability.py`.

`simulated_agent_config` writes a config for a fast simulated source; `DeliveryReport` compares
what the buffer accepted with what reached the hub, as a consumer that de-duplicates by id would.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buffer.sqlite import ID_TEXT_SQL
from testkit.broker import MosquittoBroker, ReceivedMessage, Subscriber
from testkit.events import decode_message_of

EVENTS_TOPIC = "mfg/plant-a/edge-01/events/#"


def agent_header(
    *, hub_url: str, state_dir: Path, grace_s: float = 5.0, extra_hub: str = "",
    buffer: str = "",
) -> str:
    """The [agent], [hub] and [buffer] sections the fault and MES tests share: quick
    reconnects and batches, no periodic status; `extra_hub` and `buffer` add lines."""
    return f"""
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "{state_dir}"
shutdown_grace_s = {grace_s}

[hub]
url = "{hub_url}"
topic_prefix = "mfg"
keepalive_s = 5
connect_timeout_s = 2
reconnect_min_s = 0.1
reconnect_max_s = 0.5
batch_max_wait_ms = 10
status_interval_s = 3600
{extra_hub}

[buffer]
retention_s = 3600
backlog_max_rate = 50000
backlog_start_delay_max_s = 0.2
{buffer}
"""


def simulated_agent_config(
    *,
    hub_url: str,
    state_dir: Path,
    rate_hz: float = 200.0,
    extra_buffer: str = "",
    extra_hub: str = "",
    grace_s: float = 5.0,
) -> str:
    """A complete agent config: one simulated source, a counter and a sine, at `rate_hz`."""
    return agent_header(
        hub_url=hub_url, state_dir=state_dir, grace_s=grace_s, extra_hub=extra_hub,
        buffer=extra_buffer,
    ) + f"""
[[sources]]
name = "sim"
type = "simulated"
rate_hz = {rate_hz}

  [[sources.signals]]
  node = "count"
  waveform = "counter"
  event = "production.count"
  asset = "line1/sim"

  [[sources.signals]]
  node = "temp"
  waveform = "sine"
  event = "telemetry"
  asset = "line1/sim"
  unit = "Cel"
"""


def accepted(path: Path) -> dict[str, tuple[int, float]]:
    """id -> (seq, accepted_at) of every event the buffer file holds."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute(f"SELECT {ID_TEXT_SQL}, seq, accepted_at FROM events").fetchall()
    return {str(i): (int(s), float(a)) for i, s, a in rows}


def last_seq(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        (value,) = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
    return int(value)


def dead_letter_seqs(path: Path) -> set[int]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT seq FROM dead_letters WHERE seq IS NOT NULL")
        return {int(row[0]) for row in rows}


def user_property(message: ReceivedMessage, name: str) -> str | None:
    for key, value in getattr(message.properties, "UserProperty", None) or []:
        if key == name:
            return str(value)
    return None


@dataclass
class Arrival:
    event: dict[str, Any]
    backlog: bool
    replay: bool
    at: float


@dataclass
class DeliveryReport:
    """What the hub got, against what the buffer accepted."""

    accepted: int
    delivered: int
    lost: list[int]
    duplicated: int
    seq_gaps: list[int]
    out_of_order: list[tuple[str, int, int]]
    conflicting: list[str] = field(default_factory=list)
    max_delay_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.seq_gaps or self.out_of_order or self.conflicting)

    def describe(self) -> str:
        return (
            f"accepted {self.accepted}, delivered {self.delivered}, lost {len(self.lost)} "
            f"(first seqs {self.lost[:10]}), duplicated {self.duplicated}, seq gaps "
            f"{self.seq_gaps[:10]}, out of order {self.out_of_order[:5]}, conflicting ids "
            f"{self.conflicting[:5]}"
        )


class TimedSubscriber(Subscriber):
    """A `Subscriber` that also notes when each message arrived (for delivery delays)."""

    def __init__(self, broker: MosquittoBroker, topic_filter: str = EVENTS_TOPIC) -> None:
        super().__init__(broker, topic_filter)
        self.received_at: list[float] = []

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._condition:
            self.received_at.append(time.time())
        super()._on_message(client, userdata, message)

    def snapshot(self) -> tuple[list[ReceivedMessage], list[float]]:
        with self._condition:
            return list(self._messages), list(self.received_at)


def arrivals(
    messages: Iterable[ReceivedMessage], received_at: Sequence[float] = ()
) -> list[Arrival]:
    result: list[Arrival] = []
    for index, message in enumerate(messages):
        if "/events/" not in message.topic:
            continue
        backlog = user_property(message, "backlog") == "true"
        replay = user_property(message, "replay") == "true"
        at = received_at[index] if index < len(received_at) else time.time()
        for event in decode_message_of(message):  # any hub format
            assert message.topic.endswith("/events/" + event["type"]), (message.topic, event)
            result.append(Arrival(event, backlog, replay, at))
    return result


def check_delivery(
    buffer_file: Path,
    messages: Sequence[ReceivedMessage],
    *,
    received_at: Sequence[float] = (),
    exempt_seqs: Iterable[int] = (),
) -> DeliveryReport:
    """Every accepted event delivered (after de-duplication by id), `seq` 1..last_seq without a
    gap, and within each lane the events of one source and type in `seq` order."""
    held = accepted(buffer_file)
    top = last_seq(buffer_file)
    exempt = set(exempt_seqs) | dead_letter_seqs(buffer_file)
    first: dict[str, Arrival] = {}
    conflicting: list[str] = []
    total = 0
    for arrival in arrivals(messages, received_at):
        total += 1
        event = arrival.event
        seen = first.setdefault(event["id"], arrival)
        if seen is not arrival and (
            seen.event["seq"] != event["seq"] or seen.event.get("data") != event.get("data")
        ):
            conflicting.append(event["id"])
    delivered_seqs = {a.event["seq"] for a in first.values()}
    lost = sorted(seq for _id, (seq, _at) in held.items() if _id not in first)
    gaps = sorted(set(range(1, top + 1)) - delivered_seqs - exempt)
    # Order: first arrivals, per (source, type, lane), must come in seq order.
    last: dict[tuple[str, str, bool], int] = {}
    out_of_order: list[tuple[str, int, int]] = []
    for arrival in first.values():  # dict order is first-arrival order
        key = (str(arrival.event.get("source", "")), str(arrival.event["type"]), arrival.backlog)
        seq = arrival.event["seq"]
        if key in last and seq < last[key]:
            out_of_order.append((f"{key[0]} {key[1]} backlog={key[2]}", last[key], seq))
        last[key] = max(seq, last.get(key, 0))
    delays = [
        a.at - held[i][1] for i, a in first.items() if i in held and not a.replay
    ]
    return DeliveryReport(
        accepted=len(held),
        delivered=len(first),
        lost=lost,
        duplicated=total - len(first),
        seq_gaps=gaps,
        out_of_order=out_of_order,
        conflicting=conflicting,
        max_delay_s=max(delays, default=0.0),
    )
