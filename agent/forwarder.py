"""Forwarder: buffer → MQTT, acking in the buffer exactly what the broker acknowledged.

The ack rule: a buffered event is marked delivered only when the PUBACK of the message that
carried it arrives with a success reason code (< 0x80). Each message's future settles exactly
the seqs that message carried; nothing else is ever acked.

Per connection (`MqttSession.connection_epoch`):
1. `buffer.rewind()`: everything not yet acked is leased again, oldest first within the
   highest priority (after a reconnect the broker may or may not have seen what was in flight;
   resending is at-least-once, and ids make repeats harmless).
2. Lease up to `batch_max_events`, group by event type (one topic per type, order kept within
   the group), halve a message while it exceeds the broker's Maximum Packet Size (a single
   event that cannot fit is dead-lettered), publish QoS 1 with at most
   min(`max_inflight`, broker's Receive Maximum) messages unacknowledged.
3. On PUBACK success, queue the seqs for `buffer.ack` (acks are committed in batches by one
   task). On a failure reason code: retryable ones (quota exceeded, server busy, unspecified)
   make the forwarder back off and resend from the oldest unacked; permanent ones (not
   authorized, topic invalid, payload invalid, packet too large) move the message's events to
   dead letters with the reason, so one bad message never blocks the queue.
4. The connection drops: in-flight futures fail with `ConnectionLost`; nothing is acked; the
   forwarder waits for the next connection and starts again at 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby

from agent.events import CONTENT_TYPE, encode_batch
from agent.mqtt_session import ConnectionLost, MqttSession, NotConnected, PacketTooLarge, PubAck
from buffer.base import Buffer, StoredRecord

_log = logging.getLogger(__name__)

# PUBACK reason codes after which sending the same message again can succeed.
RETRYABLE_REASON_CODES = frozenset({0x80, 0x83, 0x89, 0x97})


@dataclass(slots=True)
class ForwarderCounters:
    events_forwarded_total: int = 0
    messages_published_total: int = 0
    messages_rejected_total: int = 0
    events_dead_lettered_total: int = 0
    last_puback_at: float | None = None


class Forwarder:
    def __init__(
        self,
        buffer: Buffer,
        session: MqttSession,
        *,
        topic_base: str,
        batch_max_events: int = 500,
        batch_max_wait_s: float = 0.05,
        max_inflight: int = 16,
        retry_backoff_s: float = 1.0,
    ) -> None:
        self._buffer = buffer
        self._session = session
        self._topic_base = topic_base.rstrip("/")
        self._batch_max_events = batch_max_events
        self._batch_max_wait_s = batch_max_wait_s
        self._max_inflight = max_inflight
        self._retry_backoff_s = retry_backoff_s
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Future[PubAck]] = set()
        self._slots = asyncio.Semaphore(max_inflight)
        self._to_ack: list[int] = []
        self._ack_wake = asyncio.Event()
        self._retry_needed = False
        self._stopping = False
        self._draining = False
        self._loop_done = asyncio.Event()
        self._inflight_tasks: set[asyncio.Task[None]] = set()
        self.counters = ForwarderCounters()

    def wake(self) -> None:
        """Tell the forwarder new events were accepted (called by the pipeline)."""
        self._wake.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def run(self) -> None:
        """Forward until cancelled or drained; `drain()` first for a graceful stop."""
        acker = asyncio.create_task(self._ack_loop(), name="forwarder-acks")
        try:
            while not self._stopping:
                if await self._session.wait_connected(timeout=0.5):
                    await self._forward_connection(self._session.connection_epoch)
        finally:
            self._loop_done.set()
            acker.cancel()
            await asyncio.gather(acker, return_exceptions=True)
            await self._flush_acks()

    async def drain(self, timeout: float) -> None:
        """Graceful stop, bounded by `timeout`: while the hub is connected, forward what is
        pending; then stop publishing, wait for in-flight PUBACKs and commit their acks.
        Whatever is left stays in the buffer for the next start."""
        deadline = time.monotonic() + timeout
        self._draining = True
        self._wake.set()
        if self._session.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._loop_done.wait()), timeout * 0.8)
        self._stopping = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._loop_done.wait(), deadline - time.monotonic())
        while self._inflight and time.monotonic() < deadline:
            await asyncio.wait(set(self._inflight), timeout=deadline - time.monotonic())
        await self._flush_acks()

    async def _forward_connection(self, epoch: int) -> None:
        self._buffer.rewind()
        # Never more unacknowledged messages than the broker's Receive Maximum allows.
        self._slots = asyncio.Semaphore(min(self._max_inflight, self._session.receive_maximum))
        self._retry_needed = False
        while self._connection_usable(epoch) and not self._stopping:
            if self._retry_needed:
                await self._wait_inflight_settled()
                await asyncio.sleep(self._retry_backoff_s * (0.5 + random.random()))
                self._buffer.rewind()
                self._retry_needed = False
                continue
            records = await self._buffer.lease(self._batch_max_events)
            if not records:
                if self._draining:
                    self._stopping = True  # everything pending is published
                    return
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                except TimeoutError:
                    continue
                if self._batch_max_wait_s > 0:  # linger so a batch can fill
                    await asyncio.sleep(self._batch_max_wait_s)
                continue
            for kind, group in groupby(records, key=lambda record: record.kind):
                if not await self._publish_group(kind, list(group), epoch):
                    return  # connection gone: the rest is resent after rewind

    def _connection_usable(self, epoch: int) -> bool:
        return self._session.connected and self._session.connection_epoch == epoch

    async def _publish_group(self, kind: str, records: list[StoredRecord], epoch: int) -> bool:
        """Publish one event type's records; False when the connection is no longer usable."""
        return await self._publish_chunk(f"{self._topic_base}/{kind}", records, epoch)

    async def _publish_chunk(self, topic: str, records: list[StoredRecord], epoch: int) -> bool:
        """Publish `records` as one message, halving it while it exceeds the broker's maximum
        packet size; a single event that cannot fit goes to dead letters."""
        slots = self._slots
        await slots.acquire()
        if not self._connection_usable(epoch) or self._stopping:
            slots.release()
            return False
        payload = encode_batch((record.seq, record.body) for record in records)
        try:
            future = self._session.publish(topic, payload, qos=1, content_type=CONTENT_TYPE)
        except NotConnected:
            slots.release()
            return False
        except PacketTooLarge as error:
            slots.release()
            if len(records) == 1:
                await self._dead_letter(records, f"event too large for the broker: {error}")
                return True
            middle = len(records) // 2
            return await self._publish_chunk(
                topic, records[:middle], epoch
            ) and await self._publish_chunk(topic, records[middle:], epoch)
        self.counters.messages_published_total += 1
        self._inflight.add(future)
        future.add_done_callback(functools.partial(self._settled, records=records, slots=slots))
        return True

    def _settled(
        self,
        future: asyncio.Future[PubAck],
        *,
        records: list[StoredRecord],
        slots: asyncio.Semaphore,
    ) -> None:
        self._inflight.discard(future)
        slots.release()
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            if not isinstance(error, ConnectionLost):
                _log.warning("publish failed: %s", error)
            return  # not acked: resent after the next rewind
        puback = future.result()
        self.counters.last_puback_at = time.time()
        if puback.ok:
            self._to_ack.extend(record.seq for record in records)
            self._ack_wake.set()
            return
        self.counters.messages_rejected_total += 1
        if puback.reason_code in RETRYABLE_REASON_CODES:
            _log.warning(
                "broker refused a message for now (%s, 0x%02x); backing off and resending",
                puback.reason, puback.reason_code,
            )
            self._retry_needed = True
            return
        reason = f"broker rejected the message: {puback.reason} (0x{puback.reason_code:02x})"
        task = asyncio.get_running_loop().create_task(self._dead_letter(records, reason))
        self._inflight_tasks.add(task)
        task.add_done_callback(self._inflight_tasks.discard)

    async def _dead_letter(self, records: Sequence[StoredRecord], reason: str) -> None:
        _log.error("%d event(s) moved to dead letters: %s", len(records), reason)
        await self._buffer.dead_letter([record.seq for record in records], reason)
        self.counters.events_dead_lettered_total += len(records)

    async def _wait_inflight_settled(self) -> None:
        while self._inflight:
            await asyncio.wait(set(self._inflight))

    async def _ack_loop(self) -> None:
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        if not self._to_ack:
            return
        seqs, self._to_ack = self._to_ack, []
        await self._buffer.ack(seqs)
        self.counters.events_forwarded_total += len(seqs)
