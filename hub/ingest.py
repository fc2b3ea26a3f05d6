"""The hub's landing: the shared subscription's messages into PostgreSQL, acknowledged after
the commit.

::

    broker ──PUBLISH (QoS 1)──▶ MqttSession (manual ack) ──InboundMessage──▶ queue
        ▲                                                                      │ batch of up to
        └──────────── PUBACK, each message, in order ◀── commit ◀── HubStore.land ◀ N messages

Invariants
----------
- The ack rule: a message's PUBACK is sent only after every event in it was committed (or
  recorded as rejected), so a crash at any moment loses nothing: the broker still has what was
  not acknowledged and sends it again; `HubStore.land` makes the repeat a no-op.
- Acks in order: up to ``max_in_flight`` batches land at once (each its own transaction on
  its own pooled connection, so decoding one overlaps PostgreSQL's work on another), but a
  batch's PUBACKs go out only after it committed *and* every earlier batch was acknowledged,
  so the broker sees PUBACKs in the order it sent the PUBLISHes (MQTT 4.6). A batch that never
  commits (the process dies, or a bug ends the task group) holds back every later one's acks:
  they are sent again and are no-ops.
- Bounded: the broker sends at most ``receive_maximum`` unacknowledged messages (MQTT v5
  Receive Maximum, set in CONNECT), so the queue and the batches in flight never hold more;
  one batch is at most ``batch_max_messages`` and closes once it holds ``batch_max_bytes`` of
  payload (several moderate batches in flight keep PostgreSQL and the decoding busy at once;
  one batch swallowing everything the agents have in flight would make them wait for all of
  it: measured in bench/hub_landing.py).
- A batch PostgreSQL refuses is retried (backoff from ``retry_min_s`` up to 30 s), unacked
  meanwhile; the log says so once and once more when it lands again.
- A message or event no event can be read from (`events.formats.decode_message` refused it, or
  the map lacks a valid id, site, agent, seq or type) is a poison record: it is kept in
  `rejected_messages` with the reason and acknowledged, so it never blocks the stream.
- Every format of the wire contract is read (`decode_message`: the content type and the user
  properties say which); a replayed message (user property ``replay=true``) lands the same way,
  marked `replayed`.
- MQTT 3.1.1 plants (no properties; docs/hub-contract.md, "MQTT 3.1.1 hubs") land exactly as
  v5 ones: a last topic level ``backlog`` or ``replay`` is the marker (taken off the landed
  topic), and a message without Content Type or attributes is told by its first byte (``[``
  the JSON batch, ``{`` structured mode, else the msgpack batch). With 3.1.1 the broker sends
  no more unacknowledged messages than its own in-flight limit (there is no Receive Maximum).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.link.mqtt_session import InboundMessage
from connectors.backoff import Backoff
from events.formats import REPLAY_PROPERTY, decode_message, split_marker
from hub.store import (
    OVERFLOW_TYPE,
    HubStore,
    LandingRow,
    LandResult,
    StoreUnavailable,
    envelope_json,
)

__all__ = ["Landing", "LandingCounters", "landing_row", "read_message"]

_log = logging.getLogger(__name__)
_RETRY_MAX_S = 30.0
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
Rejected = tuple[str, str, bytes]  # topic, reason, payload


@dataclass(slots=True)
class LandingCounters:
    messages_total: int = 0
    events_landed_total: int = 0
    events_duplicate_total: int = 0
    rejected_total: int = 0
    batches_total: int = 0
    store_failures_total: int = 0


class Landing:
    """Takes `InboundMessage`s (`offer`, the session's `on_delivery`) and lands them (`run`)."""

    def __init__(
        self,
        store: HubStore,
        *,
        batch_max_messages: int = 500,
        batch_max_bytes: int = 2 * 2**20,
        batch_max_wait_ms: float = 50.0,
        retry_min_s: float = 0.5,
        landed_by: str = "",
        max_in_flight: int = 3,
    ) -> None:
        self._store = store
        self._landed_by = landed_by
        self._batch_max = batch_max_messages
        self._bytes_max = batch_max_bytes
        self._wait_s = batch_max_wait_ms / 1000
        self._retry_min_s = retry_min_s
        self._in_flight = max(1, max_in_flight)
        self._queue: asyncio.Queue[InboundMessage] = asyncio.Queue()
        self.counters = LandingCounters()

    def offer(self, message: InboundMessage) -> None:
        """On the loop (the session's callback): O(1), never blocks (bounded by the broker's
        Receive Maximum, module docstring)."""
        self._queue.put_nowait(message)

    async def run(self) -> None:
        """Land batches for ever (cancel to stop: what is not committed stays unacked).

        Up to ``max_in_flight`` batches land at once, each in its own transaction on its own
        connection (the store's row locks order them where they share an agent); their
        messages are acknowledged in the order received: a batch's PUBACKs go out once it
        committed and every batch before it was acknowledged."""
        slots = asyncio.Semaphore(self._in_flight)
        previous: asyncio.Event | None = None
        async with asyncio.TaskGroup() as group:
            while True:
                await slots.acquire()
                try:
                    batch = await self._next_batch()
                except BaseException:
                    slots.release()
                    raise
                acked = asyncio.Event()
                group.create_task(self._land(batch, previous, acked, slots))
                previous = acked

    async def _next_batch(self) -> list[InboundMessage]:
        batch = [await self._queue.get()]
        size = len(batch[0].payload)
        deadline = time.monotonic() + self._wait_s
        while len(batch) < self._batch_max and size < self._bytes_max:
            if self._queue.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        batch.append(await self._queue.get())
                        size += len(batch[-1].payload)
                continue
            batch.append(self._queue.get_nowait())
            size += len(batch[-1].payload)
        return batch

    async def _land(
        self,
        batch: list[InboundMessage],
        previous: asyncio.Event | None,
        acked: asyncio.Event,
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            result, rejects = await self._commit(batch)
            if previous is not None:
                await previous.wait()
            for message in batch:  # after the commit, in the order received
                message.ack()
            acked.set()  # only now: a batch that failed holds back every later one's acks
        finally:
            slots.release()
        self.counters.messages_total += len(batch)
        self.counters.batches_total += 1
        self.counters.events_landed_total += result.landed
        self.counters.events_duplicate_total += result.duplicates
        self.counters.rejected_total += len(rejects)
        if rejects:
            _log.warning("%d message(s)/event(s) rejected (see rejected_messages)", len(rejects))

    async def _commit(self, batch: list[InboundMessage]) -> tuple[LandResult, list[Rejected]]:
        """Land the batch's events and record its rejects, retrying while PostgreSQL fails."""
        received_at = datetime.now(UTC)
        rows: list[LandingRow] = []
        rejects: list[Rejected] = []
        for message in batch:
            message_rows, message_rejects = read_message(message)
            rows.extend(message_rows)
            rejects.extend(message_rejects)
        backoff = Backoff(self._retry_min_s, _RETRY_MAX_S)
        failing_since: float | None = None
        while True:
            try:
                result = await self._store.land(rows, received_at, self._landed_by)
                for topic, reason, payload in rejects:
                    await self._store.reject(topic, reason, payload, received_at)
                break
            except StoreUnavailable as error:
                self.counters.store_failures_total += 1
                if failing_since is None:
                    failing_since = time.monotonic()
                    _log.warning("database unavailable: %s; retrying (messages unacked)", error)
                await asyncio.sleep(backoff.next_s())
        if failing_since is not None:
            _log.info("database back after %.0f s", time.monotonic() - failing_since)
        return result, rejects


def _user_properties(message: InboundMessage) -> list[tuple[str, str]]:
    values = getattr(message.properties, "UserProperty", None) or []
    return [(str(name), str(value)) for name, value in values]


def read_message(message: InboundMessage) -> tuple[list[LandingRow], list[Rejected]]:
    """The rows of one message, and what was rejected of it: (topic, reason, payload).

    An MQTT 3.1.1 message (module docstring) lands as its v5 twin: the marker level is taken
    off the topic and read as the user property, the format is told by the payload."""
    content_type = getattr(message.properties, "ContentType", None)
    user_properties = _user_properties(message)
    topic, marker = split_marker(message.topic)
    if marker is not None and marker not in user_properties:
        user_properties.append(marker)
    try:  # no content type and no attributes: decode_message tells the format by the payload
        events = decode_message(message.payload, content_type, user_properties)
    except (ValueError, TypeError) as error:  # json and msgpack errors are ValueErrors
        return [], [(message.topic, f"not a message of the wire contract: {error}",
                     message.payload)]
    replayed = REPLAY_PROPERTY in user_properties
    rows: list[LandingRow] = []
    rejects: list[Rejected] = []
    for event in events:
        try:
            rows.append(landing_row(event, topic, replayed))
        except ValueError as error:
            rejects.append((message.topic, f"event not landed: {error}", _event_bytes(event)))
    return rows, rejects


def _event_bytes(event: object) -> bytes:
    return json.dumps(event, default=str).encode("utf-8", errors="replace")


def _text(event: dict[str, Any], name: str) -> str:
    value = event.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"attribute {name!r} must be a non-empty string, not {value!r}"[:200])
    return value


def landing_row(event: Any, topic: str, replayed: bool) -> LandingRow:
    """One event map (the JSON form) as a row; ValueError saying what is wrong with it."""
    if not isinstance(event, dict):
        raise ValueError(f"an event must be a map, not {type(event).__name__}")
    event_id = event.get("id")
    if not isinstance(event_id, str) or _CANONICAL_UUID.fullmatch(event_id) is None:
        try:  # another spelling of a UUID (upper case, braces, no dashes): canonical
            event_id = str(uuid.UUID(str(event_id)))
        except ValueError:
            raise ValueError(f"attribute 'id' is not a UUID: {event_id!r}"[:200]) from None
    seq = event.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 2**63:
        raise ValueError(f"attribute 'seq' must be a whole number >= 1, not {seq!r}"[:200])
    kind, site, agent = event.get("type"), event.get("site"), event.get("agent")
    if not (isinstance(kind, str) and kind and isinstance(site, str) and site
            and isinstance(agent, str) and agent):
        kind, site, agent = (_text(event, name) for name in ("type", "site", "agent"))
    raw_time = event.get("time")
    when: datetime | None = None
    if raw_time is not None:
        try:
            when = datetime.fromisoformat(str(raw_time))
        except ValueError:
            raise ValueError(f"attribute 'time' is not RFC 3339: {raw_time!r}"[:200]) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    source, subject = event.get("source"), event.get("subject")
    evicted, detail = _evicted(event, kind) if kind == OVERFLOW_TYPE else ((), "")
    return LandingRow(
        event_id, site, agent, seq, kind,
        source if isinstance(source, str) else None,
        subject if isinstance(subject, str) else None,
        when, replayed, topic, envelope_json(event), evicted, detail,
    )


def _evicted(event: dict[str, Any], kind: str) -> tuple[tuple[tuple[int, int], ...], str]:
    """An `agent.buffer.overflow` event's evicted seq ranges (events.models.BufferOverflowV1)
    and the detail recorded with them."""
    data = event.get("data")
    if kind != OVERFLOW_TYPE or not isinstance(data, dict) or data.get("reason") != "evicted":
        return (), ""
    ranges = tuple(_ranges(data.get("seq_ranges") or ()))
    detail = (
        f"agent.buffer.overflow event {event.get('id')}: {data.get('count')} "
        f"{data.get('event_type')} event(s) of class {data.get('priority_class')} evicted"
    )
    return ranges, detail


def _ranges(values: Iterable[Any]) -> Iterable[tuple[int, int]]:
    for value in values:
        if (
            isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and 1 <= value[0] <= value[1]
        ):
            yield int(value[0]), int(value[1])
        else:
            raise ValueError(f"overflow event: bad seq range {value!r}"[:200])
