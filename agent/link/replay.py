"""Replay: publish the delivered events a buffer still retains again, the one way both paths do it.

`replay_retained` is what `edge-agent buffer replay` (the agent stopped; the command opens the
buffer and its own session) and the signed remote `replay` command (the running agent, on its
own session) both call. What it promises (docs/hub-contract.md, "Replay"):

- It sends the delivered events still retained (`Buffer.retained`), accepted in
  `[since, until)`, of the given event types (each matches a stored type exactly or by its
  unversioned name; None: all), again: same topic (`{topic_base}/{type}`), same `id` and
  `seq`, in the hub's format (`wire_format`, `[hub] format`), one message per type and chunk
  of at most `batch_max_events` (one event per message in the binding's structured and binary
  modes), with the MQTT v5 user property `replay=true` (`events.formats.REPLAY_PROPERTY`), so
  the hub can tell a replay from first delivery (on an MQTT 3.1.1 link: the topic's last level
  `/replay`, `agent.link.mqtt311`); within a type, in `seq` order.
- Each event carries the site and agent it was accepted under (`Buffer.identities`; a buffer
  no agent has noted an identity in yet: `fallback`), so a rename since does not relabel it.
- At most `max_inflight` messages wait for their PUBACK at a time (the caller's share of the
  broker's Receive Maximum: a running agent's forwarder holds the rest).
- A message over the broker's Maximum Packet Size (or with an event the format cannot encode)
  is split in halves; an event that is too large on its own or that the format cannot encode,
  a message the broker refuses (PUBACK reason >= 0x80) or one without a PUBACK within
  `ack_timeout_s` is *refused*: counted, and the replay goes on with the rest (a replay is a
  repair: it sends what can be sent and says exactly how much could not).
- If the link to the hub is down at the start, or goes down, `ReplayStopped` says how many
  events were sent before; nothing after that was attempted.

The result is a `ReplayOutcome`: `sent` (acknowledged by the broker) and `refused`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from agent.link.mqtt311 import marked_topic
from agent.link.mqtt_session import NotConnected, PacketTooLarge, PubAck
from buffer.base import Buffer, StoredRecord
from events.formats import REPLAY_PROPERTY, WireFormat
from events.wire import AgentIdentity, IdentityHistory

__all__ = ["ReplayOutcome", "ReplayPublisher", "ReplayStopped", "replay_retained"]

_log = logging.getLogger(__name__)


class ReplayPublisher(Protocol):
    """What a replay publishes through: an `agent.link.mqtt_session.MqttSession`."""

    @property
    def connected(self) -> bool: ...

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        content_type: str | None = None,
        user_properties: Sequence[tuple[str, str]] = (),
    ) -> asyncio.Future[PubAck]:
        """Send now; NotConnected while the link is down, PacketTooLarge over the broker's
        Maximum Packet Size; the future resolves with the PUBACK."""
        ...


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    sent: int
    refused: int

    def summary(self) -> str:
        refused = f"; {self.refused} refused by the broker" if self.refused else ""
        return f"replayed {self.sent} event(s){refused}"


class ReplayStopped(ValueError):
    """The link to the hub was down or went down: the replay stopped after `sent` events.
    (A ValueError: to a remote requester, a replay that cannot run is a bad request now.)"""

    def __init__(self, message: str, sent: int) -> None:
        super().__init__(message)
        self.sent = sent


async def replay_retained(
    buffer: Buffer,
    publisher: ReplayPublisher,
    *,
    topic_base: str,
    fallback: AgentIdentity,
    since: float,
    until: float | None,
    kinds: Sequence[str] | None,
    batch_max_events: int,
    max_inflight: int,
    ack_timeout_s: float,
    wire_format: WireFormat,
    seqs: tuple[int, int] | None = None,
) -> ReplayOutcome:
    """Publish the retained delivered events of [since, until) again (with `seqs` (first,
    last): only those of that inclusive seq range); see the module docstring."""
    if not publisher.connected:
        raise ReplayStopped("the hub is not connected; nothing replayed", 0)
    history = await buffer.identities()
    identity: AgentIdentity | IdentityHistory = IdentityHistory.of(history) if history else fallback
    replay = _Replay(publisher, identity, wire_format, max(1, max_inflight), ack_timeout_s)
    chunk_size = max(1, min(batch_max_events, wire_format.max_events_per_message or 1 << 30))
    try:
        for kind in sorted(set(kinds)) if kinds else [None]:
            async for records in buffer.retained(
                since=since, until=until, kind=kind, seqs=seqs
            ):
                by_kind: dict[str, list[StoredRecord]] = defaultdict(list)
                for record in records:
                    by_kind[record.kind].append(record)
                for record_kind, group in by_kind.items():
                    for start in range(0, len(group), chunk_size):
                        chunk = group[start : start + chunk_size]
                        await replay.publish(f"{topic_base}/{record_kind}", chunk)
    except NotConnected as error:
        await replay.settle()
        raise ReplayStopped(
            f"replay stopped after {replay.sent} event(s): the hub link is down ({error})",
            replay.sent,
        ) from error
    await replay.settle()
    outcome = ReplayOutcome(replay.sent, replay.refused)
    if outcome.sent or outcome.refused:
        _log.info("%s", outcome.summary())
    return outcome


class _Replay:
    """The messages of one replay in flight, at most `max_inflight`, and their outcome."""

    def __init__(
        self,
        publisher: ReplayPublisher,
        identity: AgentIdentity | IdentityHistory,
        wire_format: WireFormat,
        max_inflight: int,
        ack_timeout_s: float,
    ) -> None:
        self._publisher = publisher
        self._identity = identity
        self._format = wire_format
        self._slots = asyncio.Semaphore(max_inflight)
        self._ack_timeout_s = ack_timeout_s
        self._inflight: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.refused = 0

    async def publish(self, topic: str, chunk: list[StoredRecord]) -> None:
        """Send one message (split in halves while too large, or while an event of it cannot be
        encoded); NotConnected if the link is down."""
        try:
            message = self._format.encode(chunk, self._identity)
        except ValueError:
            await self._halve(topic, chunk)
            return
        await self._slots.acquire()
        try:
            if getattr(self._publisher, "mqtt311", False):  # marker as a topic level
                future = self._publisher.publish(
                    marked_topic(topic, REPLAY_PROPERTY), message.payload, qos=1,
                    user_properties=message.user_properties,  # binary mode: V5Only, loudly
                )
            else:
                future = self._publisher.publish(
                    topic, message.payload, qos=1, content_type=message.content_type,
                    user_properties=(*message.user_properties, REPLAY_PROPERTY),
                )
        except PacketTooLarge:
            self._slots.release()
            await self._halve(topic, chunk)
            return
        except BaseException:
            self._slots.release()
            raise
        task = asyncio.ensure_future(self._settle_one(future, len(chunk)))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _halve(self, topic: str, chunk: list[StoredRecord]) -> None:
        """Send `chunk` as two messages; a lone event is refused."""
        if len(chunk) == 1:
            self.refused += 1
            return
        await self.publish(topic, chunk[: len(chunk) // 2])
        await self.publish(topic, chunk[len(chunk) // 2 :])

    async def _settle_one(self, future: asyncio.Future[PubAck], count: int) -> None:
        try:
            ack = await asyncio.wait_for(future, self._ack_timeout_s)
        except Exception:  # no PUBACK in time, or the connection dropped before it
            self.refused += count
        else:
            if ack.ok:
                self.sent += count
            else:
                self.refused += count
        finally:
            self._slots.release()

    async def settle(self) -> None:
        """Wait for every message in flight to be acknowledged, refused or timed out."""
        if self._inflight:
            await asyncio.gather(*self._inflight)
