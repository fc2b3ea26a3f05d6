"""The hub formats: how buffered events become MQTT messages, chosen per hub (`[hub] format`).

    name                        one message                 MQTT v5 Content Type
    cloudevents-batch-msgpack   a msgpack array of events   application/cloudevents-batch+msgpack
    cloudevents-batch-json      a JSON array of events      application/cloudevents-batch+json
    cloudevents-structured      one event, CloudEvents JSON application/cloudevents+json
    cloudevents-binary          one event: its attributes   application/json (the event's
                                as user properties, its     datacontenttype)
                                data as the payload

The last two are the CloudEvents MQTT protocol binding's structured and binary content modes;
the JSON batch is the CloudEvents JSON event format's batch format; the msgpack batch is this
project's own (the same envelopes, encoded as msgpack maps; no SDK reads it).

Invariants:
- Every format carries the same events: the envelope `events.wire` splices from a stored body
  (`seq`, `id`, `type`, the agent's constants, `datacontenttype`, `dataschema`,
  `partitionkey`, `traceparent`). Only the encoding differs: decoded with `decode_message`,
  one event is the same map in all four (tests/unit/test_events.py).
- `max_events_per_message`: 1 for the two binding modes (the binding has no batch), None for
  the batches (the forwarder's `batch_max_events` and the broker's size limits decide).
- `encode` raises ValueError for an event it cannot encode (a stored body that is not a map,
  data that JSON cannot carry): the forwarder sets such an event aside as a dead letter and
  the rest go on.
- The forwarder's own MQTT user properties (`backlog=true`, `replay=true`:
  `DELIVERY_PROPERTIES`) say how a message was sent, not what an event is. In binary mode they
  share the user-property namespace with the event's attributes, so no attribute may have
  either name: the envelope model has no such field (a test checks it), the binary encoder
  refuses an event that has one, and `decode_message` never takes them for attributes.
- Binary mode: every attribute but `datacontenttype` is one user property, its name the
  attribute's, its value the attribute's canonical string (CloudEvents type system: an Integer
  in decimal, a Boolean `true`/`false`, a Timestamp in RFC 3339, as the JSON form has it);
  `datacontenttype` is the MQTT Content Type; the payload is the data as JSON.
- `decode_message` is the consumer's side for this project's own tools (`edge-agent tail`, the
  demo, the test kit, the benchmarks); a hub reads the binding modes and the JSON batch with
  any CloudEvents SDK, without it (docs/hub-contract.md, "Formats").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, get_args

import msgpack

from events.models import DATACONTENTTYPE, CloudEvent
from events.wire import (
    CONTENT_TYPE as BATCH_MSGPACK_CONTENT_TYPE,
)
from events.wire import (
    AgentIdentity,
    IdentityHistory,
    StoredEvent,
    decode_batch,
    encode_batch,
    expand_envelopes,
)

__all__ = [
    "BACKLOG_PROPERTY",
    "DEFAULT_FORMAT",
    "DELIVERY_PROPERTIES",
    "FORMATS",
    "REPLAY_PROPERTY",
    "TOPIC_MARKERS",
    "FormatName",
    "WireFormat",
    "WireMessage",
    "decode_message",
    "marked_topic",
    "sniff_content_type",
    "split_marker",
    "wire_format",
]

FormatName = Literal[
    "cloudevents-batch-msgpack",
    "cloudevents-batch-json",
    "cloudevents-structured",
    "cloudevents-binary",
]
# Chosen from bench/wire_formats.py (docs/performance.md, "Hub formats"): the only format that
# keeps the backlog drain target; the others are for hubs that read CloudEvents as such.
DEFAULT_FORMAT: Final[FormatName] = "cloudevents-batch-msgpack"

BATCH_JSON_CONTENT_TYPE = "application/cloudevents-batch+json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
_CLOUDEVENTS_MEDIA_TYPE = "application/cloudevents"

# MQTT v5 user properties the forwarder adds to a message (how it was sent, not what it holds).
BACKLOG_PROPERTY = ("backlog", "true")
REPLAY_PROPERTY = ("replay", "true")
DELIVERY_PROPERTIES = frozenset({BACKLOG_PROPERTY[0], REPLAY_PROPERTY[0]})
# On MQTT 3.1.1 (no user properties) a marker is one more topic level, `{topic}/backlog`; by
# that level. Event topics end in a type (`.vN`), so a type never reads as a marker.
TOPIC_MARKERS: Final[Mapping[str, tuple[str, str]]] = {
    BACKLOG_PROPERTY[0]: BACKLOG_PROPERTY,
    REPLAY_PROPERTY[0]: REPLAY_PROPERTY,
}


def marked_topic(topic: str, marker: tuple[str, str]) -> str:
    """`topic` with the delivery marker (`BACKLOG_PROPERTY`, `REPLAY_PROPERTY`) as a last level."""
    return f"{topic}/{marker[0]}"


def split_marker(topic: str) -> tuple[str, tuple[str, str] | None]:
    """The topic without its marker level, and the marker (as the v5 user property) if any."""
    head, _, last = topic.rpartition("/")
    marker = TOPIC_MARKERS.get(last)
    if marker is None or not head:
        return topic, None
    return head, marker

Identity = AgentIdentity | IdentityHistory | None


@dataclass(frozen=True, slots=True)
class WireMessage:
    """One MQTT message's payload and properties (the forwarder adds its delivery ones)."""

    payload: bytes
    content_type: str
    user_properties: tuple[tuple[str, str], ...] = ()


class WireFormat(Protocol):
    """One hub format (module docstring)."""

    @property
    def name(self) -> FormatName: ...

    @property
    def content_type(self) -> str:
        """The MQTT v5 Content Type of its messages (binary mode: the data's)."""
        ...

    @property
    def max_events_per_message(self) -> int | None:
        """At most this many events in one message; None: no limit of the format's own."""
        ...

    def encode(self, events: Sequence[StoredEvent], identity: Identity) -> WireMessage:
        """One message of `events` (buffered, in order; at most `max_events_per_message`),
        spliced with `identity` as `events.wire.encode_batch` says. ValueError: an event
        cannot be encoded in this format."""
        ...


@dataclass(frozen=True, slots=True)
class _BatchMsgpack:
    name: FormatName = "cloudevents-batch-msgpack"
    content_type: str = BATCH_MSGPACK_CONTENT_TYPE
    max_events_per_message: int | None = None

    def encode(self, events: Sequence[StoredEvent], identity: Identity) -> WireMessage:
        return WireMessage(encode_batch(events, identity), self.content_type)


@dataclass(frozen=True, slots=True)
class _BatchJson:
    name: FormatName = "cloudevents-batch-json"
    content_type: str = BATCH_JSON_CONTENT_TYPE
    max_events_per_message: int | None = None

    def encode(self, events: Sequence[StoredEvent], identity: Identity) -> WireMessage:
        parts = [_json(envelope) for envelope in _envelopes(events, identity)]
        return WireMessage(b"[" + b",".join(parts) + b"]", self.content_type)


@dataclass(frozen=True, slots=True)
class _Structured:
    name: FormatName = "cloudevents-structured"
    content_type: str = STRUCTURED_CONTENT_TYPE
    max_events_per_message: int | None = 1

    def encode(self, events: Sequence[StoredEvent], identity: Identity) -> WireMessage:
        [envelope] = _envelopes(_one(events), identity)
        return WireMessage(_json(envelope), self.content_type)


@dataclass(frozen=True, slots=True)
class _Binary:
    name: FormatName = "cloudevents-binary"
    content_type: str = DATACONTENTTYPE
    max_events_per_message: int | None = 1

    def encode(self, events: Sequence[StoredEvent], identity: Identity) -> WireMessage:
        [envelope] = _envelopes(_one(events), identity)
        reserved = DELIVERY_PROPERTIES.intersection(envelope)
        if reserved:
            raise ValueError(
                f"attribute(s) {sorted(reserved)} would read as the forwarder's own user "
                "properties in binary mode"
            )
        data = envelope.pop("data", None)
        content_type = envelope.pop("datacontenttype", self.content_type)
        properties = tuple(
            (name, _canonical_string(value))
            for name, value in envelope.items()
            if value is not None
        )
        payload = b"" if data is None else _json(data)
        return WireMessage(payload, str(content_type), properties)


FORMATS: Mapping[FormatName, WireFormat] = {
    fmt.name: fmt for fmt in (_BatchMsgpack(), _BatchJson(), _Structured(), _Binary())
}
assert set(FORMATS) == set(get_args(FormatName))


def wire_format(name: FormatName) -> WireFormat:
    return FORMATS[name]


def _one(events: Sequence[StoredEvent]) -> Sequence[StoredEvent]:
    if len(events) != 1:
        raise ValueError(f"a binding-mode message carries one event, not {len(events)}")
    return events


def _envelopes(events: Iterable[StoredEvent], identity: Identity) -> list[dict[str, Any]]:
    envelopes = []
    for part in expand_envelopes(events, identity):
        envelope = msgpack.unpackb(part, raw=False)
        if not isinstance(envelope, dict):  # pragma: no cover - _expand makes maps only
            raise ValueError("an event envelope must be a map")
        envelopes.append(envelope)
    return envelopes


_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _json(value: Any) -> bytes:
    """Compact UTF-8 JSON; ValueError for what JSON cannot carry (NaN, bytes)."""
    try:
        return _JSON.encode(value).encode()
    except TypeError as error:
        raise ValueError(f"not representable in JSON: {error}") from error


def _canonical_string(value: object) -> str:
    """A CloudEvents attribute value's canonical string (binary mode's user property)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    # Not a CloudEvents attribute type (only an old, hand-made body could hold one): as JSON.
    return _json(value).decode()


# Attributes of the envelope whose CloudEvents type is Integer (`seq`): binary mode carries
# them as decimal text, `decode_message` turns them back into numbers.
_INTEGER_ATTRIBUTES = frozenset(
    name for name, field in CloudEvent.model_fields.items() if field.annotation is int
)


def sniff_content_type(payload: bytes) -> str:
    """The format of an event message that came without a Content Type or attributes (an MQTT
    3.1.1 hop drops every property), told by its first byte: ``[`` the JSON batch, ``{``
    structured mode, anything else the msgpack batch (a msgpack array starts with 0x90-0x9f,
    0xdc or 0xdd, never with ``[`` or ``{``). Binary mode cannot be told: it needs its user
    properties, so it needs MQTT v5 (docs/hub-contract.md, "MQTT 3.1.1 hubs")."""
    first = payload.lstrip()[:1]
    if first == b"[":
        return BATCH_JSON_CONTENT_TYPE
    if first == b"{":
        return STRUCTURED_CONTENT_TYPE
    return BATCH_MSGPACK_CONTENT_TYPE


def decode_message(
    payload: bytes, content_type: str | None, user_properties: Iterable[tuple[str, str]] = ()
) -> list[dict[str, Any]]:
    """The consumer's side, any format: a message back into event maps in the JSON form (as
    the structured mode has them: `time` a string, `seq` a number). The format is told by the
    content type, as the binding says: a CloudEvents media type is structured (or a batch),
    anything else is binary mode; no content type and no `specversion` user property (an MQTT
    3.1.1 hop, which has no properties): told by the payload (`sniff_content_type`).
    ValueError for a message that is none of them."""
    user_properties = tuple(user_properties)
    if content_type is None and not any(name == "specversion" for name, _ in user_properties):
        content_type = sniff_content_type(payload)
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type == BATCH_MSGPACK_CONTENT_TYPE:
        return decode_batch(payload)
    if media_type == BATCH_JSON_CONTENT_TYPE:
        events = json.loads(payload)
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise ValueError("a JSON batch must be an array of event objects")
        return events
    if media_type == STRUCTURED_CONTENT_TYPE:
        event = json.loads(payload)
        if not isinstance(event, dict):
            raise ValueError("a structured event must be a JSON object")
        return [event]
    if media_type.startswith(_CLOUDEVENTS_MEDIA_TYPE):
        raise ValueError(f"unknown CloudEvents format {content_type!r}")
    attributes: dict[str, Any] = {}
    for name, value in user_properties:
        if name in DELIVERY_PROPERTIES:
            continue
        attributes[name] = int(value) if name in _INTEGER_ATTRIBUTES else value
    if "specversion" not in attributes:
        raise ValueError("not a CloudEvent: no specversion user property")
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    if payload:
        attributes["data"] = json.loads(payload)
    return [attributes]
