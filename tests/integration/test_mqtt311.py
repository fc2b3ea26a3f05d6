"""MQTT 3.1.1 hubs (`[hub] protocol`, agent.link.mqtt311) against a broker that speaks only
3.1.1: a private nats-server's MQTT gateway (testkit/nats_mqtt.py). Every delivery guarantee of
the v5 link still holds: the buffer acks only on PUBACK, a broker killed mid-stream loses
nothing, the hub lands each event exactly once, the backlog and replay markers are visible."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import pytest

from agent.link.forwarder import Forwarder
from agent.link.mqtt_session import MqttSession, PacketTooLarge, V5Only
from agent.link.replay import replay_retained
from agent.link.signing import create_key_pair
from buffer.base import Record
from buffer.sqlite import SqliteBuffer
from events.formats import FORMATS
from events.wire import AgentIdentity
from hub.ingest import Landing
from hub.store import HubStore
from testkit.agent_process import REPO, AgentProcess
from testkit.broker import MosquittoBroker
from testkit.commands import Requester
from testkit.durability import simulated_agent_config
from testkit.nats_mqtt import NatsMqttBroker
from testkit.postgres import scratch_database
from tests.hub.harness import (
    AGENT,
    SITE,
    assert_exactly_once,
    buffer_state,
    hub_keys,
    signed,
    wait_complete,
    wait_until,
)
from tests.integration.test_commands import commands_section, running_agent

ROOT = "mfg/plant-a/edge-01"
TOPIC_BASE = f"{ROOT}/events"


def record(n: int) -> Record:
    event_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"mqtt311-test/{n}"))
    body = msgpack.packb(
        {
            "specversion": "1.0",
            "id": event_id,
            "type": "telemetry.v1",
            "source": "/plant-a/edge-01/test",
            "site": "plant-a",
            "agent": "edge-01",
            "data": {"signal": "s", "n": n},
        }
    )
    return Record(id=event_id, kind="telemetry.v1", priority=0, body=body)


async def until(condition: Callable[[], bool], what: str, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def session_311(broker: NatsMqttBroker, client_id: str, **options: Any) -> MqttSession:
    return MqttSession(
        host=broker.host,
        port=broker.port,
        client_id=client_id,
        protocol="3.1.1",
        session_expiry_s=300,
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
        **options,
    )


async def test_a_v5_session_is_told_why_and_auto_falls_back_to_311(
    nats: NatsMqttBroker, caplog: pytest.LogCaptureFixture
) -> None:
    strict = MqttSession(
        host=nats.host,
        port=nats.port,
        client_id="v5-only",
        reconnect_min_s=0.2,
        reconnect_max_s=0.5,
    )
    async with strict:
        await until(lambda: strict.last_error is not None, "the v5 CONNECT refused")
        assert not strict.connected
    error = strict.last_error or ""
    assert "Unsupported protocol version (0x84)" in error, error
    assert "does not speak MQTT v5" in error and 'protocol = "3.1.1"' in error, error

    caplog.set_level(logging.INFO, logger="test.auto")
    auto = MqttSession(
        host=nats.host,
        port=nats.port,
        client_id="auto",
        protocol="auto",
        max_packet_size=4096,
        logger=logging.getLogger("test.auto"),
    )
    async with auto:
        assert await auto.wait_connected(20), auto.last_error
        assert auto.mqtt311
        ack = await auto.publish(f"{ROOT}/probe", b"x", qos=1, content_type="text/plain")
        assert ack.ok, "a 3.1.1 PUBACK is success (the content type is dropped)"
        with pytest.raises(V5Only, match=r"3\.1\.1 has no user properties"):
            auto.publish(f"{ROOT}/probe", b"x", user_properties=[("backlog", "true")])
        # No Maximum Packet Size comes in a 3.1.1 CONNACK: the configured one stands in.
        assert auto.max_packet_size == 4096
        with pytest.raises(PacketTooLarge):
            auto.publish(f"{ROOT}/probe", b"x" * 5000)
    chosen = [r.getMessage() for r in caplog.records if "hub protocol" in r.getMessage()]
    assert len(chosen) == 1, chosen
    assert "MQTT 3.1.1" in chosen[0] and "refused MQTT v5 at CONNECT" in chosen[0], chosen


async def test_a_broker_that_hangs_up_at_connect_is_named_as_such() -> None:
    """A TCP peer that reads the CONNECT and closes, as RabbitMQ 3.10's MQTT plugin does with
    a v5 CONNECT (a stand-in: a private RabbitMQ takes far longer to start than a test may)."""
    connects: list[bytes] = []

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connects.append(await reader.read(64))
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        session = MqttSession(
            host="127.0.0.1",
            port=port,
            client_id="to-rabbit",
            reconnect_min_s=0.2,
            reconnect_max_s=0.5,
        )
        async with session:
            await until(lambda: session.last_error is not None, "the CONNECT hung up on")
    error = session.last_error or ""
    assert "closed the connection at CONNECT, before CONNACK" in error, error
    assert 'protocol = "3.1.1"' in error, error
    assert connects and connects[0][:1] == b"\x10", "the peer got a CONNECT"


@asynccontextmanager
async def hub_landing(broker: NatsMqttBroker, url: str) -> AsyncIterator[Landing]:
    """The hub's landing (hub.ingest) reading through the 3.1.1 broker into PostgreSQL."""
    async with HubStore.open(url) as store:
        landing = Landing(store, batch_max_wait_ms=10, landed_by="hub-311")
        session = session_311(broker, "hub-311", on_delivery=landing.offer, resume_at_start=True)
        async with session:
            await session.subscribe("mfg/+/+/events/#", qos=1)
            task = asyncio.create_task(landing.run())
            try:
                yield landing
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


async def test_events_land_exactly_once_through_a_311_broker_killed_mid_stream(
    tmp_path: Path, nats: NatsMqttBroker
) -> None:
    seen_topics: list[str] = []
    observer = session_311(nats, "observer", on_message=lambda t, _p, _q: seen_topics.append(t))
    async with (
        scratch_database() as url,
        hub_landing(nats, url) as landing,
        observer,
        SqliteBuffer.open(tmp_path / "buffer.sqlite") as buffer,
    ):
        await observer.subscribe("mfg/+/+/events/#", qos=1)
        agent = session_311(nats, "agent-311", dots_as_levels=True, puback_timeout_s=5)
        async with agent:
            forwarder = Forwarder(
                buffer,
                agent,
                topic_base=TOPIC_BASE,
                batch_max_events=20,
                batch_max_wait_s=0.01,
                wire_format=FORMATS["cloudevents-batch-json"],
            )
            task = asyncio.create_task(forwarder.run())
            try:
                assert await agent.wait_connected(20), agent.last_error
                await buffer.append([record(n) for n in range(1, 101)])
                forwarder.wake()
                await until(lambda: forwarder.counters.events_forwarded_total >= 20, "a start")
                await asyncio.to_thread(nats.kill)  # mid-stream: PUBACKs lost with it
                assert await agent.wait_disconnected(10)
                await buffer.append([record(n) for n in range(101, 201)])
                forwarder.wake()
                assert (await buffer.stats()).pending > 0, "nothing acked without a PUBACK"
                await asyncio.to_thread(nats.start)
                await until(
                    lambda: forwarder.counters.events_forwarded_total >= 200,
                    "all 200 acked after the restart",
                    60,
                )
                assert (await buffer.stats()).pending == 0
                await until(
                    lambda: landing.counters.events_landed_total >= 200,
                    "all 200 landed at the hub",
                    60,
                )
                outcome = await replay_retained(
                    buffer,
                    agent,
                    topic_base=TOPIC_BASE,
                    fallback=AgentIdentity("plant-a", "edge-01"),
                    since=0,
                    until=None,
                    kinds=None,
                    batch_max_events=50,
                    max_inflight=4,
                    ack_timeout_s=10,
                    wire_format=FORMATS["cloudevents-batch-json"],
                )
                assert outcome.sent == 200 and outcome.refused == 0
                await until(lambda: any(t.endswith("/replay") for t in seen_topics), "replay")
            finally:
                await forwarder.drain(5)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        async with HubStore.open(url) as store, store.pool.acquire() as conn:
            rows = await conn.fetch("SELECT seq, id, topic FROM events ORDER BY seq")
    assert [row["seq"] for row in rows] == list(range(1, 201)), "each event exactly once"
    assert len({row["id"] for row in rows}) == 200
    # Published as `.../telemetry/v1` (dots as levels); the marker level is off the landed topic.
    assert {row["topic"] for row in rows} == {f"{TOPIC_BASE}/telemetry/v1"}
    assert f"{TOPIC_BASE}/telemetry/v1/backlog" in seen_topics, "the backlog marker"
    assert f"{TOPIC_BASE}/telemetry/v1/replay" in seen_topics, "the replay marker"


def agent_toml(home: Path, broker: NatsMqttBroker, public_key: Path) -> Path:
    """A real agent on `protocol = "auto"`: one simulated counter, 100 events a second."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "agent.toml"
    path.write_text(f"""
[agent]
site = "{SITE}"
id = "{AGENT}"
state_dir = "{home / "state"}"
shutdown_grace_s = 5

[hub]
url = "{broker.url}"
protocol = "auto"
dots_as_levels = true
max_packet_size = 1048576
reconnect_min_s = 0.2
reconnect_max_s = 1.0
batch_max_events = 10
batch_max_wait_ms = 10

[commands.keys]
hub = "{public_key}"

[commands.allow]
pause = ["hub"]

[[sources]]
name = "sim"
type = "simulated"
rate_hz = 100

  [[sources.signals]]
  node = "counter"
  event = "production.count"
  asset = "line1/filler"
  name = "good"
""")
    return path


async def test_a_real_agent_on_auto_forwards_through_a_311_broker_and_answers_remote_status(
    tmp_path: Path, nats: NatsMqttBroker, postgres_url: str
) -> None:
    private, public = hub_keys(tmp_path / "keys")
    agent = AgentProcess(agent_toml(tmp_path / "agent", nats, public), tmp_path / "agent.log")
    async with hub_landing(nats, postgres_url) as landing:
        try:
            agent.start()
            await asyncio.to_thread(agent.wait_log, "hub protocol: MQTT 3.1.1")
            await until(lambda: landing.counters.events_landed_total > 0, "first events landed")
            await asyncio.to_thread(nats.kill)
            landed = landing.counters.events_landed_total
            await wait_until(
                lambda: _accepted_more(agent.config, landed + 50), "more accepted meanwhile"
            )
            await asyncio.to_thread(nats.start)
            with Requester(nats, f"mfg/{SITE}/{AGENT}", protocol="3.1.1") as requester:
                paused = await requester.ask_async(
                    "pause", signed(private, "pause", {"source": "sim"}), timeout=30
                )
                assert paused["ok"], paused
                assert "correlation_data" in paused, "the 3.1.1 answer carries its correlation"
            last_seq = await wait_complete(postgres_url, agent.config, timeout=60)
            await assert_exactly_once(postgres_url, last_seq)
            cli = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "agent",
                    "remote",
                    "status",
                    "--hub",
                    nats.url,
                    "--site",
                    SITE,
                    "--agent",
                    AGENT,
                    "--protocol",
                    "3.1.1",
                    "--timeout",
                    "15",
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert cli.returncode == 0, cli.stderr
            assert f"{SITE}/{AGENT}: online" in cli.stdout, cli.stdout
            assert "hub connected" in cli.stdout, cli.stdout
            assert agent.terminate() == 0
        finally:
            agent.ensure_stopped()
    log = agent.log_text()
    assert "refused MQTT v5 at CONNECT" in log


async def _accepted_more(config: Path, at_least: int) -> bool:
    last_seq, _ = await asyncio.to_thread(buffer_state, config)
    return last_seq > at_least


async def test_a_v5_agent_answers_a_311_requester_the_way_it_asked(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Mixed versions on one broker (mosquitto speaks both): a request with its reply fields in
    the JSON gets its answer with the correlation in the JSON, whatever the agent speaks. The
    agent's source is a simulated one: what it reads plays no part in answering commands."""
    keys = tmp_path / "keys"
    for name in ("ops", "viewer"):
        create_key_pair(keys, name)
    config = tmp_path / "agent.toml"
    config.write_text(
        simulated_agent_config(hub_url=broker.url, state_dir=tmp_path / "state", rate_hz=10)
        + commands_section(keys)
    )
    async with running_agent(config) as agent:
        assert not agent.session.mqtt311
        with Requester(broker, protocol="3.1.1") as requester:
            answer = await requester.ask_async("ping", {})
            unanswerable = requester.send("ping", {}, response_topic=None)
            await until(
                lambda: agent.commands.counters.refused_total["no_response_topic"] == 1,
                "the request without any reply topic counted",
            )
            assert unanswerable not in requester.content_types
    assert answer["ok"] and answer["command"] == "ping", answer
    assert "correlation_data" in answer


async def test_a_dotted_site_still_gets_its_requests_with_dots_as_levels(
    nats: NatsMqttBroker,
) -> None:
    """NATS 2.9 takes no `.` in a topic (`dots_as_levels` publishes each as a level), so a
    site id with a dot subscribes `mfg/plant/a/...`; what arrives is handed on in the form
    subscribed (`mfg/plant.a/edge-01/cmd/status`), so the command server finds its root."""
    received: list[str] = []
    agent = session_311(
        nats, "dotted-agent", dots_as_levels=True,
        on_message=lambda topic, _payload, _properties: received.append(topic),
    )
    requester = session_311(nats, "dotted-requester", dots_as_levels=True)
    async with agent, requester:
        assert await agent.wait_connected(20), agent.last_error
        assert await requester.wait_connected(20), requester.last_error
        await agent.subscribe("mfg/plant.a/edge-01/cmd/+")
        ack = await requester.publish("mfg/plant.a/edge-01/cmd/status", b"{}", qos=1)
        assert ack.ok
        await until(lambda: bool(received), "the request at the dotted root")
    assert received == ["mfg/plant.a/edge-01/cmd/status"]
