"""The wire format: how events are stored in the buffer and published to the hub.

Invariants:
- `seq` is not known when an event is built: the buffer assigns it when it accepts the event.
  The buffer stores the envelope *without* `seq`, and without what the record (`id`, `kind`) or
  the agent (`specversion`, `site`, `agent`) already holds (`encode_body`, format 2 at
  `COMPACT_BODY`); the forwarder splices them in as the first map entries when it publishes
  (`encode_batch`), without decoding the rest. Same keys and values as the full envelope; only
  the order of the map entries differs. Bodies stored whole by older agents (format 1) get
  `seq` alone (`with_seq`).
- A site or agent renamed in the config relabels only what is accepted after the rename
  (`IdentityHistory`): each seq is spliced with the identity it was accepted under.
- Nor does it store what is constant per type and agent: `datacontenttype`, `dataschema`
  (`events.models.data_schema_id` of the kind) and `partitionkey` (`{site}/{agent}`) are
  spliced in too, and so is `traceparent` when the body holds none (a fact that came without
  a trace): `events.ids.traceparent(id)`, derived from the id at publish time. A body holds
  one when its bytes contain the msgpack key `traceparent` (`_TRACEPARENT_KEY`) and its map,
  decoded only then, has that key (the bytes alone may be a data value).
- The msgpack batch (`encode_batch`, MQTT v5 content type `CONTENT_TYPE`) is one of the hub
  formats (`events.formats`, which also has the others and the consumer's `decode_message`);
  `decode_batch` and `validate_envelope` are the consumer's side of this one.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

import msgpack
import msgspec
from pydantic import BaseModel

from events.ids import rfc3339, traceparent
from events.models import (
    AGENT_EVENT_MODELS,
    DATACONTENTTYPE,
    EVENT_TYPES_BY_NAME,
    RETIRED_EVENT_MODELS,
    SPECVERSION,
    CloudEvent,
    Event,
    data_schema_id,
)

CONTENT_TYPE = "application/cloudevents-batch+msgpack"


def encode_agent_event(
    type_name: str, *, event_id: str, site: str, agent: str, time: datetime, data: BaseModel
) -> bytes:
    """The stored envelope (without `seq`) of an event the agent itself produces."""
    envelope: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event_id,
        "source": f"/{site}/{agent}/agent",
        "type": type_name,
        "time": rfc3339(time),
        "subject": "agent",
        "site": site,
        "agent": agent,
        "quality": "good",
        "data": data.model_dump(mode="json"),
    }
    return msgpack.packb(envelope, use_bin_type=True)


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """The envelope attributes that are the same for every event of one agent: the buffer
    does not store them (`encode_body`); they are spliced back in when publishing."""

    site: str
    agent: str


@dataclass(frozen=True)
class IdentityHistory:
    """The identity each seq was accepted under: `changes` is `(first seq, identity)`
    ascending, as the buffer records it (`Buffer.note_identity`). A site or agent renamed in
    the config relabels only what is accepted after the rename: a body is stored without its
    site and agent, but its `source` and id were made under the old ones."""

    changes: tuple[tuple[int, AgentIdentity], ...]

    @classmethod
    def of(cls, rows: Iterable[tuple[int, str, str]]) -> IdentityHistory:
        return cls(tuple((seq, AgentIdentity(site, agent)) for seq, site, agent in rows))

    @functools.cached_property
    def _starts(self) -> list[int]:
        return [seq for seq, _ in self.changes]

    def at(self, seq: int) -> AgentIdentity | None:
        """The identity `seq` was accepted under; the first one for a seq before it."""
        if not self.changes:
            return None
        index = bisect.bisect_right(self._starts, seq) - 1
        return self.changes[max(index, 0)][1]


class StoredEvent(Protocol):
    """What publishing needs of a buffered event (`buffer.base.StoredRecord` is one)."""

    @property
    def seq(self) -> int: ...
    @property
    def id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def body(self) -> bytes: ...


# Stored body, format 2: this byte (one msgpack never uses), then a msgpack map of the envelope
# without `seq`, `specversion`, `id`, `type`, `site` and `agent`. `id` and `type` are the
# record's own `id` and `kind` columns; the others are per agent (`AgentIdentity`).
# Format 1 (written before): a msgpack map of the whole envelope without `seq`; it is still
# read (`encode_batch` tells them apart by this first byte), so a buffer filled by an older
# agent drains unchanged after an upgrade.
COMPACT_BODY = 0xC1
_COMPACT_MARKER = bytes((COMPACT_BODY,))


def envelope(event: Event, *, site: str, agent: str) -> dict[str, Any]:
    """The envelope without `seq`, as a map: what the hub gets, less the seq (the stored
    fields and the published constants the forwarder splices in)."""
    fields = _stored_fields(event, site=site, agent=agent)
    published = {
        "datacontenttype": DATACONTENTTYPE,
        "dataschema": data_schema_id(event.type.name),
        "partitionkey": partition_key(site, agent),
        "traceparent": traceparent(event.id),
    }
    return {**fields, **{key: value for key, value in published.items() if key not in fields}}


def _stored_fields(event: Event, *, site: str, agent: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event.id,
        "source": event.source,
        "type": event.type.name,
        "time": rfc3339(event.time),
        "subject": event.subject,
        "site": site,
        "agent": agent,
        "quality": event.quality,
        "data": event.data,
    }
    if event.status is not None:
        fields["status"] = event.status
    fields.update(event.extensions)
    return fields


def encode_body(event: Event, *, site: str, agent: str) -> bytes:
    """The envelope as the buffer stores it (format 2, see `COMPACT_BODY`): without `seq`,
    without what the record or the agent already holds and without the published constants
    (module docstring). Its record must carry `event.id` as its id and `event.type.name` as
    its kind; `site` and `agent` must be the agent's own (the forwarder splices its
    `AgentIdentity` back in).

    The stored map is built directly and encoded with msgspec (the same bytes as
    `msgpack.packb(..., use_bin_type=True)`: a test holds them equal); an event with an
    extension named like an envelope attribute takes the general path below."""
    extensions = event.extensions
    if extensions and not _ENVELOPE_NAMES.isdisjoint(extensions):
        return _encode_body_shadowed(event, site=site, agent=agent)
    stored: dict[str, Any] = {
        "source": event.source,
        "time": rfc3339(event.time),
        "subject": event.subject,
        "quality": event.quality,
        "data": event.data,
    }
    if event.status is not None:
        stored["status"] = event.status
    if extensions:
        stored.update(extensions)
    try:
        return _COMPACT_MARKER + _encode_map(stored)
    except (TypeError, OverflowError, msgspec.EncodeError):
        # A value msgspec refuses gets msgpack's answer (its bytes, or its error as before).
        return _COMPACT_MARKER + msgpack.packb(stored, use_bin_type=True)


def _encode_body_shadowed(event: Event, *, site: str, agent: str) -> bytes:
    """`encode_body` of an event whose extensions name an envelope attribute: format 2 when
    they only repeat what is spliced back in, else the whole envelope (format 1)."""
    fields = _stored_fields(event, site=site, agent=agent)
    spliced = {
        "specversion": SPECVERSION, "id": event.id, "type": event.type.name,
        "site": site, "agent": agent,
    }
    if any(fields[key] != value for key, value in spliced.items()) or any(
        key in fields for key in _PUBLISHED_CONSTANTS
    ):
        # An extension shadows one of them: keep the whole envelope (format 1).
        return msgpack.packb(fields, use_bin_type=True)
    stored = {key: value for key, value in fields.items() if key not in spliced}
    return _COMPACT_MARKER + msgpack.packb(stored, use_bin_type=True)


def expand_body(event: StoredEvent, identity: AgentIdentity | None) -> dict[str, Any]:
    """A stored body back into the envelope the hub gets (with `seq`), either format."""
    return cast(dict[str, Any], msgpack.unpackb(_expand(event, identity, {}), raw=False))


_SEQ_KEY = msgpack.packb("seq")


def with_seq(body: bytes, seq: int) -> bytes:
    """Splice `seq` into a stored envelope as its first entry, without decoding the rest."""
    head = body[0]
    if 0x80 <= head <= 0x8E:  # fixmap with room for one more entry
        return bytes((head + 1,)) + _SEQ_KEY + msgpack.packb(seq) + body[1:]
    if head == 0x8F:  # fixmap of 15 becomes a map16 of 16
        return b"\xde\x00\x10" + _SEQ_KEY + msgpack.packb(seq) + body[1:]
    if head == 0xDE:
        count = int.from_bytes(body[1:3], "big") + 1
        return b"\xde" + count.to_bytes(2, "big") + _SEQ_KEY + msgpack.packb(seq) + body[3:]
    raise ValueError(f"stored event body is not a msgpack map (first byte 0x{head:02x})")


def _map_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x80 | count,))
    return b"\xde" + count.to_bytes(2, "big")


def _expand(
    event: StoredEvent, identity: AgentIdentity | None, types: dict[str, bytes]
) -> bytes:
    """One envelope (with `seq`) from a stored body, without decoding the stored entries:
    `seq`, `id`, `type`, `dataschema`, the agent's constants (`specversion`, `site`, `agent`,
    `datacontenttype`, `partitionkey`) and a derived `traceparent` (when the body holds none)
    come first, then the stored map's entries as they are. `types` caches the encoded entries
    from `type` to `partitionkey` per kind. On the forwarder's hot path: byte splicing only."""
    body = event.body
    if body[0] != COMPACT_BODY:
        return _expand_whole(event, identity)
    head = body[1]
    if 0x80 <= head <= 0x8F:
        count, entries = head & 0x0F, 2
    elif head == 0xDE:
        count, entries = int.from_bytes(body[2:4], "big"), 4
    else:
        raise ValueError(f"stored event body is not a msgpack map (second byte 0x{head:02x})")
    fixed = types.get(event.kind)
    if fixed is None:
        if identity is None:
            raise ValueError("a body stored without site and agent needs the agent's identity")
        fixed = types[event.kind] = (
            _TYPE_KEY + msgpack.packb(event.kind)
            + _DATASCHEMA_KEY + msgpack.packb(data_schema_id(event.kind))
            + _constant_entries(identity)
        )
    seq = event.seq
    record_id = event.id
    uuid_text = len(record_id) == 36 and record_id.isascii()
    if _TRACEPARENT_KEY in body and "traceparent" in msgpack.unpackb(body[1:], raw=False):
        # The bytes alone may be a value ("traceparent" as a product name): the decode, only
        # for the bodies that hold them, tells a stored trace from that.
        count, trace = count + 9, b""
    else:  # derived from the id: one string format
        text = traceparent(record_id)
        count, trace = count + 10, _TRACEPARENT_KEY + (
            b"\xd9\x37" + text.encode() if len(text) == 55 else msgpack.packb(text)
        )
    return b"".join((
        _map_header(count),
        _SEQ_KEY + (b"\xce" + seq.to_bytes(4, "big") if 0 <= seq < 2**32 else msgpack.packb(seq)),
        _ID_KEY + (b"\xd9\x24" + record_id.encode() if uuid_text else msgpack.packb(record_id)),
        fixed,
        trace,
        body[entries:],
    ))


def _expand_whole(event: StoredEvent, identity: AgentIdentity | None) -> bytes:
    """A body stored whole (format 1, by older agents): `seq` first, then the stored entries,
    then the published constants it lacks (decoded and encoded again: not the hot path).
    Its `partitionkey` is the site and agent stored in it (else `identity`'s)."""
    whole = with_seq(event.body, event.seq)
    fields = msgpack.unpackb(whole, raw=False)
    site, agent = fields.get("site"), fields.get("agent")
    if not (isinstance(site, str) and isinstance(agent, str)) and identity is not None:
        site, agent = identity.site, identity.agent
    missing = {
        key: value
        for key, value in (
            ("datacontenttype", DATACONTENTTYPE),
            ("dataschema", data_schema_id(event.kind)),
            ("partitionkey", partition_key(site, agent) if site and agent else None),
            ("traceparent", traceparent(str(fields.get("id", event.id)))),
        )
        if key not in fields and value is not None
    }
    if not missing:
        return whole
    return msgpack.packb({**fields, **missing}, use_bin_type=True)


def partition_key(site: str, agent: str) -> str:
    """The `partitionkey` of an agent's events (CloudEvents partitioning extension): a bridge
    to a partitioned log (Kafka) that keys by it keeps each agent's order."""
    return f"{site}/{agent}"


_ID_KEY = msgpack.packb("id")
_TYPE_KEY = msgpack.packb("type")
_DATASCHEMA_KEY = msgpack.packb("dataschema")
# A body that holds these bytes carries its own `traceparent` (the fact came with a trace).
_TRACEPARENT_KEY = msgpack.packb("traceparent")
# Attributes every published event carries that the compact body never stores (an extension
# of one of these names keeps the whole envelope, format 1).
_PUBLISHED_CONSTANTS = ("datacontenttype", "dataschema", "partitionkey")
# Extension names that would shadow an envelope attribute (`encode_body`'s general path).
_ENVELOPE_NAMES = frozenset((
    "specversion", "id", "source", "type", "time", "subject", "site", "agent", "quality",
    "data", "status", *_PUBLISHED_CONSTANTS,
))
# msgspec's msgpack encoder: for the JSON values a body holds (None, bool, int, float, str,
# lists, maps with str keys: what the event models allow), byte for byte what
# `msgpack.packb(..., use_bin_type=True)` writes (tests/unit/test_events_encode.py), several
# times faster (bench/hot_path.py). It would also take a datetime or a set, which msgpack
# refuses; the mapping never puts one in `data`.
_encode_map = msgspec.msgpack.Encoder().encode


@functools.lru_cache(maxsize=16)
def _constant_entries(identity: AgentIdentity) -> bytes:
    """`specversion`, `site`, `agent`, `datacontenttype` and `partitionkey`, encoded once per
    agent."""
    return b"".join(
        msgpack.packb(key) + msgpack.packb(value)
        for key, value in (
            ("specversion", SPECVERSION), ("site", identity.site), ("agent", identity.agent),
            ("datacontenttype", DATACONTENTTYPE),
            ("partitionkey", partition_key(identity.site, identity.agent)),
        )
    )


def array_header(count: int) -> bytes:
    if count < 16:
        return bytes((0x90 | count,))
    if count < 0x10000:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def encode_batch(
    events: Iterable[StoredEvent], identity: AgentIdentity | IdentityHistory | None
) -> bytes:
    """One MQTT payload: a msgpack array of envelopes, from buffered events (either stored
    format), with `seq` and the fields the buffer does not store spliced in: the site and
    agent of `identity`, or of the identity each seq was accepted under (`IdentityHistory`).
    `identity` may be None only when every body is stored whole (format 1); else ValueError."""
    parts = expand_envelopes(events, identity)
    return array_header(len(parts)) + b"".join(parts)


def expand_envelopes(
    events: Iterable[StoredEvent], identity: AgentIdentity | IdentityHistory | None
) -> list[bytes]:
    """Each event's whole envelope as one msgpack map (what `encode_batch` puts in its array);
    `identity` as there."""
    if isinstance(identity, IdentityHistory):
        events = list(events)
        changes = identity.changes
        if len(changes) > 1 and events and min(e.seq for e in events) < changes[-1][0]:
            # Events from before a rename in this batch: splice per event.
            by_identity: dict[AgentIdentity | None, dict[str, bytes]] = {}
            parts = []
            for event in events:
                own = identity.at(event.seq)
                parts.append(_expand(event, own, by_identity.setdefault(own, {})))
            return parts
        identity = changes[-1][1] if changes else None
    types: dict[str, bytes] = {}
    return [_expand(event, identity, types) for event in events]


def decode_batch(payload: bytes) -> list[dict[str, Any]]:
    """The consumer's side: a message payload back into envelope maps."""
    events = msgpack.unpackb(payload, raw=False)
    if not isinstance(events, list):
        raise ValueError("an events message must be a msgpack array")
    return events


def validate_envelope(envelope: dict[str, Any]) -> CloudEvent[Any]:
    """Validate a decoded envelope against its type's contract (raises pydantic's error). A
    retired version's copy (`[contracts] dual_publish_until`) against the retired model."""
    name = str(envelope.get("type"))
    agent_model = AGENT_EVENT_MODELS.get(name) or RETIRED_EVENT_MODELS.get(name)
    if agent_model is not None:
        return CloudEvent[agent_model].model_validate(envelope)  # type: ignore[valid-type]
    event_type = EVENT_TYPES_BY_NAME.get(str(envelope.get("type")))
    if event_type is None:
        raise ValueError(f"unknown event type {envelope.get('type')!r}")
    return CloudEvent[event_type.model].model_validate(envelope)  # type: ignore[name-defined]

