"""The versioned event types (data contracts), their registry and the envelope model.

Invariants:
- A change to a model's fields is a new version: add V2 beside V1, point `EVENT_TYPES` at the
  one this agent emits and keep the other published in `RETIRED_EVENT_MODELS`, so that its JSON
  Schema stays available to consumers of older agents.
- `EVENT_TYPES` maps every `EventKind` to exactly one emitted `EventType` (kind, version,
  model, default delivery class); its `name` (`<kind>.v<N>`) is the envelope's `type`.
- `CloudEvent` is the envelope as consumers see it after decoding (see the package docstring
  for its layout); `json_schemas` prints it per type, for the CLI and the hub.
- The agent's own events (`AGENT_EVENT_MODELS`) come from no signal: their source is
  `/{site}/{agent}/agent`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from events.kinds import EventKind, MachineState, Priority

SPECVERSION = "1.0"


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
class RecordShape:
    """How an MES record becomes an event of a type: the data fields the agent derives itself
    (never a record's column), and those the model requires but a record may leave out (the
    agent fills them in). `signal` is always the agent's."""

    derived: frozenset[str] = frozenset()
    filled_when_missing: frozenset[str] = frozenset()


@dataclass(frozen=True)
class EventType:
    kind: EventKind
    version: int
    model: type[_Data]
    default_priority: Priority
    # None: this type never comes from an MES record (`record_fields`).
    record: RecordShape | None = None

    @property
    def name(self) -> str:
        return f"{self.kind.value}.v{self.version}"

    def record_fields(self) -> tuple[frozenset[str], frozenset[str]]:
        """The (required, optional) fields a record of this type fills, from the model: its
        fields less `signal` and the derived ones; required as the model says, less those the
        agent fills in. ValueError for a type that never comes from a record."""
        if self.record is None:
            raise ValueError(f"{self.name} never comes from an MES record")
        fields = self.model.model_fields
        own = set(fields) - {"signal"} - self.record.derived
        required = {name for name in own if fields[name].is_required()}
        required -= self.record.filled_when_missing
        return frozenset(required), frozenset(own - required)


EVENT_TYPES: dict[EventKind, EventType] = {
    EventKind.TELEMETRY: EventType(EventKind.TELEMETRY, 1, TelemetryV1, Priority.TELEMETRY),
    EventKind.MACHINE_STATE: EventType(
        EventKind.MACHINE_STATE, 1, MachineStateV1, Priority.BUSINESS
    ),
    EventKind.PRODUCTION_COUNT: EventType(
        EventKind.PRODUCTION_COUNT, 1, ProductionCountV1, Priority.BUSINESS,
        # a record's count has no reset of its own
        RecordShape(derived=frozenset({"reset"})),
    ),
    EventKind.QUALITY_ALERT: EventType(
        EventKind.QUALITY_ALERT, 1, QualityAlertV1, Priority.CRITICAL
    ),
    EventKind.MACHINE_DOWNTIME: EventType(
        EventKind.MACHINE_DOWNTIME, 1, MachineDowntimeV1, Priority.BUSINESS,
        # phase (start/end) is derived for a record without it, and so is duration_s
        RecordShape(
            derived=frozenset({"value", "duration_s"}), filled_when_missing=frozenset({"phase"})
        ),
    ),
    EventKind.WORKORDER_COMPLETED: EventType(
        EventKind.WORKORDER_COMPLETED, 2, WorkorderCompletedV2, Priority.BUSINESS, RecordShape()
    ),
    EventKind.WORKORDER_RELEASED: EventType(
        EventKind.WORKORDER_RELEASED, 1, WorkorderReleasedV1, Priority.BUSINESS, RecordShape()
    ),
    EventKind.QUALITY_HOLD: EventType(
        EventKind.QUALITY_HOLD, 1, QualityHoldV1, Priority.CRITICAL, RecordShape()
    ),
    EventKind.INVENTORY_ADJUSTED: EventType(
        EventKind.INVENTORY_ADJUSTED, 1, InventoryAdjustedV1, Priority.BUSINESS, RecordShape()
    ),
    EventKind.MATERIAL_CONSUMED: EventType(
        EventKind.MATERIAL_CONSUMED, 1, MaterialConsumedV1, Priority.BUSINESS, RecordShape()
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


def type_names() -> Sequence[str]:
    return sorted(EVENT_TYPES_BY_NAME)
