"""MqttSession against a real mosquitto (one private broker per test, never the system one)."""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent.link.mqtt_session import (
    ConnectionLost,
    MqttSession,
    NotConnected,
    PacketTooLarge,
    PubAck,
    WillMessage,
    publish_packet_size,
)
from testkit.broker import MosquittoBroker, ReceivedMessage, Subscriber

REPO_ROOT = Path(__file__).resolve().parents[2]
STATUS_TOPIC = "plant/site1/agent1/status"
EVENTS_TOPIC = "plant/site1/agent1/events/production"
ONLINE = b'{"state":"online"}'
WILL = b'{"state":"offline","reason":"connection lost"}'
SHUTDOWN = b'{"state":"offline","reason":"shutdown"}'


@asynccontextmanager
async def session_to(broker: MosquittoBroker, **overrides: Any) -> AsyncIterator[MqttSession]:
    options: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "client_id": "agent1",
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "connect_timeout_s": 3.0,
    }
    options.update(overrides)
    async with MqttSession(**options) as session:
        yield session


def payload_is(payload: bytes) -> Callable[[ReceivedMessage], bool]:
    return lambda message: message.payload == payload


async def test_publish_qos1_is_acked_and_delivered_with_content_type(
    broker: MosquittoBroker,
) -> None:
    with Subscriber(broker, "plant/site1/agent1/events/#") as subscriber:
        async with session_to(broker) as session:
            assert await session.wait_connected(5)
            assert session.connected
            assert session.connection_epoch == 1

            ack = await asyncio.wait_for(
                session.publish(
                    EVENTS_TOPIC,
                    b"\x91\x01",
                    content_type="application/msgpack",
                    user_properties=[("schema", "production.v1")],
                ),
                5,
            )

            assert ack == PubAck(0, "Success")
            assert ack.ok
            [received] = await subscriber.wait_for_async(1)
            assert received.topic == EVENTS_TOPIC
            assert received.payload == b"\x91\x01"
            assert received.content_type == "application/msgpack"
            assert received.properties is not None
            assert getattr(received.properties, "UserProperty", None) == [
                ("schema", "production.v1")
            ]


async def test_puback_reason_codes_are_reported_never_turned_into_success() -> None:
    acl = "topic readwrite plant/#\n"  # anonymous clients may use plant/# only
    with MosquittoBroker(["acl_file {workdir}/acl"], files={"acl": acl}) as broker:
        async with session_to(broker) as session:
            assert await session.wait_connected(5)

            unheard = await asyncio.wait_for(session.publish("plant/nobody/listens", b"x"), 5)
            denied = await asyncio.wait_for(session.publish("elsewhere/x", b"x"), 5)
            qos0 = await session.publish("plant/qos0", b"x", qos=0)

    assert (unheard.reason_code, unheard.reason, unheard.ok) == (
        0x10,
        "No matching subscribers",
        True,
    )
    assert (denied.reason_code, denied.reason, denied.ok) == (0x87, "Not authorized", False)
    assert qos0 == PubAck(0, "Success")


async def test_broker_kill_fails_inflight_publishes_and_session_reconnects_after_restart(
    broker: MosquittoBroker,
) -> None:
    connects: list[int] = []
    session_ref: list[MqttSession] = []

    async def on_connected() -> None:
        session = session_ref[0]
        connects.append(session.connection_epoch)
        await session.publish(STATUS_TOPIC, ONLINE, retain=True)

    with Subscriber(broker, "plant/site1/agent1/#") as subscriber:
        async with session_to(broker, on_connected=on_connected) as session:
            session_ref.append(session)
            assert await session.wait_connected(5)
            assert connects == [1]

            broker.pause()  # the broker holds the connection but answers nothing
            pending = [session.publish(EVENTS_TOPIC, b"event-%d" % n) for n in range(5)]
            await asyncio.sleep(0.2)
            assert not any(future.done() for future in pending)
            broker.kill()

            results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
            assert all(isinstance(result, ConnectionLost) for result in results), results
            assert await session.wait_disconnected(5)
            assert not session.connected
            with pytest.raises(NotConnected):
                session.publish(EVENTS_TOPIC, b"while down")

            broker.restart()
            assert await session.wait_connected(10)
            assert session.connection_epoch == 2
            assert connects == [1, 2]
            await subscriber.wait_subscribed_async(5)
            subscriber.clear()
            ack = await asyncio.wait_for(session.publish(EVENTS_TOPIC, b"after restart"), 5)
            assert ack.ok
            await subscriber.wait_for_async(payload_is(b"after restart"), 5)


async def test_no_future_is_left_hanging_when_the_broker_dies_mid_stream(
    broker: MosquittoBroker,
) -> None:
    async with session_to(broker) as session:
        assert await session.wait_connected(5)
        futures = [session.publish(EVENTS_TOPIC, b"x" * 512) for _ in range(500)]
        broker.kill()
        results = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), 5)

    outcomes = {type(result).__name__ for result in results}
    assert outcomes <= {"PubAck", "ConnectionLost"}, outcomes
    assert all(result.ok for result in results if isinstance(result, PubAck))


async def test_subscriptions_are_restored_after_reconnect(broker: MosquittoBroker) -> None:
    received: list[tuple[str, bytes]] = []
    arrived = asyncio.Event()

    def on_message(topic: str, payload: bytes, properties: Any) -> None:
        received.append((topic, payload))
        arrived.set()

    async with session_to(broker, on_message=on_message) as session:
        assert await session.wait_connected(5)
        await session.subscribe("plant/site1/agent1/cmd/#")
        await session.publish("plant/site1/agent1/cmd/ping", b"1")
        await asyncio.wait_for(arrived.wait(), 5)

        broker.kill()
        assert await session.wait_disconnected(5)
        broker.restart()
        assert await session.wait_connected(10)
        arrived.clear()
        await session.publish("plant/site1/agent1/cmd/ping", b"2")
        await asyncio.wait_for(arrived.wait(), 5)

    assert received == [
        ("plant/site1/agent1/cmd/ping", b"1"),
        ("plant/site1/agent1/cmd/ping", b"2"),
    ]


WILL_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from agent.link.mqtt_session import MqttSession, WillMessage

    async def main() -> None:
        will = WillMessage({topic!r}, {payload!r}, content_type="application/json")
        async with MqttSession(host="127.0.0.1", port={port}, client_id="will-child",
                               keepalive_s=5, will=will) as session:
            if not await session.wait_connected(10):
                sys.exit("not connected")
            print("connected", flush=True)
            await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_will_is_published_when_the_agent_process_is_killed(
    broker: MosquittoBroker,
) -> None:
    script = WILL_CHILD.format(topic=STATUS_TOPIC, payload=WILL, port=broker.port)
    with Subscriber(broker, STATUS_TOPIC) as subscriber:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), 10)
            assert line == b"connected\n", line + await child.stdout.read()
            assert subscriber.messages == []
        finally:
            child.kill()  # SIGKILL: no DISCONNECT, the socket just closes
            await asyncio.wait_for(child.wait(), 5)

        [will] = await subscriber.wait_for_async(payload_is(WILL), 5)
        assert will.topic == STATUS_TOPIC
        assert will.content_type == "application/json"

    with Subscriber(broker, STATUS_TOPIC) as late:  # the will was retained
        [retained] = await late.wait_for_async(1, 5)
        assert (retained.payload, retained.retain) == (WILL, True)


async def test_close_publishes_final_status_and_the_broker_drops_the_will(
    broker: MosquittoBroker,
) -> None:
    session_ref: list[MqttSession] = []

    async def on_connected() -> None:
        ack = await session_ref[0].publish(
            STATUS_TOPIC, ONLINE, retain=True, content_type="application/json"
        )
        assert ack.ok

    will = WillMessage(STATUS_TOPIC, WILL, content_type="application/json")
    with Subscriber(broker, STATUS_TOPIC) as subscriber:
        session = MqttSession(
            host=broker.host,
            port=broker.port,
            client_id="agent1",
            will=will,
            on_connected=on_connected,
        )
        session_ref.append(session)
        async with session:
            assert await session.wait_connected(5)
            await subscriber.wait_for_async(payload_is(ONLINE), 5)
            await session.close(final=[(STATUS_TOPIC, SHUTDOWN, True, "application/json")])
            assert not session.connected
            await session.close()  # idempotent

        [final] = await subscriber.wait_for_async(payload_is(SHUTDOWN), 5)
        assert final.content_type == "application/json"
        await asyncio.sleep(1.0)  # a will would be published at once after the socket closed
        assert [m.payload for m in subscriber.messages] == [ONLINE, SHUTDOWN]

    with Subscriber(broker, STATUS_TOPIC) as late:
        [retained] = await late.wait_for_async(1, 5)
        assert retained.payload == SHUTDOWN


async def test_max_packet_size_from_connack_is_enforced_before_sending() -> None:
    with (
        MosquittoBroker(["max_packet_size 1000"]) as broker,
        Subscriber(broker, "plant/#") as subscriber,
    ):
        async with session_to(broker) as session:
            assert await session.wait_connected(5)
            assert session.max_packet_size == 1000
            assert session.receive_maximum == 20  # mosquitto's default max_inflight_messages

            size = max(
                n
                for n in range(1000)
                if publish_packet_size(EVENTS_TOPIC, b"x" * n, 1, None) <= 1000
            )
            fits = b"x" * size
            assert publish_packet_size(EVENTS_TOPIC, fits, 1, None) == 1000
            ack = await asyncio.wait_for(session.publish(EVENTS_TOPIC, fits), 5)
            assert ack.ok

            with pytest.raises(PacketTooLarge) as raised:
                session.publish(EVENTS_TOPIC, fits + b"x")
            assert isinstance(raised.value, ValueError)
            assert (raised.value.packet_size, raised.value.max_packet_size) == (1001, 1000)
            # Properties count too: a content type pushes the same payload over the limit.
            with pytest.raises(PacketTooLarge):
                session.publish(EVENTS_TOPIC, fits, content_type="application/msgpack")

            # Nothing was sent: the connection survived and still works.
            ack = await asyncio.wait_for(session.publish(EVENTS_TOPIC, b"small"), 5)
            assert ack.ok
            assert session.connected
            assert session.connection_epoch == 1
            received = await subscriber.wait_for_async(2, 5)
            assert [len(m.payload) for m in received] == [len(fits), 5]


async def test_session_started_before_the_broker_connects_once_it_is_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.link.mqtt_session")
    broker = MosquittoBroker()  # port chosen, nothing listening yet
    try:
        async with session_to(broker, reconnect_min_s=0.2, reconnect_max_s=1.0) as session:
            assert not await session.wait_connected(1.5)
            assert not session.connected
            with pytest.raises(NotConnected):
                session.publish(EVENTS_TOPIC, b"x")

            broker.start()
            started = time.monotonic()
            assert await session.wait_connected(1.0 + 2.0)  # backoff cap + connect slack
            assert time.monotonic() - started < 3.0
            assert session.connection_epoch == 1
    finally:
        broker.close()

    messages = [record.getMessage() for record in caplog.records]
    unreachable = [m for m in messages if m.startswith("hub unreachable")]
    assert len(unreachable) == 1, messages  # once per outage, not once per attempt
    assert "Connection refused" in unreachable[0]
    assert any(m.startswith("hub connected") for m in messages), messages


async def test_refused_connack_is_logged_with_its_reason_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.link.mqtt_session")
    with MosquittoBroker(["allow_anonymous false"]) as broker:
        async with session_to(broker, username="agent1", password="s3cret-pw") as session:
            assert not await session.wait_connected(1.5)

    messages = [record.getMessage() for record in caplog.records]
    unreachable = [m for m in messages if m.startswith("hub unreachable")]
    assert unreachable == [
        "hub unreachable: connection refused by broker: Not authorized (0x87), retrying"
    ]
    assert not any("s3cret-pw" in m for m in messages)
