"""The MQTT v5 session to the hub: asyncio over paho-mqtt 2.x.

Why one module of ~1,050 lines: paho calls back on its own thread, and every callback reaches
the loop only through `call_soon_threadsafe`; the state those callbacks touch (the client, the
connection epoch, the publish futures and their PUBACK deadline, the subscriptions to restore)
lives in this one class, so that rule can be checked by reading one file. The packet-size and
reason-code helpers at the top are what the class needs of MQTT's wire format. The MQTT 3.1.1
branches sit in the connect, CONNACK and publish paths of that same state (which version the
link speaks is per connection), so they cannot move out without that state.

Invariants
----------
One paho client per connection.
    Every connection attempt builds a new paho ``Client`` (callback API v2, MQTT v5, paho's own
    reconnect off). Paho therefore never reconnects and never re-sends anything by itself:
    whatever was not acknowledged on the connection that carried it is reported lost, and the
    caller (the forwarder) re-sends it from its durable buffer.

Session expiry.
    With ``session_expiry_s`` > 0 the broker keeps the MQTT session (subscriptions, QoS 1
    messages queued *for* the agent) that long after a connection drops. The first connection
    of a ``MqttSession`` uses clean_start=True (nothing stale from an earlier process), every
    reconnect clean_start=False, so a short outage loses no subscription and no command sent
    meanwhile. This changes nothing for the agent's own publishes: the server keeps no state
    for QoS 1 messages it received, and a new paho client re-sends nothing, so the ack rule
    below holds either way. ``close()`` sets the expiry to 0 in its DISCONNECT: a clean stop
    leaves no session behind. With ``session_expiry_s`` = 0, every connection is clean.
    ``resume_at_start`` (the hub) makes the first connection resume too (clean_start=False):
    a process restarted with the same client id gets what the broker kept for it.

The ack rule.
    ``publish()`` returns one future per message. For QoS 1 it resolves only with the broker's
    PUBACK for that message, as a ``PubAck`` carrying the MQTT v5 reason code: ``ok`` for codes
    below 0x80 (0x00 success, 0x10 no matching subscribers), not ``ok`` for failures (0x80 and up,
    e.g. 0x87 not authorized, 0x97 quota exceeded). A failure code is never reported as success.
    A QoS 0 future resolves at once with ``PubAck(0, "Success")``: there is nothing to wait for.

In-flight publishes on disconnect.
    When the connection drops, every future still waiting for its PUBACK fails with
    ``ConnectionLost``: the broker may or may not have the message, so the caller re-sends it
    (consumers drop duplicates by event id). ``publish()`` while down raises ``NotConnected``.
    A message larger than the broker's Maximum Packet Size (from CONNACK) raises
    ``PacketTooLarge`` before anything is sent: a broker drops the whole connection for one
    (mosquitto sends DISCONNECT 0x95), which would fail every other in-flight publish too.

The PUBACK deadline.
    A path that keeps the connection and its PINGRESPs alive but loses PUBACKs (a broker or
    proxy fault) would otherwise keep its publishes in flight for ever, and the caller's window
    of unacknowledged messages with them. When the oldest message still waiting for its PUBACK
    has waited ``puback_timeout_s``, the session drops the connection (logged once, with the
    number in flight and the age), every future in flight fails with ``PubAckTimeout`` (a
    ``ConnectionLost``), and the session connects again by itself; the caller re-sends on the
    new connection (at-least-once). Checked at least every second on the loop, from the send
    time of each message in flight (monotonic clock).

Thread boundary.
    Paho's network thread (``loop_start``) runs paho's callbacks. They only hand events to the
    event loop with ``loop.call_soon_threadsafe``, tagged with the client they came from, so late
    events of an older connection are ignored. All session state is read and written on the loop.
    A publish's future is registered in the same synchronous step as ``client.publish()``; the
    PUBACK callback can only run later on the loop, so it always finds the future. Paho calls that
    may block run on worker threads (``loop_stop`` joins paho's thread); connecting uses
    ``connect_async``, the TCP and TLS handshake happen on paho's thread.

Lifecycle.
    A background task keeps one connection up: connect, wait (bounded) for CONNACK, re-subscribe,
    await ``on_connected`` (the link is usable: it may publish, e.g. an ``online`` status), then
    set ``connected`` and release ``wait_connected()`` waiters. On loss: fail in-flight futures,
    wait by the jittered backoff of `connectors.backoff`, connect again. CONNACK refusals (bad
    credentials, not authorized) are retried the same way. ``close()`` publishes the final
    messages, waits (bounded) for their PUBACKs and sends DISCONNECT 0 (normal), so the broker
    discards the will; any other end of the connection makes the broker publish the will.

Manual acknowledgement (the hub's landing).
    With ``on_delivery`` set, paho acknowledges nothing by itself (``manual_ack=True``): each
    message reaches the loop as an ``InboundMessage`` whose ``ack()`` sends its PUBACK. The
    caller acks only once it has made the message durable (the hub: after its transaction
    committed). ``ack()`` on a message of a connection that has since dropped does nothing: the
    broker sends the message again (on the resumed session) or, with the session gone, the
    message is lost at the broker (the hub's gap healing asks the agent for it again).
    ``receive_maximum`` (CONNECT) bounds how many unacknowledged messages the broker sends at
    once, so the caller's in-hand queue is bounded by it.

Errors
------
::

    MqttSessionError
    ├── NotConnected      publish while the link is down: keep the data, wait_connected()
    ├── ConnectionLost    the link dropped before the PUBACK: outcome unknown, re-send
    │   └── PubAckTimeout the session dropped it: no PUBACK within ``puback_timeout_s``
    ├── V5Only            (also a ValueError) a v5 property asked for on MQTT 3.1.1: a bug
    ├── PacketTooLarge    (also a ValueError) over the broker's Maximum Packet Size: this message
    │                     can never go to this broker as it is; set it aside (poison record)
    └── SubscribeRefused  SUBACK with a failure reason code for the filter

A PUBACK failure code is not an exception: it is a ``PubAck`` with ``ok`` false, so the caller
can tie the broker's reason to the exact message.

MQTT 3.1.1 (``protocol="3.1.1"``, or ``"auto"``: until the first connection, v5 first and 3.1.1
when the broker refuses v5 at CONNECT with CONNACK 0x84 or by closing the connection; what the
first connection spoke is kept for the session's life; a 3.1.1 choice is logged with the reason).
What changes: a PUBACK has no reason code, so it is always ``ok``; there
are no properties, so ``publish()`` drops ``content_type`` and refuses user properties, a
Response Topic or Correlation Data (``V5Only``: the caller carries them in the topic or payload,
`agent.link.mqtt311`); no Maximum Packet Size comes in CONNACK, so ``max_packet_size`` (a fixed
limit from the config) stands in for it; no Receive Maximum (the broker's own in-flight limit
bounds what it sends); no session expiry: with ``session_expiry_s`` > 0 every connection uses
clean_session=False with the same client id (the broker redelivers unacknowledged QoS 1
messages and keeps subscriptions), and the broker keeps that session after ``close()`` too,
for as long as its own settings say. ``dots_as_levels`` publishes every ``.`` of a topic as
``/`` (for brokers that refuse ``.`` in topic names: NATS before 2.10).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from connectors.backoff import Backoff

__all__ = [
    "ConnectionLost",
    "InboundMessage",
    "MqttSession",
    "MqttSessionError",
    "NotConnected",
    "PacketTooLarge",
    "PubAck",
    "PubAckTimeout",
    "SubscribeRefused",
    "V5Only",
    "WillMessage",
]

MqttProtocol = Literal["5", "3.1.1", "auto"]
# CONNACK "Unsupported protocol version" (v5; 3.1.1's return code 1 reads as it too).
_UNSUPPORTED_PROTOCOL_VERSION = 0x84
_TRY_311_HINT = 'set protocol = "3.1.1" (or "auto") for this broker'

# Largest packet MQTT can encode: 1 byte header + 4 bytes remaining length + 268,435,455.
_PROTOCOL_MAX_PACKET_SIZE = 1 + 4 + 268_435_455
_DEFAULT_RECEIVE_MAXIMUM = 65_535
_PAHO_MAX_INFLIGHT = 65_535
_CLOSE_TIMEOUT_S = 5.0
# The PUBACK deadline is checked this often at most (and at least once per second).
_PUBACK_CHECK_MAX_S = 1.0

OnConnected = Callable[[], Awaitable[None]]
OnMessage = Callable[[str, bytes, Properties | None], None]
OnDelivery = Callable[["InboundMessage"], None]


class MqttSessionError(Exception):
    """Base of the errors this module raises."""


class NotConnected(MqttSessionError):
    """publish() was called while the link to the hub is down (or the session is closing)."""


class ConnectionLost(MqttSessionError):
    """The connection dropped before this message's PUBACK: the outcome is unknown, re-send."""


class PubAckTimeout(ConnectionLost):
    """The session dropped the connection: a message waited ``puback_timeout_s`` for its PUBACK.
    The outcome is unknown, re-send (as for any lost connection)."""


class PacketTooLarge(MqttSessionError, ValueError):
    """The PUBLISH packet would exceed the broker's Maximum Packet Size; nothing was sent."""

    def __init__(self, packet_size: int, max_packet_size: int, topic: str) -> None:
        super().__init__(
            f"PUBLISH to {topic!r} would be {packet_size} bytes, over the broker's maximum "
            f"packet size of {max_packet_size} bytes"
        )
        self.packet_size = packet_size
        self.max_packet_size = max_packet_size


class SubscribeRefused(MqttSessionError):
    """The broker refused a subscription (SUBACK failure reason code)."""


class V5Only(MqttSessionError, ValueError):
    """An MQTT v5 property (user properties, Response Topic, Correlation Data) was asked for
    on an MQTT 3.1.1 connection: a caller's bug; nothing was sent."""


@dataclass(frozen=True)
class PubAck:
    """The broker's PUBACK for one message."""

    reason_code: int
    reason: str

    @property
    def ok(self) -> bool:
        return self.reason_code < 0x80


_QOS0_ACK = PubAck(0, "Success")


@dataclass(frozen=True)
class InboundMessage:
    """A message received with manual acknowledgement (``on_delivery``): ``ack()`` sends its
    PUBACK on the connection it came on (nothing if that connection is gone)."""

    topic: str
    payload: bytes
    properties: Properties | None
    qos: int
    mid: int
    ack: Callable[[], None]


@dataclass(frozen=True)
class WillMessage:
    """Published by the broker when the connection ends without a normal DISCONNECT."""

    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1
    content_type: str | None = None


def _new_properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho's Properties is untyped


def _varint_size(value: int) -> int:
    size = 1
    while value >= 128:
        value //= 128
        size += 1
    return size


def publish_packet_size(topic: str, payload: bytes, qos: int, properties: Properties | None) -> int:
    """Size in bytes of the MQTT v5 PUBLISH packet, fixed header included (what brokers limit)."""
    packed_properties = 1  # a single zero byte: no properties
    if properties is not None:
        packed_properties = len(properties.pack())  # type: ignore[no-untyped-call]
    remaining = 2 + len(topic.encode("utf-8")) + (2 if qos > 0 else 0)
    remaining += packed_properties + len(payload)
    return 1 + _varint_size(remaining) + remaining


def _reason_text(reason: ReasonCode) -> str:
    return f"{reason.getName()} (0x{reason.value:02x})"


# OpenSSL's words for the TLS failures an operator can fix, and what to fix.
_EXPIRED_CERT_HINT = (
    "TLS: the broker refused this agent's certificate: it has expired (renew hub.cert_file)"
)
_TLS_HINTS = (
    ("CERTIFICATE_VERIFY_FAILED", "TLS: the broker's certificate is not trusted (check hub.ca_file "
     "and that the hub URL's host name is in the certificate)"),
    ("ALERT_CERTIFICATE_EXPIRED", _EXPIRED_CERT_HINT),
    ("ALERT_CERTIFICATE_REQUIRED", "TLS: the broker requires a client certificate (set "
     "hub.cert_file and hub.key_file)"),
    ("ALERT_UNKNOWN_CA", "TLS: the broker does not trust the CA of this agent's certificate "
     "(hub.cert_file)"),
    ("ALERT_BAD_CERTIFICATE", "TLS: the broker refused this agent's certificate (hub.cert_file)"),
    ("ALERT_CERTIFICATE_REVOKED", "TLS: the broker says this agent's certificate is revoked"),
    ("WRONG_VERSION_NUMBER", "TLS: the broker did not answer in TLS (is it a plain mqtt:// "
     "port?)"),
)


def explain_connect_error(text: str) -> str:
    """A connect or socket error in an operator's words, OpenSSL's own text kept in brackets."""
    upper = text.upper().replace(" ", "_")
    for marker, hint in _TLS_HINTS:
        if marker in upper:
            return f"{hint} [{text}]"
    return text


class MqttSession:
    """A self-healing MQTT v5 connection to one broker; see the module docstring.

    Use as ``async with MqttSession(...) as session:``. All methods are called from the event loop
    that entered it.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        keepalive_s: int = 30,
        tls: ssl.SSLContext | None = None,
        client_cert_expires_at: float | None = None,
        username: str | None = None,
        password: str | None = None,
        session_expiry_s: int = 0,
        will: WillMessage | None = None,
        connect_timeout_s: float = 10.0,
        puback_timeout_s: float = 30.0,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        on_connected: OnConnected | None = None,
        on_message: OnMessage | None = None,
        on_delivery: OnDelivery | None = None,
        receive_maximum: int | None = None,
        resume_at_start: bool = False,
        protocol: MqttProtocol = "5",
        max_packet_size: int | None = None,
        dots_as_levels: bool = False,
        logger: logging.Logger | None = None,
    ) -> None:
        if reconnect_min_s <= 0 or reconnect_max_s < reconnect_min_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")
        if puback_timeout_s <= 0:
            raise ValueError(f"puback_timeout_s must be more than 0, not {puback_timeout_s}")
        self._host = host
        self._port = port
        self._client_id = client_id
        self._keepalive_s = keepalive_s
        self._tls = tls
        self._client_cert_expires_at = client_cert_expires_at
        self._username = username
        self._password = password
        self._session_expiry_s = session_expiry_s
        # clean_start=False from the second connection on (from the first: resume_at_start)
        self._resume_session = resume_at_start and session_expiry_s > 0
        self._will = will
        self._connect_timeout_s = connect_timeout_s
        self._puback_timeout_s = puback_timeout_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._on_connected = on_connected
        self._on_message = on_message
        self._on_delivery = on_delivery
        self._client_receive_maximum = receive_maximum
        self._protocol = protocol
        self._mqtt311 = protocol == "3.1.1"  # the protocol of the next (or current) connection
        self._v5_refusal: str | None = None  # why the last v5 CONNECT was refused, if it was
        self._configured_max_packet_size = max_packet_size  # when CONNACK brings none (3.1.1)
        self._dots_as_levels = dots_as_levels
        self._log = logger or logging.getLogger(__name__)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        # The current paho client: connecting, connected, or None between attempts.
        self._client: mqtt.Client | None = None
        self._connack: asyncio.Future[str | None] | None = None  # None = accepted, else why not
        self._link_up = False  # CONNACK accepted on self._client and not lost since
        self._lost = asyncio.Event()  # set when the current connection ends
        self._ready = asyncio.Event()  # link up and on_connected done
        self._down = asyncio.Event()
        self._down.set()
        self._loss_reason = ""
        self._pending: dict[int, asyncio.Future[PubAck]] = {}
        # When each message of `_pending` was sent (monotonic); in send order, oldest first.
        self._pending_sent_at: dict[int, float] = {}
        self._pending_subs: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._subscriptions: dict[str, int] = {}
        self._epoch = 0
        self._max_packet_size: int | None = None
        self._receive_maximum = _DEFAULT_RECEIVE_MAXIMUM
        self._closing = False
        self._closed = asyncio.Event()
        # Logging of state changes: once per change, not per attempt.
        self._ever_connected = False
        self._down_since: float | None = None
        self._outage_logged = False
        self.session_present = False  # the broker resumed a stored session at the last CONNACK
        self.last_error: str | None = None  # why the last attempt failed or the link dropped
        self.puback_timeouts_total = 0  # connections dropped by the PUBACK deadline
        # Called before each CONNECT for that connection's will (Sparkplug's NDEATH, whose
        # bdSeq changes per connection); None: `will` as given.
        self.will_provider: Callable[[], WillMessage] | None = None

    # -- public API --------------------------------------------------------------------------

    async def __aenter__(self) -> MqttSession:
        if self._task is not None:
            raise RuntimeError("MqttSession can be entered once")
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"mqtt-session[{self._client_id}]")
        self._task.add_done_callback(self._on_task_done)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True once connected and ``on_connected`` has run; False as soon as the link drops."""
        return self._ready.is_set()

    @property
    def connection_epoch(self) -> int:
        """Number of successful CONNACKs so far; increments on every (re)connect."""
        return self._epoch

    @property
    def max_packet_size(self) -> int | None:
        """The broker's Maximum Packet Size from the last CONNACK, if it sent one."""
        return self._max_packet_size

    @property
    def receive_maximum(self) -> int:
        """The broker's Receive Maximum from the last CONNACK (65535 if absent)."""
        return self._receive_maximum

    @property
    def mqtt311(self) -> bool:
        """True while the session speaks MQTT 3.1.1 (set, or chosen by ``"auto"``)."""
        return self._mqtt311

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until ``connected``; False if ``timeout`` passed first."""
        return await self._wait_event(self._ready, timeout)

    async def wait_disconnected(self, timeout: float | None = None) -> bool:
        """Wait until not ``connected``; False if ``timeout`` passed first."""
        return await self._wait_event(self._down, timeout)

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        content_type: str | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> asyncio.Future[PubAck]:
        """Send one PUBLISH now; the future resolves with its PUBACK (see the ack rule).

        ``response_topic`` and ``correlation_data`` set the MQTT v5 request/response properties
        (a request names where to answer; an answer repeats the request's correlation data).
        Raises NotConnected while the link is down or the session is closing, PacketTooLarge if
        the packet exceeds the broker's maximum. The link is usable during ``on_connected``.
        """
        if self._closing:
            raise NotConnected("session is closing")
        return self._publish(
            topic, payload, qos, retain, content_type, user_properties,
            response_topic=response_topic, correlation_data=correlation_data,
        )

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected (waits for SUBACK) and again after every reconnect.

        Raises SubscribeRefused if the broker refuses the filter; the filter is then forgotten.
        """
        self._subscriptions[topic_filter] = qos
        client = self._client
        if client is None or not self._link_up:
            return  # made on the next connect
        try:
            await self._subscribe_on(client, [(topic_filter, qos)])
        except ConnectionLost:
            return  # made on the next connect
        except SubscribeRefused:
            self._subscriptions.pop(topic_filter, None)
            raise

    async def close(self, final: Sequence[tuple[str, bytes, bool, str | None]] = ()) -> None:
        """Publish ``final`` (topic, payload, retain, content_type) at QoS 1, wait (bounded) for
        their PUBACKs, send a normal DISCONNECT (the broker drops the will) and stop. Idempotent.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        bug: BaseException | None = None
        try:
            task = self._task
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
                if not task.cancelled():
                    bug = task.exception()
            client = self._client
            if final and (client is None or not self._link_up):
                self._log.warning("hub not connected: %d final message(s) not sent", len(final))
            if client is not None:
                if self._link_up:
                    await self._publish_final(final)
                    # DISCONNECT reason 0: normal, no will; and no session left behind.
                    ending: Properties | None = None
                    if self._session_expiry_s > 0 and not self._mqtt311:
                        ending = _new_properties(PacketTypes.DISCONNECT)
                        ending.SessionExpiryInterval = 0
                    client.disconnect(properties=ending)
                    await self._wait_event(self._lost, _CLOSE_TIMEOUT_S)
                await self._discard(client)
            self._mark_down("session closed")
            self._client = None
            if self._ever_connected:
                self._log.info("hub session closed")
        finally:
            self._closed.set()
        if bug is not None:
            raise bug

    # -- connection supervisor (one task) ----------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(self._reconnect_min_s, self._reconnect_max_s)
        while not self._closing:
            failure = await self._connect_once()
            if (
                failure is not None and self._protocol == "auto" and self._v5_refusal is not None
                and not self._ever_connected  # chosen once: a v5 broker restarting stays v5
            ):
                failure = await self._fall_back_to_311(self._v5_refusal)
            if failure is None:
                backoff.reset()
                await self._serve_connection()
                failure = self._loss_reason
            if self._closing:
                return
            self._note_unreachable(failure)
            await asyncio.sleep(backoff.next_s())

    async def _fall_back_to_311(self, refusal: str) -> str | None:
        """``protocol = "auto"``: the broker refused v5 at CONNECT; try 3.1.1 at once and keep
        it for the session's life if it is accepted. None when connected, else why not."""
        self._mqtt311 = True
        failure = await self._connect_once()
        if failure is None:
            self._log.info(
                'hub protocol: MQTT 3.1.1 (protocol = "auto": the broker refused MQTT v5 at '
                "CONNECT: %s)", refusal,
            )
            self._protocol = "3.1.1"
            return None
        self._mqtt311 = False  # neither worked: try v5 first again next time
        return f"{failure} (as MQTT 3.1.1; as MQTT v5: {refusal})"

    async def _connect_once(self) -> str | None:
        """One connection attempt; None when CONNACK accepted it, else the reason it failed."""
        loop = asyncio.get_running_loop()
        client = self._new_client(loop)
        connack: asyncio.Future[str | None] = loop.create_future()
        self._client = client
        self._connack = connack
        self._v5_refusal = None
        properties: Properties | None = None
        if not self._mqtt311 and (
            self._session_expiry_s > 0 or self._client_receive_maximum is not None
        ):
            properties = _new_properties(PacketTypes.CONNECT)
            if self._session_expiry_s > 0:
                properties.SessionExpiryInterval = self._session_expiry_s
            if self._client_receive_maximum is not None:
                properties.ReceiveMaximum = self._client_receive_maximum
        if self._mqtt311:  # no CONNECT properties; the session is kept by clean_session=False
            client.connect_async(self._host, self._port, keepalive=self._keepalive_s)
        else:
            client.connect_async(
                self._host,
                self._port,
                keepalive=self._keepalive_s,
                clean_start=not self._resume_session,
                properties=properties,
            )
        client.loop_start()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                failure = await connack
        except TimeoutError:
            failure = f"no CONNACK within {self._connect_timeout_s:g} s"
        finally:
            self._connack = None
        if failure is not None:
            self._client = None
            await self._discard(client)
        return failure

    async def _serve_connection(self) -> None:
        """Run one established connection until it is lost, under the PUBACK deadline."""
        client = self._client
        assert client is not None
        watchdog = asyncio.create_task(
            self._enforce_puback_deadline(client, self._lost),
            name=f"mqtt-puback-deadline[{self._client_id}]",
        )
        try:
            await self._serve_link()
        finally:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)

    async def _enforce_puback_deadline(self, client: mqtt.Client, lost: asyncio.Event) -> None:
        """Drop `client`'s connection once a message waited `puback_timeout_s` for its PUBACK
        (module docstring); returns when the connection ends."""
        check_s = min(_PUBACK_CHECK_MAX_S, self._puback_timeout_s / 4)
        while not await self._wait_event(lost, check_s):
            if client is not self._client or not self._link_up or not self._pending_sent_at:
                continue
            age_s = time.monotonic() - next(iter(self._pending_sent_at.values()))
            if age_s >= self._puback_timeout_s:
                self._drop_stalled(client, lost, len(self._pending_sent_at), age_s)
                return

    def _drop_stalled(
        self, client: mqtt.Client, lost: asyncio.Event, inflight: int, age_s: float
    ) -> None:
        """The PUBACK deadline passed: end this connection now, failing what is in flight with
        `PubAckTimeout`; the supervisor connects again (and logs the reason once)."""
        self.puback_timeouts_total += 1
        reason = (
            f"no PUBACK within hub.puback_timeout_s = {self._puback_timeout_s:g} s: "
            f"{inflight} message(s) in flight, the oldest sent {age_s:.1f} s ago; "
            "dropped the connection to send them again"
        )
        client.disconnect()  # paho's own report of this end comes later and is ignored
        self._loss_reason = reason
        self._mark_down(reason, PubAckTimeout)
        lost.set()

    async def _serve_link(self) -> None:
        """Run one established connection until it is lost."""
        client = self._client
        lost = self._lost
        assert client is not None
        self._note_connected()
        if self._subscriptions:
            try:
                await self._subscribe_on(client, list(self._subscriptions.items()))
            except ConnectionLost:
                pass
            except (SubscribeRefused, TimeoutError) as error:
                self._log.error("hub subscription failed: %s", error)
        if self._on_connected is not None and self._link_up:
            try:
                await self._on_connected()
            except (ConnectionLost, NotConnected):
                if self._link_up:
                    self._log.exception("on_connected callback failed")
                # else: the link dropped under the callback; handled below like any loss
            except Exception:
                self._log.exception("on_connected callback failed")
        if self._link_up and self._client is client:
            self._ready.set()
            self._down.clear()
        await lost.wait()
        self._client = None
        await self._discard(client)

    async def _discard(self, client: mqtt.Client) -> None:
        """Stop a client's network thread without blocking the loop (bounded)."""
        client.disconnect()
        try:
            async with asyncio.timeout(max(self._connect_timeout_s, _CLOSE_TIMEOUT_S)):
                await asyncio.to_thread(client.loop_stop)
        except TimeoutError:
            self._log.warning("paho network thread did not stop in time; abandoning it")

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._log.error("hub session task crashed", exc_info=task.exception())

    # -- paho client and its callbacks (paho thread -> loop) ---------------------------------

    def _new_client(self, loop: asyncio.AbstractEventLoop) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=MQTTProtocolVersion.MQTTv311 if self._mqtt311 else MQTTProtocolVersion.MQTTv5,
            # 3.1.1 keeps a session only with clean_session=False, on every connection
            clean_session=(self._session_expiry_s == 0) if self._mqtt311 else None,
            reconnect_on_failure=False,
            manual_ack=self._on_delivery is not None,
        )
        client.max_inflight_messages_set(_PAHO_MAX_INFLIGHT)
        client.max_queued_messages_set(0)  # unlimited: the caller bounds what is in flight
        client.connect_timeout = self._connect_timeout_s
        if self._tls is not None:
            client.tls_set_context(self._tls)
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if self.will_provider is not None:
            self._will = self.will_provider()
        if self._will is not None:
            will_properties: Properties | None = None
            if self._will.content_type is not None and not self._mqtt311:
                will_properties = _new_properties(PacketTypes.WILLMESSAGE)
                will_properties.ContentType = self._will.content_type
            client.will_set(
                self._wire_topic(self._will.topic),
                self._will.payload,
                qos=self._will.qos,
                retain=self._will.retain,
                properties=will_properties,
            )

        def to_loop(callback: Callable[..., None], *args: Any) -> None:
            with contextlib.suppress(RuntimeError):  # loop already closed: nobody to tell
                loop.call_soon_threadsafe(callback, client, *args)

        def on_connect(_c: Any, _u: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
            present = bool(getattr(flags, "session_present", False))
            to_loop(self._handle_connack, reason, props, present)

        # Paho reports why a socket read or write failed only to its log (e.g. the broker's TLS
        # alert when it refuses this agent's certificate); keep the latest for the loss reason.
        socket_error: list[str] = []

        def on_log(_c: Any, _u: Any, level: int, text: str) -> None:
            if level == mqtt.MQTT_LOG_ERR and "on socket" in text:
                socket_error[:] = [text.split(": ", 1)[-1]]

        def on_connect_fail(c: mqtt.Client, _u: Any) -> None:
            # Runs inside paho's `except OSError`: the error is the one being handled.
            error = sys.exc_info()[1]
            c.disconnect()  # stop paho retrying the first connect by itself
            text = explain_connect_error(f"{error}") if error else "TCP connect failed"
            to_loop(self._handle_connect_fail, text)

        def on_disconnect(_c: Any, _u: Any, flags: Any, reason: ReasonCode, _p: Any) -> None:
            if getattr(flags, "is_disconnect_packet_from_server", False):
                text = f"broker closed the connection: {_reason_text(reason)}"
            elif socket_error:
                text = f"connection lost: {explain_connect_error(socket_error[0])}"
            else:
                text = "connection lost"
            to_loop(self._handle_link_lost, text)

        def on_publish(_c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
            to_loop(self._handle_puback, mid, PubAck(reason.value, reason.getName()))

        def on_subscribe(_c: Any, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any) -> None:
            to_loop(self._handle_suback, mid, list(reasons))

        def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
            try:
                topic = message.topic
            except UnicodeDecodeError:
                return
            properties = getattr(message, "properties", None)
            if self._on_delivery is not None:
                to_loop(
                    self._handle_delivery, topic, bytes(message.payload), properties,
                    message.qos, message.mid,
                )
                return
            to_loop(self._handle_message, topic, bytes(message.payload), properties)

        client.on_log = on_log
        client.on_connect = on_connect
        client.on_connect_fail = on_connect_fail
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        return client

    def _handle_connack(
        self, client: mqtt.Client, reason: ReasonCode, props: Any, session_present: bool
    ) -> None:
        connack = self._connack
        if client is not self._client or connack is None or connack.done():
            return
        if reason.is_failure:
            text = f"connection refused by broker: {_reason_text(reason)}"
            if reason.value == _UNSUPPORTED_PROTOCOL_VERSION and not self._mqtt311:
                self._v5_refusal = text
                text = f"{text}: it does not speak MQTT v5; {_TRY_311_HINT}"
            connack.set_result(text)
            return
        self._link_up = True
        self.session_present = session_present
        self._resume_session = self._session_expiry_s > 0
        self._epoch += 1
        self._lost = asyncio.Event()
        max_packet_size = getattr(props, "MaximumPacketSize", None)
        self._max_packet_size = (
            int(max_packet_size) if max_packet_size is not None
            else self._configured_max_packet_size
        )
        receive_maximum = getattr(props, "ReceiveMaximum", None)
        self._receive_maximum = (
            int(receive_maximum) if receive_maximum is not None else _DEFAULT_RECEIVE_MAXIMUM
        )
        connack.set_result(None)

    def _handle_connect_fail(self, client: mqtt.Client, reason: str) -> None:
        connack = self._connack
        if client is self._client and connack is not None and not connack.done():
            connack.set_result(reason)

    def _handle_link_lost(self, client: mqtt.Client, reason: str) -> None:
        if client is not self._client:
            return
        connack = self._connack
        if connack is not None and not connack.done():
            expires_at = self._client_cert_expires_at
            if expires_at is not None and time.time() > expires_at and "TLS:" not in reason:
                # Under TLS 1.3 the broker checks the client certificate after the handshake;
                # its alert can be lost to the connection's close (EOF, reset).
                reason = f"{_EXPIRED_CERT_HINT} [{reason}]"
            if reason == "connection lost" and not self._mqtt311:
                # TCP (and TLS) worked and the broker hung up at CONNECT: what a broker that
                # does not speak v5 does (RabbitMQ before 3.13); "auto" then tries 3.1.1.
                self._v5_refusal = "the broker closed the connection at CONNECT, before CONNACK"
                also = ", as does a TLS broker refusing this agent's certificate" * bool(self._tls)
                reason = (
                    f"{self._v5_refusal} (a broker that does not speak MQTT v5 does that{also}; "
                    f"if this one does not speak v5, {_TRY_311_HINT})"
                )
                connack.set_result(reason)
            else:
                connack.set_result(f"{reason} before CONNACK")
        if self._link_up:
            self._loss_reason = reason
            self._mark_down(reason)
            self._lost.set()

    def _mark_down(self, reason: str, error: type[ConnectionLost] = ConnectionLost) -> None:
        """Link gone: fail everything in flight (with `error`), clear the connected state."""
        self._link_up = False
        self._ready.clear()
        self._down.set()
        pending, self._pending = self._pending, {}
        self._pending_sent_at = {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error(f"{reason} before PUBACK"))
        pending_subs, self._pending_subs = self._pending_subs, {}
        for sub_future in pending_subs.values():
            if not sub_future.done():
                sub_future.set_exception(ConnectionLost(f"{reason} before SUBACK"))

    def _handle_puback(self, client: mqtt.Client, mid: int, ack: PubAck) -> None:
        if client is not self._client:
            return
        future = self._pending.pop(mid, None)
        self._pending_sent_at.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(ack)

    def _handle_suback(self, client: mqtt.Client, mid: int, reasons: list[ReasonCode]) -> None:
        if client is not self._client:
            return
        future = self._pending_subs.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reasons)

    def _handle_message(
        self, client: mqtt.Client, topic: str, payload: bytes, properties: Properties | None
    ) -> None:
        if client is not self._client or self._on_message is None:
            return
        if self._dots_as_levels:
            topic = self._unwired(topic)
        try:
            self._on_message(topic, payload, properties)
        except Exception:
            self._log.exception("on_message callback failed for topic %s", topic)

    def _handle_delivery(
        self,
        client: mqtt.Client,
        topic: str,
        payload: bytes,
        properties: Properties | None,
        qos: int,
        mid: int,
    ) -> None:
        if client is not self._client or self._on_delivery is None:
            return  # a late message of an older connection: the broker sends it again

        def ack() -> None:
            if client is self._client and self._link_up:
                client.ack(mid, qos)

        try:
            self._on_delivery(InboundMessage(topic, payload, properties, qos, mid, ack))
        except Exception:
            self._log.exception("on_delivery callback failed for topic %s", topic)

    # -- publishing and subscribing on the current client ------------------------------------

    def _publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        content_type: str | None,
        user_properties: Sequence[tuple[str, str]],
        *,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> asyncio.Future[PubAck]:
        client = self._client
        if client is None or not self._link_up:
            raise NotConnected("not connected to the hub")
        if self._mqtt311:
            if user_properties or response_topic is not None or correlation_data is not None:
                raise V5Only(
                    f"PUBLISH to {topic!r}: MQTT 3.1.1 has no user properties, Response Topic "
                    "or Correlation Data (see agent.link.mqtt311)"
                )
            content_type = None  # 3.1.1 has no Content Type: consumers tell it by the payload
        topic = self._wire_topic(topic)
        properties: Properties | None = None
        if (
            content_type is not None
            or user_properties
            or response_topic is not None
            or correlation_data is not None
        ):
            properties = _new_properties(PacketTypes.PUBLISH)
            if content_type is not None:
                properties.ContentType = content_type
            if user_properties:
                properties.UserProperty = list(user_properties)
            if response_topic is not None:
                properties.ResponseTopic = response_topic
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
        limit = self._max_packet_size or _PROTOCOL_MAX_PACKET_SIZE
        size = publish_packet_size(topic, payload, qos, properties)
        if size > limit:
            raise PacketTooLarge(size, limit, topic)
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        info = client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            raise NotConnected("connection to the hub just dropped")
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttSessionError(f"paho refused the publish: {mqtt.error_string(info.rc)}")
        if qos == 0:
            future.set_result(_QOS0_ACK)
        else:
            # Same synchronous step as client.publish(): the PUBACK handler runs after this.
            self._pending[info.mid] = future
            self._pending_sent_at[info.mid] = time.monotonic()
        return future

    def _wire_topic(self, topic: str) -> str:
        """The topic as published: with ``dots_as_levels``, every ``.`` as ``/``."""
        return topic.replace(".", "/") if self._dots_as_levels else topic

    def _unwired(self, topic: str) -> str:
        """A received topic in the form it was subscribed with: the part a subscription's
        filter spells out (up to its first wildcard) with its dots back, so that a site or agent
        id with a `.` still finds its `{root}/cmd/+` requests. The rest is as received."""
        for topic_filter in self._subscriptions:
            fixed = topic_filter.split("+", 1)[0].split("#", 1)[0]
            wired = self._wire_topic(fixed)
            if wired != fixed and topic.startswith(wired):
                return fixed + topic[len(wired):]
        return topic

    async def _publish_final(self, final: Sequence[tuple[str, bytes, bool, str | None]]) -> None:
        futures: list[asyncio.Future[PubAck]] = []
        for topic, payload, retain, content_type in final:
            try:
                futures.append(self._publish(topic, payload, 1, retain, content_type, ()))
            except MqttSessionError as error:
                self._log.warning("final message to %s not sent: %s", topic, error)
        if not futures:
            return
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                results = await asyncio.gather(*futures, return_exceptions=True)
        except TimeoutError:
            self._log.warning("final messages not acknowledged within %g s", _CLOSE_TIMEOUT_S)
            return
        for (topic, *_), result in zip(final, results, strict=False):
            if isinstance(result, BaseException):
                self._log.warning("final message to %s not acknowledged: %s", topic, result)
            elif not result.ok:
                self._log.warning("final message to %s refused: %s", topic, result.reason)

    async def _subscribe_on(self, client: mqtt.Client, filters: list[tuple[str, int]]) -> None:
        if self._dots_as_levels:  # subscribed as published; `_unwired` gives the topic back
            filters = [(self._wire_topic(topic_filter), qos) for topic_filter, qos in filters]
        rc, mid = client.subscribe(filters)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise ConnectionLost(f"subscribe not sent: {mqtt.error_string(rc)}")
        future: asyncio.Future[list[ReasonCode]] = asyncio.get_running_loop().create_future()
        self._pending_subs[mid] = future
        async with asyncio.timeout(self._connect_timeout_s):
            reasons = await future
        refused = [
            f"{topic_filter!r}: {_reason_text(reason)}"
            for (topic_filter, _), reason in zip(filters, reasons, strict=False)
            if reason.is_failure
        ]
        if refused:
            raise SubscribeRefused("subscription refused: " + ", ".join(refused))

    # -- state-change logging ----------------------------------------------------------------

    def _note_connected(self) -> None:
        where = f"{self._host}:{self._port}" + (" (MQTT 3.1.1)" if self._mqtt311 else "")
        if self._down_since is not None and self._outage_logged:
            seconds = time.monotonic() - self._down_since
            if self._ever_connected:
                self._log.info("hub back after %.0f s", seconds)
            else:
                self._log.info("hub connected: %s after %.0f s", where, seconds)
        elif not self._ever_connected:
            self._log.info("hub connected: %s", where)
        self._ever_connected = True
        self._down_since = None
        self._outage_logged = False

    def _note_unreachable(self, reason: str) -> None:
        self.last_error = reason
        if self._down_since is None:
            self._down_since = time.monotonic()
        if not self._outage_logged:
            self._outage_logged = True
            self._log.warning("hub unreachable: %s, retrying", reason)
        else:
            self._log.debug("hub still unreachable: %s", reason)

    @staticmethod
    async def _wait_event(event: asyncio.Event, timeout: float | None) -> bool:
        if event.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True
