"""A loopback TCP proxy that understands MQTT framing and can swallow the broker's PUBACKs.

It sits between a client (the agent's session) and a real broker. Both directions are cut into
whole MQTT control packets (fixed header: one byte of packet type and flags, then the remaining
length as a variable byte integer of at most four bytes) and forwarded packet by packet. While
`swallow_pubacks` is set, every PUBACK (packet type 4) from the broker to the client is dropped
and counted; everything else (CONNACK, PINGRESP, SUBACK, PUBLISH to the client ...) still flows.
That is the fault of a broker path that keeps the connection and its keepalive alive but stops
acknowledging publishes. `refuse(topic, reason_code)` makes it answer every QoS 1 PUBLISH to that
topic with a PUBACK carrying that failure reason code instead of the broker's own (the proxy
reads the topic and packet id of each PUBLISH the client sends; the broker still gets the
message), for refusals a stock mosquitto never sends (e.g. 0x99 payload format invalid). A
stream that is not MQTT (a remaining length over four bytes) closes that connection.

Every task it starts belongs to it and is cancelled by `close()`; it listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import TracebackType

from testkit.broker import free_loopback_port

PUBLISH = 3
PUBACK = 4
_MAX_REMAINING_LENGTH_BYTES = 4


class MalformedMqtt(ValueError):
    """The byte stream is not MQTT: a remaining length longer than four bytes."""


def packet_type(packet: bytes) -> int:
    """The MQTT control packet type (1 CONNECT ... 4 PUBACK ... 14 DISCONNECT)."""
    return packet[0] >> 4


def split_packets(buffer: bytearray) -> list[bytes]:
    """Take every whole MQTT packet off the front of `buffer` (a partial one stays there)."""
    packets: list[bytes] = []
    while len(buffer) >= 2:
        remaining, multiplier, index = 0, 1, 1
        while True:
            if index > _MAX_REMAINING_LENGTH_BYTES:
                raise MalformedMqtt("remaining length longer than 4 bytes")
            if index >= len(buffer):
                return packets  # the length itself is not complete yet
            byte = buffer[index]
            remaining += (byte & 0x7F) * multiplier
            multiplier *= 128
            index += 1
            if not byte & 0x80:
                break
        end = index + remaining
        if len(buffer) < end:
            return packets
        packets.append(bytes(buffer[:end]))
        del buffer[:end]
    return packets


def publish_topic_and_id(packet: bytes) -> tuple[str, int | None]:
    """The topic and packet id (None at QoS 0) of a PUBLISH packet."""
    qos = (packet[0] >> 1) & 0x03
    index = 1
    while packet[index] & 0x80:  # skip the remaining length
        index += 1
    index += 1
    length = int.from_bytes(packet[index : index + 2], "big")
    topic = packet[index + 2 : index + 2 + length].decode("utf-8", errors="replace")
    index += 2 + length
    packet_id = int.from_bytes(packet[index : index + 2], "big") if qos else None
    return topic, packet_id


def puback_packet_id(packet: bytes) -> int:
    return int.from_bytes(packet[2:4], "big")  # a PUBACK's remaining length is one byte


def failed_puback(packet_id: int, reason_code: int) -> bytes:
    """A v5 PUBACK: packet id and a reason code, no properties."""
    return bytes((PUBACK << 4, 3)) + packet_id.to_bytes(2, "big") + bytes((reason_code,))


class MqttProxy:
    """Forwards 127.0.0.1:`port` to a broker on 127.0.0.1:`target_port`, packet by packet.

    `swallow_pubacks = True` drops the broker's PUBACKs from then on (`pubacks_swallowed`
    counts them); False lets them through again. `pubacks_forwarded` counts those delivered.
    `refuse(topic, code)` rewrites the PUBACKs of that topic's publishes (`pubacks_rewritten`)
    until `allow(topic)`.
    """

    def __init__(self, target_port: int) -> None:
        self.port = free_loopback_port()
        self.host = "127.0.0.1"
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.swallow_pubacks = False
        self.pubacks_swallowed = 0
        self.pubacks_forwarded = 0
        self.pubacks_rewritten = 0
        self.connections_total = 0
        self._refused: dict[str, int] = {}

    def refuse(self, topic: str, reason_code: int) -> None:
        """Answer publishes to `topic` with a PUBACK of `reason_code` (>= 0x80) from now on."""
        if reason_code < 0x80:
            raise ValueError(f"not a failure reason code: 0x{reason_code:02x}")
        self._refused[topic] = reason_code

    def allow(self, topic: str) -> None:
        """Pass the broker's own PUBACKs for `topic` again."""
        self._refused.pop(topic, None)

    async def start(self) -> MqttProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def __aenter__(self) -> MqttProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self.connections_total += 1
        try:
            async with self._upstream() as (up_reader, up_writer):
                # Packet ids of this connection's publishes to a refused topic -> reason code.
                refusing: dict[int, int] = {}
                pipes = {
                    asyncio.create_task(
                        self._pipe(reader, up_writer, to_client=False, refusing=refusing)
                    ),
                    asyncio.create_task(
                        self._pipe(up_reader, writer, to_client=True, refusing=refusing)
                    ),
                }
                try:
                    await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for pipe in pipes:
                        pipe.cancel()
                    await asyncio.gather(*pipes, return_exceptions=True)
        except OSError:
            pass  # the broker is not there: the client sees its connection closed
        finally:
            writer.transport.abort()
            self._connections.discard(task)

    @contextlib.asynccontextmanager
    async def _upstream(
        self,
    ) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        up_reader, up_writer = await asyncio.open_connection(self.host, self._target_port)
        try:
            yield up_reader, up_writer
        finally:
            up_writer.transport.abort()

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        to_client: bool,
        refusing: dict[int, int],
    ) -> None:
        pending = bytearray()
        with contextlib.suppress(OSError, MalformedMqtt):
            while data := await reader.read(65536):
                pending += data
                for packet in split_packets(pending):
                    if to_client and packet_type(packet) == PUBACK:
                        if self.swallow_pubacks:
                            self.pubacks_swallowed += 1
                            refusing.pop(puback_packet_id(packet), None)
                            continue
                        code = refusing.pop(puback_packet_id(packet), None)
                        if code is not None:
                            packet = failed_puback(puback_packet_id(packet), code)
                            self.pubacks_rewritten += 1
                        self.pubacks_forwarded += 1
                    elif not to_client and packet_type(packet) == PUBLISH:
                        topic, packet_id = publish_topic_and_id(packet)
                        if packet_id is not None and topic in self._refused:
                            refusing[packet_id] = self._refused[topic]
                    writer.write(packet)
                await writer.drain()
