"""The hub formats (`[hub] format`, `events.formats`) measured side by side, in one run.

For each format, `--events` telemetry events (the shape the mapping makes: a signal, a value, a
unit, an asset path; a fifth as many for the formats of one event per message, which are that
much slower: the rates are steady, a longer run changes them little) are appended to a fresh
SQLite buffer (the real `SqliteBuffer`),
then the real `Forwarder` drains them, unpaced, over a real `MqttSession` through a private
mosquitto to a subscriber that decodes every message (`events.formats.decode_message`), in a
process of its own (`--subscriber`), so the hub's side does not share the forwarder's
interpreter. Figures per format:

- events per message (the format's limit and `batch_max_events`);
- bytes per event on the wire: payload plus MQTT v5 properties (content type, user properties;
  binary mode carries its attributes there), topic and fixed header left out;
- encode µs per event: `WireFormat.encode` alone, on leased batches;
- drained events/s: from the forwarder's start to the last PUBACK recorded in the buffer (the
  ack rule's proof), and to the last event decoded at the subscriber (both clocks are
  `time.monotonic`, one system-wide clock on Linux);
- hub read µs per event with the official `cloudevents` SDK (`testkit.cloudevents_hub`), after
  the run, on the messages the subscriber received.

Run: `.venv/bin/python -m bench.wire_formats [--events 50000] [--quick] [--out FILE]`
(`--quick`: 5,000 events; about 25 s in all at the default, so `bench.run` includes it).
Printed, and written as JSON (`bench/results.wire_formats.json`, or `--out`); never asserted.
docs/performance.md, "Hub formats", is rendered from the committed
`bench/results.wire_formats.reference.json` (`bench.report`). Only loopback addresses; every
wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from agent.link.forwarder import Forwarder
from agent.link.mqtt_session import MqttSession
from bench.results import about_the_run, write
from buffer.base import Record
from buffer.sqlite import SqliteBuffer
from events.formats import FORMATS, FormatName, decode_message
from events.kinds import EventKind
from events.models import EVENT_TYPES, Event
from events.wire import AgentIdentity, encode_body
from testkit.broker import MosquittoBroker, ReceivedMessage, Subscriber
from testkit.cloudevents_hub import read_message

REPO = Path(__file__).resolve().parents[1]
IDENTITY = AgentIdentity(site="plant-a", agent="edge-01")
TOPIC_BASE = "mfg/plant-a/edge-01/events"
BATCH_MAX_EVENTS = 500  # `[hub] batch_max_events`' default
MAX_INFLIGHT = 16  # `[hub] max_inflight`' default
_NAMESPACE = uuid.UUID("6f1f3c5e-2b7a-4c1e-9a55-0d6a4f0e8b11")


def telemetry(n: int, at: datetime) -> Event:
    return Event(
        id=str(uuid.uuid5(_NAMESPACE, str(n))),
        type=EVENT_TYPES[EventKind.TELEMETRY],
        source="/plant-a/edge-01/line1",
        time=at + timedelta(milliseconds=n),
        subject=f"line1/filler{n % 50}",
        quality="good",
        status=None,
        data={"signal": f"ns=2;s=Line1.Filler{n % 50}.Temp", "value": 60 + (n % 997) / 10,
              "unit": "Cel"},
        extensions={"assetpath": f"acme/plant-a/packaging/line1/filler{n % 50}"},
    )


class DecodingSubscriber(Subscriber):
    """A `Subscriber` that decodes each message as it arrives and notes when the last came."""

    def __init__(self, broker: MosquittoBroker, topic_filter: str) -> None:
        super().__init__(broker, topic_filter)
        self.decoded = 0
        self.last_at = 0.0
        self.bytes = 0
        self.all_in = threading.Event()
        self.expected = 0

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        properties = getattr(message, "properties", None)
        users = [(str(k), str(v)) for k, v in getattr(properties, "UserProperty", None) or []]
        content_type = getattr(properties, "ContentType", None)
        events = decode_message(bytes(message.payload), content_type, users)
        self.decoded += len(events)
        self.last_at = time.monotonic()
        self.bytes += len(message.payload) + len(content_type or "") + sum(
            len(k) + len(v) for k, v in users
        )
        super()._on_message(client, userdata, message)
        if self.decoded >= self.expected:
            self.all_in.set()


async def _fill(buffer: SqliteBuffer, count: int) -> None:
    at = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
    for start in range(0, count, 2_000):
        records = []
        for n in range(start, min(count, start + 2_000)):
            event = telemetry(n, at)
            body = encode_body(event, site=IDENTITY.site, agent=IDENTITY.agent)
            records.append(Record(id=event.id, kind=event.type.name, priority=0, body=body))
        await buffer.append(records)


async def _encode_us(buffer: SqliteBuffer, name: FormatName) -> float:
    """`WireFormat.encode` alone, µs per event, over leased batches (then released)."""
    fmt = FORMATS[name]
    size = min(BATCH_MAX_EVENTS, fmt.max_events_per_message or BATCH_MAX_EVENTS)
    records = await buffer.lease(5_000)
    started = time.perf_counter()
    for start in range(0, len(records), size):
        fmt.encode(records[start : start + size], IDENTITY)
    seconds = time.perf_counter() - started
    buffer.rewind()
    return seconds / max(1, len(records)) * 1e6


def _subscriber(broker: MosquittoBroker, count: int) -> subprocess.Popen[str]:
    """The decoding subscriber in its own process, once it is subscribed."""
    hub = subprocess.Popen(
        [sys.executable, "-m", "bench.wire_formats", "--subscriber", str(broker.port),
         "--events", str(count)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    assert hub.stdout is not None
    if hub.stdout.readline().strip() != "subscribed":  # it exits if it cannot subscribe
        hub.kill()
        hub.wait(10)
        raise RuntimeError("the subscriber process did not subscribe")
    return hub


async def _measure(
    name: FormatName, count: int, broker: MosquittoBroker, work: Path,
    hub: subprocess.Popen[str],
) -> dict[str, Any]:
    try:
        async with SqliteBuffer.open(work / f"{name}.sqlite") as buffer:
            await _fill(buffer, count)
            encode_us = await _encode_us(buffer, name)
            session = MqttSession(host=broker.host, port=broker.port, client_id=f"bench-{name}")
            async with session:
                forwarder = Forwarder(
                    buffer, session, topic_base=TOPIC_BASE, identity=IDENTITY,
                    batch_max_events=BATCH_MAX_EVENTS, batch_max_wait_s=0.01,
                    max_inflight=MAX_INFLIGHT, wire_format=FORMATS[name],
                )
                started = time.monotonic()
                task = asyncio.create_task(forwarder.run())
                try:
                    acked_at = await _until_acked(buffer, count, started)
                finally:
                    await forwarder.drain(5)
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                messages = forwarder.counters.messages_published_total
        out, _ = await asyncio.to_thread(hub.communicate, timeout=300)
        if hub.returncode != 0:
            raise RuntimeError(f"{name}: the subscriber process failed ({hub.returncode})")
        seen = json.loads(out)
    finally:
        if hub.poll() is None:
            hub.kill()
            hub.wait(10)
    return {
        "format": name,
        "events": count,
        "messages": messages,
        "events_per_message": count / max(1, messages),
        "bytes_per_event": seen["bytes"] / count,
        "encode_us_per_event": encode_us,
        "acked_per_s": count / (acked_at - started),
        "decoded_per_s": count / (seen["last_at"] - started),
        "sdk_read_us_per_event": seen["sdk_read_us_per_event"],
    }


def _subscriber_main(port: int, count: int) -> int:
    """The hub's side, in its own process: decode until `count` events came (bounded), then
    read them all again with the SDK; one JSON line of figures on stdout."""
    broker = MosquittoBroker(port=port)  # the parent's, running: only its address is used
    subscriber = DecodingSubscriber(broker, f"{TOPIC_BASE}/#")
    subscriber.expected = count
    subscriber.start()
    print("subscribed", flush=True)
    try:
        if not subscriber.all_in.wait(max(120.0, count / 200)):
            print(f"{subscriber.decoded} of {count} events decoded", file=sys.stderr)
            return 1
        received = subscriber.messages
    finally:
        subscriber.stop()
    print(json.dumps({
        "decoded": subscriber.decoded, "last_at": subscriber.last_at, "bytes": subscriber.bytes,
        "sdk_read_us_per_event": _sdk_read_us(received, count),
    }), flush=True)
    return 0


async def _until_acked(buffer: SqliteBuffer, count: int, started: float) -> float:
    deadline = started + max(120.0, count / 200)
    while True:
        stats = await buffer.stats()
        if stats.pending == 0:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{stats.pending} of {count} events still pending")
        await asyncio.sleep(0.02)


def _sdk_read_us(messages: list[ReceivedMessage], count: int) -> float:
    started = time.perf_counter()
    for message in messages:
        users = getattr(message.properties, "UserProperty", None) or []
        read_message(message.topic, message.payload, message.content_type,
                     [(str(k), str(v)) for k, v in users])
    return (time.perf_counter() - started) / count * 1e6


def run_wire_formats(count: int, work: Path) -> list[dict[str, Any]]:
    """Every format, one after the other, through one private mosquitto."""
    results = []
    with MosquittoBroker(["max_queued_messages 0"]) as broker:
        for name, fmt in FORMATS.items():
            events = count if fmt.max_events_per_message is None else max(1_000, count // 5)
            print(f"hub formats: {name}, {events:,} events ...", file=sys.stderr, flush=True)
            hub = _subscriber(broker, events)
            results.append(asyncio.run(_measure(name, events, broker, work, hub)))
    return results


def print_table(results: list[dict[str, Any]]) -> None:
    print("\nHub formats: SQLite buffer → forwarder → mosquitto → decoding subscriber "
          f"(telemetry events; batch_max_events {BATCH_MAX_EVENTS}, max_inflight "
          f"{MAX_INFLIGHT})")
    print(f"{'format':<26} {'events':>7} {'ev/msg':>7} {'bytes/ev':>9} {'encode µs/ev':>13} "
          f"{'acked ev/s':>11} {'decoded ev/s':>13} {'SDK read µs/ev':>15}")
    for row in results:
        print(f"{row['format']:<26} {row['events']:>7,} {row['events_per_message']:>7.1f} "
              f"{row['bytes_per_event']:>9.0f} {row['encode_us_per_event']:>13.1f} "
              f"{row['acked_per_s']:>11,.0f} {row['decoded_per_s']:>13,.0f} "
              f"{row['sdk_read_us_per_event']:>15.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="5,000 events per format")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.wire_formats.json")
    parser.add_argument("--subscriber", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscriber:
        raise SystemExit(_subscriber_main(args.subscriber, args.events))
    count = args.events or (5_000 if args.quick else 50_000)
    started = time.monotonic()
    results: dict[str, Any] = {
        "benchmark": "bench.wire_formats", **about_the_run("quick" if args.quick else "full"),
        "batch_max_events": BATCH_MAX_EVENTS, "max_inflight": MAX_INFLIGHT,
    }
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as work:
        results["formats"] = run_wire_formats(count, Path(work))
    results["seconds"] = time.monotonic() - started
    print_table(results["formats"])
    write(args.out, results)
    print(f"\n{results['seconds']:.0f} s; figures written to {args.out}")


if __name__ == "__main__":
    main()
