"""Canonical events: the envelope, the versioned event types, ids and the wire encoding.

Envelope (CloudEvents 1.0 attributes plus extensions), one msgpack map per event:

    specversion "1.0" | id | source "/{site}/{agent}/{source name}" | type "<name>.v<N>"
    time (RFC 3339, source timestamp) | subject (asset path) | site | agent | quality
    seq (per agent, +1 per accepted event) | data (the type's fields, a map)
    optional context extensions: assetpath (ISA-95) | workorder | product | unmapped
    optional: backfilled ("true": read from the source's history after a gap)

Invariants:
- `id` is a UUIDv5 of the source fact: site, source, signal, source timestamp, value and event
  type. The same fact always yields the same id, so the buffer drops repeats and consumers can
  de-duplicate by id.
- `seq` is not known when an event is built: the buffer assigns it when it accepts the event.
  The buffer stores the envelope *without* `seq`, and without what the record (`id`, `kind`) or
  the agent (`specversion`, `site`, `agent`) already holds (`encode_body`, format 2 at
  `COMPACT_BODY`); the forwarder splices them in as the first map entries when it publishes
  (`encode_batch`), without decoding the rest. Same keys and values as the full envelope; only
  the order of the map entries differs. Bodies stored whole by older agents (format 1) get
  `seq` alone (`with_seq`).
- One MQTT message carries a msgpack array of envelopes (`encode_batch`); its MQTT v5 content
  type is `CONTENT_TYPE`.
"""

from __future__ import annotations

import bisect
import functools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, Protocol, TypeVar, cast

import msgpack
from pydantic import BaseModel, ConfigDict, Field, model_validator

from config.schema import EventKind, MachineState, Priority

SPECVERSION = "1.0"
CONTENT_TYPE = "application/cloudevents-batch+msgpack"
_ID_NAMESPACE = uuid.UUID("6f1c2a4e-2b1d-5c8e-9a57-3d0e6b1f4a10")


# ---------------------------------------------------------------------------------------------
# Event types (data contracts). A change to a model's fields is a new version: add V2, keep V1.


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    signal: str = Field(description="The signal's configured name (or its address).")


class TelemetryV1(_Data):
    """A process value with its unit (UCUM code when known)."""

    value: float | None = Field(description="The value; null when the source reported none.")
    unit: str | None = Field(default=None, description="UCUM unit code, e.g. Cel, bar, kg.")


class MachineStateV1(_Data):
    """A machine changed state (or its state was read for the first time)."""

    state: MachineState
    previous: MachineState | None = Field(
        default=None, description="The state before; null on the first reading."
    )
    previous_duration_s: float | None = Field(
        default=None, ge=0, description="How long the previous state lasted, when known."
    )
    raw: bool | int | float | str = Field(description="The raw value the state was mapped from.")


class ProductionCountV1(_Data):
    """A production counter reading with the increment since the previous reading."""

    count: int = Field(ge=0)
    increment: int | None = Field(
        default=None, ge=0, description="Parts since the previous reading; null on the first one."
    )
    reset: bool = Field(default=False, description="The counter went back (reset) before this.")


class QualityAlertV1(_Data):
    """A quality limit was crossed (`start`) or is back within limits (`end`)."""

    phase: Literal["start", "end"]
    severity: Literal["info", "warning", "critical"]
    value: bool | float | None = Field(description="The value (in `unit`) that crossed.")
    unit: str | None = Field(default=None, description="UCUM unit code of value and limit.")
    limit: float | None = Field(
        default=None, description="The limit crossed (on end: the limit less the hysteresis)."
    )
    started_at: datetime | None = Field(default=None, description="On end: when it started.")
    duration_s: float | None = Field(default=None, ge=0, description="On end: how long.")


class MachineDowntimeV1(_Data):
    """A machine stopped (`start`) or runs again (`end`), with the reason when a signal gives it."""

    phase: Literal["start", "end"]
    reason: str | None = Field(
        default=None, description="Enterprise reason code (from a master-data lookup)."
    )
    reason_raw: str | None = Field(default=None, description="The plant's own reason code.")
    value: bool | float | None = Field(description="The value that started or ended it.")
    started_at: datetime | None = Field(default=None, description="On end: when it started.")
    duration_s: float | None = Field(default=None, ge=0, description="On end: how long.")


class MachineAlarmV1(_Data):
    """An alarm or condition event of the machine (OPC UA Alarms & Conditions), as raised."""

    message: str | None = Field(description="The alarm text the machine reported.")
    severity: int | None = Field(
        default=None, ge=0, le=1000, description="OPC UA severity, 1 (low) to 1000 (high)."
    )
    severity_class: Literal["info", "warning", "critical"] | None = Field(
        default=None, description="Severity in three classes: <400 info, <700 warning."
    )
    condition: str | None = Field(default=None, description="The condition's name.")
    source_name: str | None = Field(default=None, description="The part that raised it.")
    active: bool | None = Field(default=None, description="The condition is active.")
    acknowledged: bool | None = Field(default=None, description="It was acknowledged.")
    event_type: str | None = Field(default=None, description="OPC UA event type NodeId.")


class WorkorderCompletedV1(_Data):
    """A work order was completed (its done bit rose), with the counts read at that moment."""

    order: str = Field(description="The work order id.")
    product: str | None = Field(default=None, description="Enterprise product/material code.")
    good: int | None = Field(default=None, ge=0, description="Good parts of the order.")
    scrap: int | None = Field(default=None, ge=0, description="Scrapped parts of the order.")


class WorkorderCompletedV2(_Data):
    """A work order was completed, with its good and scrapped quantities in `unit`. From an
    MES record, or from PLC signals (the done bit rose; counts in pieces, unit "1")."""

    order: str = Field(min_length=1, description="The work order id.")
    product: str | None = Field(default=None, description="Enterprise product/material code.")
    good: float | None = Field(default=None, ge=0, description="Good quantity, in `unit`.")
    scrap: float | None = Field(default=None, ge=0, description="Scrapped quantity, in `unit`.")
    unit: str = Field(
        min_length=1, description='UCUM unit code of good and scrap ("1": pieces; kg, m, L).'
    )


def _unit_with_quantity(quantity: float | None, unit: str | None) -> None:
    if quantity is not None and unit is None:
        raise ValueError("unit: required when a quantity is given")


class WorkorderReleasedV1(_Data):
    """A work order was released to the shop floor."""

    order: str = Field(min_length=1, description="The work order id.")
    product: str | None = Field(default=None, description="Enterprise product/material code.")
    quantity: float | None = Field(default=None, gt=0, description="Planned quantity, in `unit`.")
    unit: str | None = Field(default=None, min_length=1, description="UCUM unit code.")
    due_at: datetime | None = Field(default=None, description="When it is due (UTC).")

    @model_validator(mode="after")
    def _unit(self) -> WorkorderReleasedV1:
        _unit_with_quantity(self.quantity, self.unit)
        return self


class QualityHoldV1(_Data):
    """A lot was put on quality hold (`placed`) or let go (`released`)."""

    lot: str = Field(min_length=1, description="The lot (batch) id.")
    phase: Literal["placed", "released"]
    reason: str = Field(min_length=1, description="The reason code.")
    material: str | None = Field(default=None, description="Enterprise material code.")
    quantity: float | None = Field(default=None, ge=0, description="Quantity held, in `unit`.")
    unit: str | None = Field(default=None, min_length=1, description="UCUM unit code.")
    note: str | None = Field(default=None, description="Free text from the quality system.")

    @model_validator(mode="after")
    def _unit(self) -> QualityHoldV1:
        _unit_with_quantity(self.quantity, self.unit)
        return self


class InventoryAdjustedV1(_Data):
    """Stock of a material at a location was corrected by `delta` (negative: less)."""

    material: str = Field(min_length=1, description="Enterprise material code.")
    lot: str | None = Field(default=None, description="The lot (batch) id.")
    location: str = Field(min_length=1, description="Storage location.")
    delta: float = Field(description="Quantity change, in `unit`; negative for a reduction.")
    unit: str = Field(min_length=1, description="UCUM unit code.")
    reason: str = Field(min_length=1, description="The reason code.")

    @model_validator(mode="after")
    def _not_zero(self) -> InventoryAdjustedV1:
        if self.delta == 0:
            raise ValueError("delta: an adjustment of 0 changes nothing")
        return self


class MaterialConsumedV1(_Data):
    """A quantity of a material (lot) was consumed, usually by a work order."""

    material: str = Field(min_length=1, description="Enterprise material code.")
    lot: str | None = Field(default=None, description="The lot (batch) id.")
    quantity: float = Field(gt=0, description="Quantity consumed, in `unit`.")
    unit: str = Field(min_length=1, description="UCUM unit code.")
    order: str | None = Field(default=None, description="The work order that consumed it.")
    location: str | None = Field(default=None, description="Where it was taken from.")


@dataclass(frozen=True)
class EventType:
    kind: EventKind
    version: int
    model: type[_Data]
    default_priority: Priority

    @property
    def name(self) -> str:
        return f"{self.kind.value}.v{self.version}"


EVENT_TYPES: dict[EventKind, EventType] = {
    EventKind.TELEMETRY: EventType(EventKind.TELEMETRY, 1, TelemetryV1, Priority.TELEMETRY),
    EventKind.MACHINE_STATE: EventType(
        EventKind.MACHINE_STATE, 1, MachineStateV1, Priority.BUSINESS
    ),
    EventKind.PRODUCTION_COUNT: EventType(
        EventKind.PRODUCTION_COUNT, 1, ProductionCountV1, Priority.BUSINESS
    ),
    EventKind.QUALITY_ALERT: EventType(
        EventKind.QUALITY_ALERT, 1, QualityAlertV1, Priority.CRITICAL
    ),
    EventKind.MACHINE_DOWNTIME: EventType(
        EventKind.MACHINE_DOWNTIME, 1, MachineDowntimeV1, Priority.BUSINESS
    ),
    EventKind.WORKORDER_COMPLETED: EventType(
        EventKind.WORKORDER_COMPLETED, 2, WorkorderCompletedV2, Priority.BUSINESS
    ),
    EventKind.WORKORDER_RELEASED: EventType(
        EventKind.WORKORDER_RELEASED, 1, WorkorderReleasedV1, Priority.BUSINESS
    ),
    EventKind.QUALITY_HOLD: EventType(EventKind.QUALITY_HOLD, 1, QualityHoldV1, Priority.CRITICAL),
    EventKind.INVENTORY_ADJUSTED: EventType(
        EventKind.INVENTORY_ADJUSTED, 1, InventoryAdjustedV1, Priority.BUSINESS
    ),
    EventKind.MATERIAL_CONSUMED: EventType(
        EventKind.MATERIAL_CONSUMED, 1, MaterialConsumedV1, Priority.BUSINESS
    ),
    EventKind.MACHINE_ALARM: EventType(
        EventKind.MACHINE_ALARM, 1, MachineAlarmV1, Priority.CRITICAL
    ),
}
# Versions this agent no longer emits but older agents did: their contracts stay published.
RETIRED_EVENT_MODELS: dict[str, type[_Data]] = {"workorder.completed.v1": WorkorderCompletedV1}
EVENT_TYPES_BY_NAME: dict[str, EventType] = {t.name: t for t in EVENT_TYPES.values()}

DataT = TypeVar("DataT", bound=_Data)


class CloudEvent(BaseModel, Generic[DataT]):
    """The envelope as consumers see it (after decoding one element of a message's array)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    specversion: Literal["1.0"]
    id: str
    source: str
    type: str
    time: datetime
    subject: str
    site: str
    agent: str
    seq: int = Field(ge=1, description="Per-agent sequence: +1 for every accepted event.")
    quality: Literal["good", "uncertain", "bad"]
    status: str | None = Field(
        default=None, description="The source's status name when quality is not good."
    )
    # Context extensions (CloudEvents extension names: lower-case letters and digits only).
    assetpath: str | None = Field(
        default=None, description="ISA-95 path of the asset: enterprise/site/area/line[/cell]."
    )
    workorder: str | None = Field(
        default=None, description="The work order the asset was on, when a signal tells it."
    )
    product: str | None = Field(
        default=None, description="The product the asset was making, when a signal tells it."
    )
    unmapped: str | None = Field(
        default=None,
        description="Codes that no master-data lookup knew, passed through as `table:code`, "
        "comma-separated.",
    )
    backfilled: Literal["true"] | None = Field(
        default=None,
        description="\"true\" when the agent read this value from the source's history after "
        "a connection gap (OPC UA HistoryRead); same id as if it had been read live.",
    )
    data: DataT


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every event type's full envelope, keyed by versioned type name."""
    schemas: dict[str, dict[str, Any]] = {}
    for event_type in EVENT_TYPES.values():
        model = CloudEvent[event_type.model]  # type: ignore[name-defined]
        schema = model.model_json_schema()
        schema["title"] = event_type.name
        schema["properties"]["type"]["const"] = event_type.name
        schemas[event_type.name] = schema
    for name, retired_model in RETIRED_EVENT_MODELS.items():
        schema = CloudEvent[retired_model].model_json_schema()  # type: ignore[valid-type]
        schema["title"] = name
        schema["properties"]["type"]["const"] = name
        schemas[name] = schema
    for name, agent_model in AGENT_EVENT_MODELS.items():
        schema = CloudEvent[agent_model].model_json_schema()  # type: ignore[valid-type]
        schema["title"] = name
        schema["properties"]["type"]["const"] = name
        schemas[name] = schema
    return schemas


# ---------------------------------------------------------------------------------------------
# The agent's own event types (not fed by a signal; source "/{site}/{agent}/agent")


class BufferOverflowV1(BaseModel):
    """The buffer gave events up for room (README, "Delivery guarantees"): what, why, which seqs.

    `evicted` events had been accepted (their seqs are gaps, named in `seq_ranges`); `sampled`
    and `refused` events were never accepted (they used no seq)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    priority_class: Literal["critical", "business", "telemetry"]
    event_type: str = Field(description="The versioned type of the events given up.")
    reason: Literal["evicted", "sampled", "refused"]
    count: int = Field(ge=1)
    seq_ranges: list[tuple[int, int]] = Field(
        default_factory=list, description="Inclusive [first, last] seq ranges of evicted events."
    )


BUFFER_OVERFLOW_TYPE = "agent.buffer.overflow.v1"
AGENT_EVENT_MODELS: dict[str, type[BaseModel]] = {BUFFER_OVERFLOW_TYPE: BufferOverflowV1}


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


# ---------------------------------------------------------------------------------------------
# Building and encoding


@dataclass(frozen=True, slots=True)
class Event:
    """A canonical event before the buffer accepted it (so: without seq)."""

    id: str
    type: EventType
    source: str
    time: datetime
    subject: str
    quality: str
    status: str | None
    data: dict[str, Any]
    extensions: Mapping[str, str] = field(default_factory=dict)  # assetpath, workorder, ...


def event_id(
    *, site: str, source: str, signal: str, timestamp: datetime, value: Any, type_name: str
) -> str:
    """The deterministic id of one source fact turned into one event type."""
    from hashlib import sha1  # as uuid.uuid5 does; cached after the first call

    key = "\x1f".join((site, source, signal, rfc3339(timestamp), repr(value), type_name))
    # uuid.uuid5(_ID_NAMESPACE, key), formatted without building a UUID object (the same text:
    # SHA-1 of namespace + name, version nibble 5, RFC 4122 variant bits 10).
    digest = sha1(_ID_NAMESPACE.bytes + key.encode()).hexdigest()
    variant = "89ab"[int(digest[16], 16) & 3]
    return (
        f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-{variant}{digest[17:20]}-{digest[20:32]}"
    )


def record_id(*, site: str, source: str, key: str, type_name: str) -> str:
    """The deterministic id of one MES record (`key`: file digest and line, idempotency key
    and index, table cursor) turned into one event type: the same record, the same id."""
    return str(uuid.uuid5(_ID_NAMESPACE, "\x1f".join((site, source, "record", key, type_name))))


def rfc3339(timestamp: datetime) -> str:
    """UTC timestamp with microseconds and a Z, e.g. 2026-11-26T15:12:51.123456Z."""
    if timestamp.tzinfo is UTC and type(timestamp) is datetime:
        # Already UTC (what the connectors produce): the same text as below, formatted
        # directly (isoformat spends most of its time on the "+00:00" it would replace).
        return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 (faster than f"")
            timestamp.year, timestamp.month, timestamp.day,
            timestamp.hour, timestamp.minute, timestamp.second, timestamp.microsecond,
        )
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    return timestamp.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


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
    """The envelope without `seq`, as a map: what the hub gets, less the seq."""
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
    """The envelope as the buffer stores it (format 2, see `COMPACT_BODY`): without `seq` and
    without what the record or the agent already holds. Its record must carry `event.id` as
    its id and `event.type.name` as its kind; `site` and `agent` must be the agent's own (the
    forwarder splices its `AgentIdentity` back in)."""
    fields = envelope(event, site=site, agent=agent)
    spliced = {
        "specversion": SPECVERSION, "id": event.id, "type": event.type.name,
        "site": site, "agent": agent,
    }
    if any(fields[key] != value for key, value in spliced.items()):
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
    `seq`, `id`, `type`, `specversion`, `site` and `agent` come first, then the stored map's
    entries as they are. `types` caches the encoded `type` entry (and the agent's constant
    entries after it) per kind. On the forwarder's hot path: byte splicing only."""
    body = event.body
    if body[0] != COMPACT_BODY:
        return with_seq(body, event.seq)  # format 1: all but seq is in the body
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
            _TYPE_KEY + msgpack.packb(event.kind) + _constant_entries(identity)
        )
    seq = event.seq
    record_id = event.id
    return b"".join((
        _map_header(count + 6),
        _SEQ_KEY + (b"\xce" + seq.to_bytes(4, "big") if 0 <= seq < 2**32 else msgpack.packb(seq)),
        _ID_KEY + (
            b"\xd9\x24" + record_id.encode() if len(record_id) == 36 and record_id.isascii()
            else msgpack.packb(record_id)
        ),
        fixed,
        body[entries:],
    ))


_ID_KEY = msgpack.packb("id")
_TYPE_KEY = msgpack.packb("type")


@functools.lru_cache(maxsize=16)
def _constant_entries(identity: AgentIdentity) -> bytes:
    """`specversion`, `site` and `agent`, encoded once per agent."""
    return b"".join(
        msgpack.packb(key) + msgpack.packb(value)
        for key, value in (
            ("specversion", SPECVERSION), ("site", identity.site), ("agent", identity.agent)
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
            return array_header(len(parts)) + b"".join(parts)
        identity = changes[-1][1] if changes else None
    types: dict[str, bytes] = {}
    parts = [_expand(event, identity, types) for event in events]
    return array_header(len(parts)) + b"".join(parts)


def decode_batch(payload: bytes) -> list[dict[str, Any]]:
    """The consumer's side: a message payload back into envelope maps."""
    events = msgpack.unpackb(payload, raw=False)
    if not isinstance(events, list):
        raise ValueError("an events message must be a msgpack array")
    return events


def validate_envelope(envelope: dict[str, Any]) -> CloudEvent[Any]:
    """Validate a decoded envelope against its type's contract (raises pydantic's error)."""
    agent_model = AGENT_EVENT_MODELS.get(str(envelope.get("type")))
    if agent_model is not None:
        return CloudEvent[agent_model].model_validate(envelope)  # type: ignore[valid-type]
    event_type = EVENT_TYPES_BY_NAME.get(str(envelope.get("type")))
    if event_type is None:
        raise ValueError(f"unknown event type {envelope.get('type')!r}")
    return CloudEvent[event_type.model].model_validate(envelope)  # type: ignore[name-defined]


def type_names() -> Sequence[str]:
    return sorted(EVENT_TYPES_BY_NAME)
