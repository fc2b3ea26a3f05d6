"""Sparkplug B 3.0 output, end to end: a real agent (in process, or the real `edge-agent`
process for SIGKILL) with a simulated source, a real mosquitto, and at the hub's side an
INDEPENDENT Sparkplug decoder: the protobuf wire format read by hand below from the field
numbers of the Sparkplug 3.0 specification (chapter 6), not the agent's generated
`sparkplug_b_pb2` code. The normative statements these tests check are listed in
docs/sparkplug.md ("What is tested").

The hub subscribes at QoS 0: the broker then forwards every message at QoS 0 in the order it
received them (a QoS 1 subscription lets mosquitto hold QoS 1 messages in its in-flight window
while QoS 0 ones pass, which would reorder births and data in what the test sees).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.runtime import Agent
from config.loader import load_config
from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker, ReceivedMessage, Subscriber
from testkit.tcp_proxy import TcpProxy

GROUP, NODE = "plant-a", "edge-01"
NODE_TOPIC = f"spBv1.0/{GROUP}/{{}}/{NODE}"
DOUBLE, BOOLEAN, INT64 = 10, 11, 4
HOST_ID = "scada"
STATE_TOPIC = f"spBv1.0/STATE/{HOST_ID}"
WAIT_S = 20.0


# -- the independent decoder (protobuf wire format, by hand) -----------------------------


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):  # a varint has at most 10 bytes
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at
    raise ValueError("varint longer than 10 bytes")


def _fields(data: bytes) -> list[tuple[int, Any]]:
    """(field number, value) of one message: an int (varint, fixed), or bytes (length)."""
    fields: list[tuple[int, Any]] = []
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 1:
            value, at = data[at : at + 8], at + 8
        elif wire == 2:
            size, at = _varint(data, at)
            value, at = data[at : at + size], at + size
        elif wire == 5:
            value, at = data[at : at + 4], at + 4
        else:
            raise ValueError(f"wire type {wire}")
        fields.append((number, value))
    return fields


@dataclass
class Metric:
    name: str | None = None
    alias: int | None = None
    timestamp: int | None = None
    datatype: int | None = None
    historical: bool = False
    is_null: bool = False
    value: Any = None
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class Payload:
    timestamp: int | None = None
    seq: int | None = None
    metrics: list[Metric] = field(default_factory=list)

    def metric(self, name: str) -> Metric:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise AssertionError(f"no metric {name!r} in {[m.name for m in self.metrics]}")


def _property_set(data: bytes) -> dict[str, Any]:
    keys: list[str] = []
    values: list[Any] = []
    for number, value in _fields(data):
        if number == 1:
            keys.append(value.decode())
        elif number == 2:
            inner = dict(_fields(value))
            values.append(inner[8].decode() if 8 in inner else inner.get(4))
    return dict(zip(keys, values, strict=True))


def _metric(data: bytes) -> Metric:
    metric = Metric()
    for number, value in _fields(data):
        if number == 1:
            metric.name = value.decode()
        elif number == 2:
            metric.alias = value
        elif number == 3:
            metric.timestamp = value
        elif number == 4:
            metric.datatype = value
        elif number == 5:
            metric.historical = bool(value)
        elif number == 7:
            metric.is_null = bool(value)
        elif number == 9:
            metric.properties = _property_set(value)
        elif number in (10, 11):
            metric.value = value
        elif number == 13:
            metric.value = struct.unpack("<d", value)[0]
        elif number == 14:
            metric.value = bool(value)
        elif number == 15:
            metric.value = value.decode()
    return metric


def decode(data: bytes) -> Payload:
    payload = Payload()
    for number, value in _fields(data):
        if number == 1:
            payload.timestamp = value
        elif number == 2:
            payload.metrics.append(_metric(value))
        elif number == 3:
            payload.seq = value
    return payload


def rebirth_command() -> bytes:
    """An NCMD payload, by hand: one metric `Node Control/Rebirth` Boolean true."""
    name = b"Node Control/Rebirth"
    metric = b"\x0a" + bytes((len(name),)) + name + b"\x20\x0b" + b"\x70\x01"
    return (
        b"\x08" + _encode_varint(int(time.time() * 1000)) + b"\x12" + bytes((len(metric),)) + metric
    )


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# -- the hub's view ------------------------------------------------------------------------


@dataclass
class Message:
    kind: str  # NBIRTH, DDATA, ...
    device: str | None
    payload: Payload


def parse(received: ReceivedMessage) -> Message:
    parts = received.topic.split("/")
    assert parts[0] == "spBv1.0" and parts[1] == GROUP and parts[3] == NODE, received.topic
    device = parts[4] if len(parts) > 4 else None
    return Message(parts[2], device, decode(received.payload))


def messages(hub: Subscriber) -> list[Message]:
    """What the edge node published (the STATE and NCMD the test sent left out)."""
    parsed = [parse(m) for m in hub.messages if not m.topic.startswith("spBv1.0/STATE/")]
    return [m for m in parsed if m.kind != "NCMD"]


async def marker_seen(hub: Subscriber, broker: MosquittoBroker) -> None:
    """Publish an NCMD that asks nothing and wait for it at the hub: whatever the broker took
    before it has reached the hub by then (one broker, QoS 0, in order)."""
    publish_command(broker, b"")
    await hub.wait_for_async(lambda m: m.topic == NODE_TOPIC.format("NCMD"), timeout=WAIT_S)


async def wait_messages(
    hub: Subscriber, done: Callable[[list[Message]], bool], what: str
) -> list[Message]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        seen = messages(hub)
        if done(seen):
            return seen
        await asyncio.sleep(0.05)
    kinds = [(m.kind, m.device, m.payload.seq) for m in messages(hub)][-30:]
    raise AssertionError(f"not within {WAIT_S} s: {what}; last messages: {kinds}")


def bdseq(message: Message) -> int:
    value = message.payload.metric("bdSeq").value
    assert isinstance(value, int)
    return value


def check_session(session: list[Message]) -> None:
    """What one NBIRTH and the messages after it (up to the next NBIRTH or NDEATH) must be:
    seq 0 then +1 mod 256; a DBIRTH of a device before its DDATA; every DDATA alias declared
    by the device's DBIRTH, with its datatype; aliases unique in the node."""
    birth = session[0]
    assert birth.kind == "NBIRTH" and birth.payload.seq == 0
    assert birth.payload.metric("bdSeq").datatype == INT64
    rebirth = birth.payload.metric("Node Control/Rebirth")
    assert (rebirth.datatype, rebirth.value) == (BOOLEAN, False)
    owners: dict[int, str] = {}
    for metric in birth.payload.metrics:
        assert metric.alias is not None and owners.setdefault(metric.alias, str(metric.name))
    declared: dict[str, dict[int, Metric]] = {}
    for message in session:
        assert message.payload.timestamp, f"{message.kind} without a payload timestamp"
        assert all(metric.timestamp for metric in message.payload.metrics)
    for previous, message in itertools.pairwise(session):
        assert message.payload.seq == ((previous.payload.seq or 0) + 1) % 256, (
            f"seq {message.payload.seq} after {previous.payload.seq}"
        )
        assert message.device is not None
        if message.kind == "DBIRTH":
            declared[message.device] = {}
            for metric in message.payload.metrics:
                assert metric.name and metric.alias is not None and metric.datatype
                assert owners.setdefault(metric.alias, f"{message.device}/{metric.name}") == (
                    f"{message.device}/{metric.name}"
                ), "alias reused for another metric"
                declared[message.device][metric.alias] = metric
        else:
            assert message.kind == "DDATA", message.kind
            assert message.device in declared, f"DDATA of {message.device} before its DBIRTH"
            for metric in message.payload.metrics:
                assert metric.name is None, "DDATA names metrics by alias only"
                assert metric.datatype is None, "DDATA leaves the datatype to the DBIRTH"
                birth_metric = declared[message.device].get(metric.alias or -1)
                assert birth_metric is not None, f"alias {metric.alias} not in the DBIRTH"
                if birth_metric.datatype == DOUBLE and not metric.is_null:
                    assert isinstance(metric.value, float)


def data_metrics(seen: list[Message]) -> list[Metric]:
    return [metric for m in seen if m.kind == "DDATA" for metric in m.payload.metrics]


def sessions(seen: list[Message]) -> list[list[Message]]:
    """The stream cut at each NBIRTH (NDEATHs left out)."""
    cut: list[list[Message]] = []
    for message in seen:
        if message.kind == "NBIRTH":
            cut.append([message])
        elif message.kind != "NDEATH" and cut:
            cut[-1].append(message)
    return cut


# -- the agent ------------------------------------------------------------------------------


def write_config(
    tmp_path: Path, port: int, *, primary_host: bool = False, rate_hz: float = 50.0
) -> Path:
    path = tmp_path / "agent.toml"
    host = f'primary_host_id = "{HOST_ID}"' if primary_host else ""
    path.write_text(f"""
[agent]
site = "{GROUP}"
id = "{NODE}"
state_dir = "{tmp_path / "state"}"
shutdown_grace_s = 5

[hub]
url = "mqtt://127.0.0.1:{port}"
reconnect_min_s = 0.2
reconnect_max_s = 0.5
batch_max_events = 4
batch_max_wait_ms = 10
session_expiry_s = 0

[sparkplug]
enabled = true
{host}

[[sources]]
name = "sim"
type = "simulated"
rate_hz = {rate_hz}

[[sources.signals]]
node = "temperature"
waveform = "sine"
event = "telemetry"
asset = "line1/filler"
unit = "Cel"

[[sources.signals]]
node = "counter"
event = "production.count"
asset = "line1/filler"

[[sources.signals]]
node = "pressure"
waveform = "sine"
event = "telemetry"
asset = "line2/capper"
unit = "bar"
""")
    return path


@asynccontextmanager
async def running_agent(config_file: Path) -> AsyncIterator[Agent]:
    stop = asyncio.Event()
    async with Agent.open(load_config(config_file)) as agent:
        task = asyncio.create_task(agent.run(stop))
        try:
            yield agent
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)


def hub(broker: MosquittoBroker) -> Subscriber:
    return Subscriber(broker, "spBv1.0/#", qos=0)


def publish_state(broker: MosquittoBroker, online: bool, timestamp: int) -> None:
    """The Primary Host's STATE (3.0: retained JSON), from a client of its own."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(
            STATE_TOPIC, json.dumps({"online": online, "timestamp": timestamp}), 1, retain=True
        )
        info.wait_for_publish(timeout=5)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def publish_command(broker: MosquittoBroker, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        info = client.publish(NODE_TOPIC.format("NCMD"), payload, 1)
        info.wait_for_publish(timeout=5)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


# -- the tests ------------------------------------------------------------------------------


async def test_births_aliases_units_seq_wrap_and_clean_ndeath(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    with hub(broker) as subscriber:
        async with running_agent(write_config(tmp_path, broker.port, rate_hz=100)):
            # More than 256 messages after the NBIRTH: seq wraps from 255 to 0.
            seen = await wait_messages(
                subscriber, lambda seen: len(seen) > 300, "300 Sparkplug messages"
            )
        seen = await wait_messages(
            subscriber, lambda seen: seen[-1].kind == "NDEATH", "the NDEATH of a clean stop"
        )
    first = seen[0]
    assert first.kind == "NBIRTH" and first.payload.seq == 0
    assert bdseq(first) == 0  # a new state dir: the first bdSeq
    [session] = sessions(seen)
    check_session(session)
    assert any(m.payload.seq == 255 for m in session) and session[-1].payload.seq != 255
    assert {m.device for m in session if m.kind == "DBIRTH"} == {"line1:filler", "line2:capper"}
    # The units as `engUnit` properties, the telemetry named after its signal, Double.
    filler = next(m for m in session if m.kind == "DBIRTH" and m.device == "line1:filler")
    temperature = filler.payload.metric("temperature")
    assert temperature.datatype == DOUBLE and temperature.properties == {"engUnit": "Cel"}
    assert filler.payload.metric("production.count/counter/count").datatype == DOUBLE
    # The NDEATH of a clean stop carries the bdSeq of the connection's NBIRTH.
    assert seen[-1].kind == "NDEATH" and bdseq(seen[-1]) == bdseq(first)
    assert seen[-1].payload.seq is None
    assert [m.name for m in seen[-1].payload.metrics] == ["bdSeq"]


async def test_ncmd_rebirth_is_answered_with_a_new_birth_sequence(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    with hub(broker) as subscriber:
        async with running_agent(write_config(tmp_path, broker.port)):
            await wait_messages(
                subscriber, lambda seen: any(m.kind == "DDATA" for m in seen), "a DDATA"
            )
            publish_command(broker, rebirth_command())
            seen = await wait_messages(
                subscriber,
                lambda seen: len(sessions(seen)) == 2 and len(sessions(seen)[1]) > 5,
                "a second NBIRTH and data after it",
            )
    first, second = sessions(seen)[:2]
    check_session(first)
    check_session(second)
    assert bdseq(second[0]) == bdseq(first[0])  # same connection, same bdSeq
    # The devices it knew are born again right after the NBIRTH, before any DDATA.
    assert [m.kind for m in second[1:3]] == ["DBIRTH", "DBIRTH"]


async def test_ndeath_will_on_sigkill_and_bdseq_goes_on_after_restart(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config = write_config(tmp_path, broker.port)
    with hub(broker) as subscriber:
        agent = AgentProcess(config, tmp_path / "agent.log").start()
        try:
            seen = await wait_messages(
                subscriber, lambda seen: any(m.kind == "DDATA" for m in seen), "a DDATA"
            )
            born = bdseq(seen[0])
            agent.kill()  # SIGKILL: the broker publishes the will
            assert agent.wait_exit(10) == -signal.SIGKILL
            seen = await wait_messages(
                subscriber, lambda seen: seen[-1].kind == "NDEATH", "the NDEATH will"
            )
            assert bdseq(seen[-1]) == born
            count = len(seen)
            agent = AgentProcess(config, tmp_path / "agent.log").start()
            seen = await wait_messages(
                subscriber,
                lambda seen: any(m.kind == "NBIRTH" for m in seen[count:]),
                "an NBIRTH after the restart",
            )
            reborn = next(m for m in seen[count:] if m.kind == "NBIRTH")
            assert bdseq(reborn) == (born + 1) % 256
        finally:
            agent.ensure_stopped()


async def test_backlog_after_an_outage_is_sent_as_historical(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    proxy = TcpProxy(broker.port)
    await proxy.start()
    try:
        with hub(broker) as subscriber:
            async with running_agent(write_config(tmp_path, proxy.port)) as agent:
                await wait_messages(
                    subscriber, lambda seen: any(m.kind == "DDATA" for m in seen), "a DDATA"
                )
                await proxy.cut()
                # The broker sees the connection end: it publishes the NDEATH will.
                seen = await wait_messages(
                    subscriber, lambda seen: seen[-1].kind == "NDEATH", "the NDEATH will"
                )
                cut_at = len(seen)
                boundary = agent.buffer.last_seq
                await wait_until_true(
                    lambda: agent.buffer.last_seq >= boundary + 20, "20 events buffered"
                )
                await proxy.restore()
                seen = await wait_messages(
                    subscriber,
                    lambda seen: (
                        {True, False}
                        <= {metric.historical for metric in data_metrics(seen[cut_at:])}
                        and sum(metric.historical for metric in data_metrics(seen[cut_at:])) >= 20
                    ),
                    "the backlog (historical) and live data",
                )
        after = sessions(seen[cut_at:])
        check_session(after[0])
        # A new connection, the next bdSeq (attempts refused during the cut used none).
        assert bdseq(after[0][0]) == bdseq(seen[0]) + 1
        data = [metric for m in after[0] if m.kind == "DDATA" for metric in m.payload.metrics]
        historical = [metric for metric in data if metric.historical]
        assert len(historical) >= 20
        # What waited in the buffer is older than the NBIRTH that came after the outage.
        born_at = after[0][0].payload.timestamp
        assert born_at is not None
        assert all((metric.timestamp or 0) <= born_at for metric in historical)
    finally:
        await proxy.close()


async def test_primary_host_offline_holds_and_online_rebirths(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    stamp = int(time.time() * 1000)
    publish_state(broker, False, stamp)
    with hub(broker) as subscriber:
        async with running_agent(write_config(tmp_path, broker.port, primary_host=True)) as agent:
            # Offline from the start: connected, events accepted, nothing published.
            await wait_until_true(lambda: agent.buffer.last_seq >= 10, "10 events buffered")
            assert messages(subscriber) == []
            publish_state(broker, True, stamp + 1)
            await wait_messages(
                subscriber, lambda seen: any(m.kind == "DDATA" for m in seen), "a DDATA"
            )
            publish_state(broker, False, stamp + 2)
            await wait_until_true(
                lambda: (
                    agent.sparkplug is not None
                    and agent.sparkplug.holding
                    and agent.forwarder.inflight == 0
                ),
                "the output holding",
            )
            await marker_seen(subscriber, broker)
            held_at = len(messages(subscriber))
            boundary = agent.buffer.last_seq
            await wait_until_true(
                lambda: agent.buffer.last_seq >= boundary + 20, "20 more events buffered"
            )
            assert len(messages(subscriber)) == held_at, "published while the host was offline"
            publish_state(broker, True, stamp + 3)
            seen = await wait_messages(
                subscriber,
                lambda seen: (
                    len(sessions(seen)) == 2
                    and sum(m.kind == "DDATA" for m in sessions(seen)[1]) > 3
                ),
                "a rebirth and data once the host is back",
            )
    first, second = sessions(seen)[:2]
    check_session(first)
    check_session(second)
    assert bdseq(first[0]) == bdseq(second[0])
    assert any(
        metric.historical for m in second if m.kind == "DDATA" for metric in m.payload.metrics
    )


async def wait_until_true(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        await asyncio.sleep(0.05)
