"""Forwarder: buffer → MQTT, acking in the buffer exactly what the broker acknowledged.

Why one module of ~786 lines: the ack rule (each PUBACK settles exactly the seqs of its own
message) is kept by leasing, splitting, publishing, settling, dead-lettering and the paused
lanes together; they are kept in one file so the rule can be checked in one reading.

The ack rule: a buffered event is marked delivered only when the PUBACK of the message that
carried it arrives with a success reason code (< 0x80). Each message's future settles exactly
the seqs that message carried; nothing else is ever acked.

Per connection (`MqttSession.connection_epoch`):
1. `buffer.rewind()`: everything not yet acked is leased again (after a reconnect the broker may
   or may not have seen what was in flight; resending is at-least-once, ids make repeats
   harmless). The buffer's `last_seq` at that moment splits the queue into two lanes:
   - backlog: `seq <= boundary`, accepted before this connection (an outage, a restart). Sent
     with the MQTT v5 user property `backlog=true`, paced by a token bucket of
     `backlog_max_rate` events/s whose refill is jittered by +/- `backlog_jitter`, starting after
     a random delay of up to `backlog_start_delay_max_s` (a hundred plants reconnecting at once
     do not burst into the hub together).
   - live: `seq > boundary`, accepted during this connection. Sent as soon as accepted, unpaced,
     side by side with the backlog: fresh events never wait behind hours of backlog.
2. Each lease is split between the delivery classes by weight (`CLASS_SHARES`, critical 8 :
   business 4 : telemetry 1 of each lease while all have pending events; a class's unused share
   goes to the others), so higher classes drain first and none starves.
3. Lease up to `batch_max_events` (a backlog lease up to 4 times that, at most 0.1 s of its
   paced rate), group by event type (one topic per type, order kept within the group), at most
   `batch_max_events` per message, halve a message while it exceeds the broker's Maximum
   Packet Size or the message size the broker was seen to refuse (a single event that cannot
   fit is dead-lettered), publish QoS 1 with at most min(`max_inflight`, broker's Receive
   Maximum) messages unacknowledged. Each message's events are spliced back into whole
   envelopes (`events.wire`: seq, id, type and the agent's `identity`) and encoded in the
   hub's format (`[hub] format`, `events.formats`): a format of one event per message (the
   CloudEvents binding's structured and binary modes) caps `batch_max_events` at 1 per
   message, so there is nothing to halve and an event too large alone is dead-lettered as
   above. An event the format cannot encode is dead-lettered too (found by halving).
4. On PUBACK success, queue the seqs for `buffer.ack` (acks are committed in batches by one
   task, which lets 10 ms of PUBACKs gather first; at most 16,000 queued seqs, then publishing
   waits for them to be recorded). On a failure reason code: 0x95 (packet too large, e.g. a
   broker message size limit) on a message of several events makes the forwarder remember
   that size as too large and send everything not acked again in smaller messages; other
   retryable ones (quota exceeded, server busy, unspecified) make the forwarder back off and
   resend from the oldest unacked; topic refusals (0x87 not authorized, 0x90 topic name
   invalid) pause that topic's lane (below); permanent ones (payload invalid, a single event
   too large, any other code >= 0x80) move the message's events to dead letters with the
   reason, so one bad message never blocks the queue.
   A broker that drops the connection instead (mosquitto's `message_size_limit`) is recognised
   when the connection drops three times in a row within 5 s of connecting with the same
   message in flight: that size is then taken as refused (or the lone event dead-lettered).
5. The connection drops: in-flight futures fail with `ConnectionLost`; nothing is acked; the
   forwarder waits for the next connection and starts again at 1. A path that stops carrying
   PUBACKs is dropped by the session's PUBACK deadline (`PubAckTimeout`, a `ConnectionLost`
   that never counts as a poison suspect): the window of in-flight messages can never stay
   full for good.

Paused lanes (a topic the broker refuses). An ACL that denies an event topic, or a broker that
calls the topic name invalid, is a fault of the hub's (or this agent's topic) configuration,
not of the events: every event of that type would be refused the same way. So on PUBACK 0x87
or 0x90 the forwarder pauses that topic's lane: its events stay pending in the buffer (never
dead-lettered); what is leased of that type is held back (leased, not sent, so it is leased
again after the next rewind); the pause is logged once (topic, reason code) and listed in the
status (`paused_lanes`); other topics keep flowing. One event at a time (the oldest seen of the
lane) probes the topic again, after `lane_probe_min_s` doubling up to `lane_probe_max_s`
(+/- 20 % jitter). When a PUBACK on that topic succeeds the lane resumes by itself (logged
once, with how long it was paused): once the messages in flight settled, the buffer is rewound
and the held events go out. The probe event can overtake older events of its lane.

Order the consumer gets: within one lane, the events of one type (so of one source and type)
arrive in `seq` order (first arrivals; repeats after a reconnect can come later). Across lanes and
across types there is no order: live events overtake backlog, critical overtakes telemetry.
`seq` is the total order; the `backlog` property says which lane a message came from (on an
MQTT 3.1.1 link, which has no properties, a last topic level `/backlog`: `agent.link.mqtt311`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from typing import Protocol

from agent.link.mqtt311 import marked_topic
from agent.link.mqtt_session import (
    ConnectionLost,
    MqttSession,
    NotConnected,
    PacketTooLarge,
    PubAck,
    PubAckTimeout,
)
from agent.link.token_bucket import TokenBucket
from buffer.base import Buffer, BufferUnavailable, StoredRecord
from connectors.backoff import Backoff
from events.formats import BACKLOG_PROPERTY, DEFAULT_FORMAT, FORMATS, WireFormat, WireMessage
from events.kinds import Priority
from events.wire import AgentIdentity, IdentityHistory

_log = logging.getLogger(__name__)

# PUBACK reason codes after which sending the same message again can succeed.
RETRYABLE_REASON_CODES = frozenset({0x80, 0x83, 0x89, 0x97})
PACKET_TOO_LARGE = 0x95
# PUBACK reason codes that refuse a topic, not a message: the topic's lane is paused (above).
TOPIC_REFUSED_REASON_CODES = frozenset({0x87, 0x90})
_TOPIC_REFUSED_HINTS = {
    0x87: "check the broker's ACL for this agent",
    0x90: "check the broker's topic rules and this agent's hub.topic_prefix, site and id",
}
_PROBE_JITTER = 0.2
# While the buffer cannot record acks (a short disk), retry with this capped backoff.
_ACK_RETRY_MIN_S = 0.5
_ACK_RETRY_MAX_S = 5.0
# Share of each lease per delivery class while several have pending events.
CLASS_SHARES: dict[int, int] = {Priority.CRITICAL: 8, Priority.BUSINESS: 4, Priority.TELEMETRY: 1}
# A connection that drops within this many seconds with the same message in flight, this many
# times in a row, is taken as the broker refusing that message (see `_suspect_poison`).
_SUSPECT_CONNECTION_S = 5.0
_SUSPECT_STRIKES = 3
# A backlog lease fills up to this many messages of `batch_max_events`.
_BACKLOG_LEASE_MESSAGES = 4
# At most this many PUBACKed seqs wait to be recorded before publishing pauses for them.
_ACK_QUEUE_MAX = 16_000
# Acks are committed together once this many are queued, or after this linger.
_ACK_BATCH_EVENTS = 2_000
_ACK_LINGER_S = 0.01


@dataclass(slots=True)
class ForwarderCounters:
    events_forwarded_total: int = 0
    backlog_events_forwarded_total: int = 0
    messages_published_total: int = 0
    messages_rejected_total: int = 0
    messages_split_total: int = 0
    events_dead_lettered_total: int = 0
    lanes_paused_total: int = 0
    lane_probes_total: int = 0
    last_puback_at: float | None = None


@dataclass(slots=True)
class PausedLane:
    """A topic the broker refuses (0x87, 0x90): its events are held back and probed with."""

    topic: str
    reason_code: int
    reason: str
    since: float  # epoch s, for the status
    since_monotonic: float
    backoff_s: float  # until the next probe after a refused one
    next_probe_at: float  # monotonic
    probe: StoredRecord | None = None  # the oldest event seen of this lane, sent alone
    probing: bool = False  # a probe is in flight
    refusals: int = 1

    def hold(self, record: StoredRecord) -> None:
        if self.probe is None or record.seq < self.probe.seq:
            self.probe = record

    def as_status(self) -> dict[str, object]:
        return {
            "topic": self.topic,
            "reason_code": self.reason_code,
            "reason": f"{self.reason} (0x{self.reason_code:02x})",
            "since": datetime.fromtimestamp(self.since, UTC).isoformat(),
            "refusals": self.refusals,
        }


@dataclass(frozen=True, slots=True)
class BacklogPacing:
    """How fast the backlog lane may go; see the module docstring."""

    max_rate: float
    jitter: float
    start_delay_max_s: float


def _backlog_bucket(pacing: BacklogPacing | None, burst: int) -> TokenBucket | None:
    """The backlog lane's token bucket for one connection: empty, filling at the paced rate
    (jittered per refill) after the random start delay; None: no pacing at all."""
    if pacing is None:
        return None
    return TokenBucket(
        pacing.max_rate,
        max(1, burst),
        initial=0,
        start_at=time.monotonic() + random.uniform(0, pacing.start_delay_max_s),
        jitter=pacing.jitter,
    )


class OutputHook(Protocol):
    """An output that owns topics, encoding and publishing (Sparkplug B,
    `agent.link.sparkplug`); the forwarder keeps leasing, the lanes and the ack rule. `ready`
    is awaited at the start of each connection and whenever `holding` turns true (nothing is
    published meanwhile); False: that connection is gone."""

    @property
    def holding(self) -> bool: ...

    async def ready(self, epoch: int) -> bool: ...

    def topic(self, record: StoredRecord) -> str: ...

    def encode(
        self, topic: str, records: Sequence[StoredRecord],
        identity: AgentIdentity | IdentityHistory | None, *, backlog: bool,
    ) -> WireMessage: ...

    def publish(self, topic: str, payload: bytes, *, qos: int) -> asyncio.Future[PubAck]: ...


class Forwarder:
    def __init__(
        self,
        buffer: Buffer,
        session: MqttSession,
        *,
        topic_base: str,
        identity: AgentIdentity | IdentityHistory | None = None,
        batch_max_events: int = 500,
        batch_max_wait_s: float = 0.05,
        max_inflight: int = 16,
        retry_backoff_s: float = 1.0,
        pacing: BacklogPacing | None = None,
        lane_probe_min_s: float = 1.0,
        lane_probe_max_s: float = 60.0,
        wire_format: WireFormat = FORMATS[DEFAULT_FORMAT],
    ) -> None:
        """`identity`: the agent's site and id, spliced into every event stored without them
        (`events.wire.encode_body`), or the buffer's history of them (`identity` can be
        replaced before `run`); None only where every body is stored whole.
        `wire_format`: how events become MQTT messages (`[hub] format`).
        `pacing`: how fast the backlog lane may go; None: as fast as the broker takes it.
        `lane_probe_min_s`, `lane_probe_max_s`: how often a refused topic is probed again."""
        if not 0 < lane_probe_min_s <= lane_probe_max_s:
            raise ValueError("need 0 < lane_probe_min_s <= lane_probe_max_s")
        self._buffer = buffer
        self._session = session
        self._topic_base = topic_base.rstrip("/")
        self.identity = identity
        self.wire_format = wire_format
        self._batch_max_events = batch_max_events
        self._batch_max_wait_s = batch_max_wait_s
        self._max_inflight = max_inflight
        self._retry_backoff_s = retry_backoff_s
        self._pacing = pacing
        self._lane_probe_min_s = lane_probe_min_s
        self._lane_probe_max_s = lane_probe_max_s
        self._paused: dict[str, PausedLane] = {}
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Future[PubAck]] = set()
        self._slots = asyncio.Semaphore(max_inflight)
        self._to_ack: list[int] = []
        self._ack_lock = asyncio.Lock()  # `_flush_acks`
        self._ack_wake = asyncio.Event()
        self._acks_flushed = asyncio.Event()
        self._retry_needed = False
        self._resplit_needed = False
        self._rewind_needed = False  # a paused lane resumed: lease its held events again
        # Payload size the broker refused (0x95): messages are kept below it.
        self._refused_payload_size: int | None = None
        # Messages in flight when the connection dropped, and the suspected poison message.
        self._lost_messages: list[tuple[int, list[StoredRecord]]] = []
        self._suspect: tuple[int, int] | None = None
        self._connected_at = time.monotonic()
        self._stopping = False
        self._draining = False
        self._loop_done = asyncio.Event()
        self._inflight_tasks: set[asyncio.Task[None]] = set()
        self.backlog_boundary: int | None = None
        self.backlog_done = True
        self.counters = ForwarderCounters()
        # Told each PUBACK's round trip in seconds (the metrics' histogram, `agent.web`).
        self.on_puback: Callable[[float], None] | None = None
        # Set by `agent.link.sparkplug.attach`: the output in place of `wire_format`.
        self.output: OutputHook | None = None

    def wake(self) -> None:
        """Tell the forwarder new events were accepted (called by the pipeline)."""
        self._wake.set()

    def requeued(self) -> None:
        """Events went back to pending with their old seqs (dead letters retried), usually
        below this connection's backlog boundary: lease the backlog lane again, now."""
        self.backlog_done = False
        self._wake.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def paused_topics(self) -> tuple[str, ...]:
        """The topics whose lane is paused because the broker refuses them."""
        return tuple(self._paused)

    def paused_lanes(self) -> list[dict[str, object]]:
        """The paused lanes for the status document: topic, reason code and text, since."""
        return [lane.as_status() for lane in self._paused.values()]

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

    async def _suspect_poison(self) -> None:
        """Some brokers (mosquitto's `message_size_limit`) drop the connection instead of
        refusing a message. When the connection keeps dropping soon after it came up while the
        same message is in flight, send smaller messages; a single event that still drops it
        goes to dead letters."""
        lost, self._lost_messages = self._lost_messages, []
        lasted = time.monotonic() - self._connected_at
        if lasted > _SUSPECT_CONNECTION_S:
            self._suspect = None
        if not lost or lasted > _SUSPECT_CONNECTION_S:
            return
        # The broker reads in order: the oldest message in flight is the one it choked on.
        size, records = min(lost, key=lambda item: item[1][0].seq)
        strikes = 1
        if self._suspect is not None and self._suspect[0] == records[0].seq:
            strikes = self._suspect[1] + 1
        self._suspect = (records[0].seq, strikes)
        if strikes < _SUSPECT_STRIKES:
            return
        self._suspect = None
        if len(records) == 1:
            await self._dead_letter(
                records,
                f"the broker closed the connection {strikes} times while this {size}-byte "
                "message was in flight (over its message size limit?)",
            )
            return
        if self._refused_payload_size is None or size < self._refused_payload_size:
            self._refused_payload_size = size
            _log.warning(
                "the broker closed the connection %d times while a %d-byte message was in "
                "flight; sending smaller messages", strikes, size,
            )

    async def _forward_connection(self, epoch: int) -> None:
        await self._suspect_poison()
        self._connected_at = time.monotonic()
        self._buffer.rewind()
        boundary = self._buffer.last_seq
        self.backlog_boundary, self.backlog_done = boundary, False
        # A backlog lease may fill several messages (fewer buffer round trips while draining),
        # but holds at most 0.1 s of the paced rate: pacing stays as smooth as one batch.
        backlog_lease = self._batch_max_events * _BACKLOG_LEASE_MESSAGES
        if self._pacing is not None:
            backlog_lease = max(
                self._batch_max_events, min(backlog_lease, int(self._pacing.max_rate * 0.1))
            )
        bucket = _backlog_bucket(self._pacing, backlog_lease)
        # Never more unacknowledged messages than the broker's Receive Maximum allows.
        self._slots = asyncio.Semaphore(min(self._max_inflight, self._session.receive_maximum))
        self._retry_needed = False
        if self.output is not None and not await self.output.ready(epoch):
            return
        while self._connection_usable(epoch) and not self._stopping:
            if self._retry_needed or self._resplit_needed or self._rewind_needed:
                await self._wait_inflight_settled()
                with contextlib.suppress(BufferUnavailable):  # else the ack loop retries them
                    await self._flush_acks()  # what was PUBACKed is not leased again
                if self._retry_needed:
                    await asyncio.sleep(self._retry_backoff_s * (0.5 + random.random()))
                self._buffer.rewind()
                self._retry_needed = self._resplit_needed = self._rewind_needed = False
                self.backlog_done = False
                continue
            if self.output is not None and self.output.holding:
                await self._wait_inflight_settled()  # then lease again what was held back
                if not await self.output.ready(epoch):
                    return
                self._rewind_needed = True
                continue
            if not await self._probe_paused_lanes(epoch):
                return
            if len(self._to_ack) >= _ACK_QUEUE_MAX:
                # Publishing ran ahead of recording acks: let the acks catch up (bounded
                # queue; and a drained backlog is measured by what the buffer recorded).
                self._acks_flushed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._acks_flushed.wait(), 0.5)
                continue
            self._wake.clear()
            live = await self._buffer.lease(
                self._batch_max_events, after_seq=boundary, shares=CLASS_SHARES
            )
            if live and not await self._publish(live, epoch, backlog=False):
                return  # connection gone: the rest is resent after rewind
            backlog: list[StoredRecord] = []
            if not self.backlog_done:
                allowed = backlog_lease if bucket is None else bucket.take(backlog_lease)
                if allowed:
                    backlog = await self._buffer.lease(
                        allowed, up_to_seq=boundary, shares=CLASS_SHARES
                    )
                    self.backlog_done = len(backlog) < allowed
                    if backlog and not await self._publish(backlog, epoch, backlog=True):
                        return
            if live or backlog:
                continue
            if self._draining and self.backlog_done:
                self._stopping = True  # everything pending is published
                return
            if self.backlog_done:
                wait_s = 1.0
            else:  # until the backlog lane may go on
                wait_s = 0.0 if bucket is None else min(1.0, bucket.wait_s())
            wait_s = min(wait_s, self._next_probe_in())
            if self._draining:
                wait_s = min(wait_s, 0.05)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.001, wait_s))
            except TimeoutError:
                continue
            if self._batch_max_wait_s > 0:  # linger so a batch can fill
                await asyncio.sleep(self._batch_max_wait_s)

    async def _publish(self, records: list[StoredRecord], epoch: int, *, backlog: bool) -> bool:
        size = min(self._batch_max_events, self.wire_format.max_events_per_message or 1 << 30)
        output = self.output
        keyed = [
            (output.topic(record) if output else f"{self._topic_base}/{record.kind}", record)
            for record in records
        ]
        if output is not None:  # a topic per device: one message each, its events in order
            keyed.sort(key=lambda pair: pair[0])
        for topic, group in groupby(keyed, key=lambda pair: pair[0]):
            events = [record for _, record in group]
            lane = self._paused.get(topic)
            if lane is not None:
                # Held back: leased but not sent, so leased again after the next rewind.
                for record in events:
                    lane.hold(record)
                continue
            for start in range(0, len(events), size):
                if not await self._publish_chunk(
                    topic, events[start : start + size], epoch, backlog=backlog
                ):
                    return False
        return True

    async def _probe_paused_lanes(self, epoch: int) -> bool:
        """Send the probe event of each paused lane that is due (one at a time per lane).
        False when the connection is no longer usable."""
        now = time.monotonic()
        for lane in list(self._paused.values()):
            probe = lane.probe
            if probe is None or lane.probing or now < lane.next_probe_at:
                continue
            boundary = self.backlog_boundary
            if not await self._publish_chunk(
                lane.topic, [probe], epoch,
                backlog=boundary is not None and probe.seq <= boundary, probe=True,
            ):
                return False
        return True

    def _next_probe_in(self) -> float:
        """Seconds until the next paused lane's probe is due (1 s when none is waiting)."""
        due = [
            lane.next_probe_at for lane in self._paused.values()
            if lane.probe is not None and not lane.probing
        ]
        return max(0.0, min(due) - time.monotonic()) if due else 1.0

    def _connection_usable(self, epoch: int) -> bool:
        return self._session.connected and self._session.connection_epoch == epoch

    async def _publish_chunk(
        self,
        topic: str,
        records: list[StoredRecord],
        epoch: int,
        *,
        backlog: bool,
        probe: bool = False,
    ) -> bool:
        """Publish `records` as one message, halving it while it exceeds the broker's maximum
        packet size (or a size it refused); a single event that cannot fit is dead-lettered.
        `probe`: the lone event that asks a paused topic again. False when the connection is no
        longer usable."""
        try:
            message = (
                self.wire_format.encode(records, self.identity) if self.output is None
                else self.output.encode(topic, records, self.identity, backlog=backlog)
            )
        except ValueError as error:
            if len(records) == 1:
                name = self.wire_format.name if self.output is None else "Sparkplug B"
                await self._dead_letter(records, f"cannot be encoded as {name}: {error}")
                return True
            return await self._split(topic, records, epoch, backlog=backlog)
        payload = message.payload
        refused = self._refused_payload_size
        limit = self._session.max_packet_size
        # Over the broker's Maximum Packet Size (CONNACK) the session refuses it below with
        # that exact reason; the size a PUBACK 0x95 taught us is for what fits a packet.
        over_packet = limit is not None and len(payload) >= limit
        if refused is not None and len(payload) >= refused and not over_packet:
            if len(records) == 1:
                await self._dead_letter(
                    records,
                    f"event too large for the broker: a {len(payload)}-byte message was refused "
                    f"(PUBACK 0x95, a {refused}-byte one was too)",
                )
                return True
            return await self._split(topic, records, epoch, backlog=backlog)
        slots = self._slots
        await slots.acquire()
        if not self._connection_usable(epoch) or self._stopping:
            slots.release()
            return False
        if (
            self._resplit_needed or self._retry_needed or self._rewind_needed
            or (self.output is not None and self.output.holding)
        ):
            slots.release()
            return True  # not sent: everything not acked is leased again after the rewind
        try:
            if self.output is not None:  # Sparkplug: births first, seq, no properties
                future = self.output.publish(topic, payload, qos=1)
            elif self._session.mqtt311:  # the marker as a topic level (agent.link.mqtt311)
                future = self._session.publish(
                    marked_topic(topic, BACKLOG_PROPERTY) if backlog else topic, payload, qos=1,
                    user_properties=message.user_properties,  # binary mode: V5Only, loudly
                )
            else:
                future = self._session.publish(
                    topic,
                    payload,
                    qos=1,
                    content_type=message.content_type,
                    user_properties=(
                        (*message.user_properties, BACKLOG_PROPERTY) if backlog
                        else message.user_properties
                    ),
                )
        except NotConnected:
            slots.release()
            return False
        except PacketTooLarge as error:
            slots.release()
            if len(records) == 1:
                await self._dead_letter(records, f"event too large for the broker: {error}")
                return True
            return await self._split(topic, records, epoch, backlog=backlog)
        self.counters.messages_published_total += 1
        lane = self._paused.get(topic) if probe else None
        if lane is not None:
            lane.probing = True  # until its PUBACK (or the connection's end) settles it
            self.counters.lane_probes_total += 1
        self._inflight.add(future)
        future.add_done_callback(
            functools.partial(
                self._settled, topic=topic, records=records, slots=slots, size=len(payload),
                backlog=backlog, probe=probe, sent_at=time.monotonic(),
            )
        )
        return True

    async def _split(
        self, topic: str, records: list[StoredRecord], epoch: int, *, backlog: bool
    ) -> bool:
        self.counters.messages_split_total += 1
        middle = len(records) // 2
        return await self._publish_chunk(
            topic, records[:middle], epoch, backlog=backlog
        ) and await self._publish_chunk(topic, records[middle:], epoch, backlog=backlog)

    def _settled(
        self,
        future: asyncio.Future[PubAck],
        *,
        topic: str,
        records: list[StoredRecord],
        slots: asyncio.Semaphore,
        size: int,
        backlog: bool,
        probe: bool,
        sent_at: float,
    ) -> None:
        self._inflight.discard(future)
        slots.release()
        lane = self._paused.get(topic)
        if probe and lane is not None:
            lane.probing = False
        if future.cancelled():
            return
        error = future.exception()
        if error is not None:
            if isinstance(error, PubAckTimeout):
                pass  # the path lost PUBACKs, not this message's fault: no poison suspect
            elif isinstance(error, ConnectionLost):
                self._lost_messages.append((size, records))
            else:
                _log.warning("publish failed: %s", error)
            return  # not acked: resent after the next rewind
        puback = future.result()
        self.counters.last_puback_at = time.time()
        if self.on_puback is not None:
            self.on_puback(time.monotonic() - sent_at)
        if puback.ok:
            self._to_ack.extend(record.seq for record in records)
            if backlog:
                self.counters.backlog_events_forwarded_total += len(records)
            self._ack_wake.set()
            if lane is not None:
                self._resume_lane(lane)
            return
        self.counters.messages_rejected_total += 1
        if puback.reason_code in TOPIC_REFUSED_REASON_CODES:
            self._refused_topic(topic, puback, records, probe=probe)
            return
        if puback.reason_code == PACKET_TOO_LARGE and len(records) > 1:
            if self._refused_payload_size is None or size < self._refused_payload_size:
                self._refused_payload_size = size
                _log.warning(
                    "broker refused a %d-byte message as too large (0x95); sending smaller ones",
                    size,
                )
            self._resplit_needed = True
            return
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

    def _refused_topic(
        self, topic: str, puback: PubAck, records: list[StoredRecord], *, probe: bool
    ) -> None:
        """The broker refuses `topic` (0x87, 0x90): pause its lane, or count one more refusal
        and back off its probe (module docstring). The events stay pending."""
        now = time.monotonic()
        lane = self._paused.get(topic)
        if lane is None:
            lane = PausedLane(
                topic=topic,
                reason_code=puback.reason_code,
                reason=puback.reason,
                since=time.time(),
                since_monotonic=now,
                backoff_s=self._lane_probe_min_s,
                next_probe_at=now + self._jittered(self._lane_probe_min_s),
            )
            self._paused[topic] = lane
            self.counters.lanes_paused_total += 1
            _log.warning(
                "hub refuses topic %s: %s (0x%02x); its events stay pending (not dead-lettered), "
                "other topics keep flowing; probing it again with backoff (%s)",
                topic, puback.reason, puback.reason_code, _TOPIC_REFUSED_HINTS.get(
                    puback.reason_code, "check the broker's configuration for this topic"
                ),
            )
        else:
            lane.refusals += 1
            if probe:
                lane.backoff_s = min(lane.backoff_s * 2, self._lane_probe_max_s)
                lane.next_probe_at = now + self._jittered(lane.backoff_s)
                _log.debug(
                    "hub still refuses topic %s (0x%02x); next probe in %.1f s",
                    topic, puback.reason_code, lane.next_probe_at - now,
                )
        for record in records:
            lane.hold(record)

    def _resume_lane(self, lane: PausedLane) -> None:
        """A PUBACK on a paused topic succeeded: the hub accepts it again."""
        if self._paused.pop(lane.topic, None) is None:
            return
        self._rewind_needed = True  # lease the held events again, once in-flight ones settle
        self._wake.set()
        _log.info(
            "hub accepts topic %s again after %.0f s (%d refusal(s)); sending its held events",
            lane.topic, time.monotonic() - lane.since_monotonic, lane.refusals,
        )

    @staticmethod
    def _jittered(seconds: float) -> float:
        return seconds * random.uniform(1 - _PROBE_JITTER, 1 + _PROBE_JITTER)

    async def _dead_letter(self, records: Sequence[StoredRecord], reason: str) -> None:
        seqs = {record.seq for record in records}
        for lane in self._paused.values():
            if lane.probe is not None and lane.probe.seq in seqs:
                # A probe that can never be sent (too large): take another of the lane's events
                # once they are leased again.
                lane.probe = None
                self._rewind_needed = True
        _log.error("%d event(s) moved to dead letters: %s", len(records), reason)
        await self._buffer.dead_letter([record.seq for record in records], reason)
        self.counters.events_dead_lettered_total += len(records)

    async def _wait_inflight_settled(self) -> None:
        while self._inflight:
            await asyncio.wait(set(self._inflight))

    async def _ack_loop(self) -> None:
        failing_since: float | None = None  # the buffer refuses acks: said once, then again
        backoff = Backoff(_ACK_RETRY_MIN_S, _ACK_RETRY_MAX_S, jitter=False)
        while True:
            await self._ack_wake.wait()
            if len(self._to_ack) < _ACK_BATCH_EVENTS:
                # Let the next PUBACKs join: one transaction (one fsync, and seq ranges instead
                # of single seqs) for several messages. Acking later costs nothing but a few
                # more events sent again should the agent crash in between.
                await asyncio.sleep(_ACK_LINGER_S)
            self._ack_wake.clear()
            try:
                await self._flush_acks()
            except BufferUnavailable as error:
                # The seqs stay queued; if the agent stops first they are sent again next time.
                if failing_since is None:
                    failing_since = time.monotonic()
                    _log.warning(
                        "could not record %d ack(s) yet, retrying: %s", len(self._to_ack), error
                    )
                await asyncio.sleep(backoff.next_s())
                self._ack_wake.set()
                continue
            if failing_since is not None:
                _log.warning(
                    "acks recorded again after %.0f s", time.monotonic() - failing_since
                )
                failing_since = None
                backoff.reset()

    async def _flush_acks(self) -> None:
        # One flush at a time: the drain's last flush waits for the ack loop's, which may hold
        # the seqs it took (the drain would see none, return, and the loop be cancelled
        # mid-transaction: delivered events left pending until the next start).
        async with self._ack_lock:
            if not self._to_ack:
                return
            seqs, self._to_ack = self._to_ack, []
            try:
                await self._buffer.ack(seqs)
            except BaseException:
                # Cancelled (the acker stops) or failed: keep them for the next flush. A
                # cancelled ack may have committed all the same; acking again is harmless.
                self._to_ack[:0] = seqs
                raise
            self.counters.events_forwarded_total += len(seqs)
            self._acks_flushed.set()
