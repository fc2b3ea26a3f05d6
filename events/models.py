"""The versioned event types (data contracts), their registry and the envelope model.

Why one module of ~920 lines: it is the contract's catalog, one short model per type and
version (19 of them), read with the registry below that names which version is emitted,
which is retired and what supersedes what; split by kind, that registry and the shared field
conventions (quantities with `unit`, `x-unit` annotations, `_unit_with_quantity`) that
`json_schemas` and `events.compat` rely on would be read across files, and a version change
(V3 beside V2, the registry moved) is one reviewable diff here.

Invariants:
- A change to a model follows the compatibility policy (docs/hub-contract.md, `events.compat`
  enforces it against tests/contracts/): an optional field added keeps the type and bumps its
  `SCHEMA_MINOR_VERSIONS` entry; anything else is a new major version: add V2 beside V1, point
  `EVENT_TYPES` at the one this agent emits and keep the other published in
  `RETIRED_EVENT_MODELS` (its successor in `SUPERSEDED`), so that its JSON Schema stays
  available to consumers of older agents and of the dual-published copies.
- `EVENT_TYPES` maps every `EventKind` to exactly one emitted `EventType` (kind, version,
  model, default delivery class); its `name` (`<kind>.v<N>`) is the envelope's `type`.
- `CloudEvent` is the envelope as consumers see it after decoding (see the package docstring
  for its layout); `json_schemas` publishes it per type, for the CLI and the hub: every field
  described, its unit annotated where it has one (`x-unit`, `x-unit-field`), an example from
  `events.examples`.
- The agent's own events (`AGENT_EVENT_MODELS`) come from no signal: their source is
  `/{site}/{agent}/agent`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from events.compat import (
    EXTENSION_NAME,
    EXTENSION_TYPES,
    SUPERSEDED_BY,
    UNIT,
    UNIT_FIELD,
    VERSION,
)
from events.examples import ENVELOPE, EXAMPLES
from events.kinds import EventKind, MachineState, Priority

SPECVERSION = "1.0"
# The content type of every event's data: a JSON object (in the msgpack batch: a map).
DATACONTENTTYPE = "application/json"
# Stable identifiers of the published schemas (location-independent URNs: a hub registers the
# files of `edge-agent schema --out` under them). The event schema describes one event in the
# CloudEvents JSON format (envelope and data); its `data` subschema has an `$id` of its own,
# which the event's `dataschema` attribute names.
SCHEMA_URN = "urn:plant-edge-agent:events:"


def schema_id(type_name: str) -> str:
    """The `$id` of the event schema of a versioned type, e.g. `...:telemetry.v1`."""
    return f"{SCHEMA_URN}{type_name}"


def data_schema_id(type_name: str) -> str:
    """The `$id` of the data schema of a versioned type: every event's `dataschema`."""
    return f"{SCHEMA_URN}{type_name}:data"


# ---------------------------------------------------------------------------------------------
# Event types (data contracts). An incompatible change is a new version: add V2, keep V1.

# Units in the published schemas (events.compat): a fixed UCUM unit, or the sibling field
# that holds the value's unit.
_SECONDS: dict[str, Any] = {UNIT: "s"}
_PIECES: dict[str, Any] = {UNIT: "1"}
_IN_UNIT: dict[str, Any] = {UNIT_FIELD: "unit"}


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    signal: str = Field(description="The signal's configured name (or its address).")


class TelemetryV1(_Data):
    """A process value with its unit (UCUM code when known)."""

    value: float | None = Field(
        description="The value, in `unit`; null when the source reported none.",
        json_schema_extra=_IN_UNIT,
    )
    unit: str | None = Field(
        default=None, description="UCUM unit code of `value`, e.g. Cel, bar, kg; null: none."
    )


class MachineStateV1(_Data):
    """A machine changed state (or its state was read for the first time)."""

    state: MachineState = Field(description="The state the machine is in now.")
    previous: MachineState | None = Field(
        default=None, description="The state before; null on the first reading."
    )
    previous_duration_s: float | None = Field(
        default=None, ge=0, description="How long the previous state lasted, when known.",
        json_schema_extra=_SECONDS,
    )
    raw: bool | int | float | str = Field(description="The raw value the state was mapped from.")


class ProductionCountV1(_Data):
    """A production counter reading with the increment since the previous reading."""

    count: int = Field(
        ge=0, description="The counter's value: parts counted.", json_schema_extra=_PIECES
    )
    increment: int | None = Field(
        default=None, ge=0, description="Parts since the previous reading; null on the first one.",
        json_schema_extra=_PIECES,
    )
    reset: bool = Field(default=False, description="The counter went back (reset) before this.")


class QualityAlertV1(_Data):
    """A quality limit was crossed (`start`) or is back within limits (`end`)."""

    phase: Literal["start", "end"] = Field(
        description="`start`: the limit was crossed; `end`: the value is back within limits."
    )
    severity: Literal["info", "warning", "critical"] = Field(
        description="The severity the mapping rule gives this limit."
    )
    value: bool | float | None = Field(
        description="The value (in `unit`) that crossed.", json_schema_extra=_IN_UNIT
    )
    unit: str | None = Field(default=None, description="UCUM unit code of value and limit.")
    limit: float | None = Field(
        default=None, description="The limit crossed (on end: the limit less the hysteresis).",
        json_schema_extra=_IN_UNIT,
    )
    started_at: datetime | None = Field(default=None, description="On end: when it started.")
    duration_s: float | None = Field(
        default=None, ge=0, description="On end: how long.", json_schema_extra=_SECONDS
    )


class MachineDowntimeV1(_Data):
    """A machine stopped (`start`) or runs again (`end`), with the reason when a signal gives it."""

    phase: Literal["start", "end"] = Field(
        description="`start`: the machine stopped; `end`: it runs again."
    )
    reason: str | None = Field(
        default=None, description="Enterprise reason code (from a master-data lookup)."
    )
    reason_raw: str | None = Field(default=None, description="The plant's own reason code.")
    value: bool | float | None = Field(description="The value that started or ended it.")
    started_at: datetime | None = Field(default=None, description="On end: when it started.")
    duration_s: float | None = Field(
        default=None, ge=0, description="On end: how long.", json_schema_extra=_SECONDS
    )


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
    good: int | None = Field(
        default=None, ge=0, description="Good parts of the order.", json_schema_extra=_PIECES
    )
    scrap: int | None = Field(
        default=None, ge=0, description="Scrapped parts of the order.",
        json_schema_extra=_PIECES,
    )


class WorkorderCompletedV2(_Data):
    """A work order was completed, with its good and scrapped quantities in `unit`. From an
    MES record, or from PLC signals (the done bit rose; counts in pieces, unit "1")."""

    order: str = Field(min_length=1, description="The work order id.")
    product: str | None = Field(default=None, description="Enterprise product/material code.")
    good: float | None = Field(
        default=None, ge=0, description="Good quantity, in `unit`.", json_schema_extra=_IN_UNIT
    )
    scrap: float | None = Field(
        default=None, ge=0, description="Scrapped quantity, in `unit`.",
        json_schema_extra=_IN_UNIT,
    )
    unit: str = Field(
        min_length=1, description='UCUM unit code of good and scrap ("1": pieces; kg, m, L).'
    )


class WorkorderCompletedV3(_Data):
    """A work order (or one operation of it) was confirmed: its yield, scrap and rework in
    `unit`, final or partial, what was produced where and when, as an ERP posts a production
    confirmation (SAP PP: order confirmation; ISA-95 / B2MML: ProductionPerformance →
    ProductionResponse → SegmentResponse, its MaterialActual of MaterialUse `Produced`). From
    an MES record, or from PLC signals (the done bit rose: order, product, counts in pieces;
    everything else unset). Every field but `order` and `unit` is optional: a plant sends what
    it has (docs/hub-contract.md, "workorder.completed.v3 and ISA-95 / B2MML")."""

    order: str = Field(min_length=1, description="The work (production) order id.")
    operation: str | None = Field(
        default=None, min_length=1,
        description="The operation (activity) of the order confirmed, e.g. `0010`; unset: "
        "the order as a whole.",
    )
    work_center: str | None = Field(
        default=None, min_length=1, description="The work center (resource) it ran on."
    )
    confirmation: str | None = Field(
        default=None, min_length=1,
        description="The MES's confirmation (counter) number, when it numbers them: with "
        "order and operation, the business key of one confirmation.",
    )
    final: bool | None = Field(
        default=None,
        description="true: the final confirmation (the operation or order is finished, no "
        "more quantities follow); false: a partial one; unset: the plant does not say.",
    )
    product: str | None = Field(default=None, description="Enterprise material code produced.")
    good: float | None = Field(
        default=None, ge=0, description="Yield: good quantity confirmed, in `unit`.",
        json_schema_extra=_IN_UNIT,
    )
    scrap: float | None = Field(
        default=None, ge=0, description="Scrap quantity confirmed, in `unit`.",
        json_schema_extra=_IN_UNIT,
    )
    scrap_reason: str | None = Field(
        default=None, min_length=1, description="The plant's reason code for the scrap."
    )
    rework: float | None = Field(
        default=None, ge=0, description="Quantity sent to rework, in `unit`.",
        json_schema_extra=_IN_UNIT,
    )
    rework_reason: str | None = Field(
        default=None, min_length=1, description="The plant's reason code for the rework."
    )
    unit: str = Field(
        min_length=1,
        description='UCUM unit code of good, scrap and rework ("1": pieces; kg, m, L).',
    )
    lot: str | None = Field(
        default=None, min_length=1, description="The lot (batch) the yield was produced as."
    )
    location: str | None = Field(
        default=None, min_length=1, description="The storage location the yield goes to."
    )
    started_at: datetime | None = Field(
        default=None, description="Actual start of the work confirmed (UTC)."
    )
    finished_at: datetime | None = Field(
        default=None, description="Actual end of the work confirmed (UTC)."
    )
    posting_date: date | None = Field(
        default=None,
        description="The posting date in the plant's calendar (YYYY-MM-DD). From a record "
        "without one: the date of the record's time in its source's `time_zone`.",
    )
    personnel: str | None = Field(
        default=None, min_length=1,
        description="Who confirmed it (personnel number), where the plant may say so.",
    )

    @model_validator(mode="after")
    def _in_order(self) -> WorkorderCompletedV3:
        if self.started_at and self.finished_at and self.finished_at < self.started_at:
            raise ValueError("finished_at: before started_at")
        return self


def _unit_with_quantity(quantity: float | None, unit: str | None) -> None:
    if quantity is not None and unit is None:
        raise ValueError("unit: required when a quantity is given")


class WorkorderReleasedV1(_Data):
    """A work order was released to the shop floor."""

    order: str = Field(min_length=1, description="The work order id.")
    product: str | None = Field(default=None, description="Enterprise product/material code.")
    quantity: float | None = Field(
        default=None, gt=0, description="Planned quantity, in `unit`.",
        json_schema_extra=_IN_UNIT,
    )
    unit: str | None = Field(
        default=None, min_length=1, description="UCUM unit code of `quantity`."
    )
    due_at: datetime | None = Field(default=None, description="When it is due (UTC).")

    @model_validator(mode="after")
    def _unit(self) -> WorkorderReleasedV1:
        _unit_with_quantity(self.quantity, self.unit)
        return self


class QualityHoldV1(_Data):
    """A lot was put on quality hold (`placed`) or let go (`released`)."""

    lot: str = Field(min_length=1, description="The lot (batch) id.")
    phase: Literal["placed", "released"] = Field(
        description="`placed`: the lot is on hold; `released`: it was let go."
    )
    reason: str = Field(min_length=1, description="The reason code.")
    material: str | None = Field(default=None, description="Enterprise material code.")
    quantity: float | None = Field(
        default=None, ge=0, description="Quantity held, in `unit`.", json_schema_extra=_IN_UNIT
    )
    unit: str | None = Field(
        default=None, min_length=1, description="UCUM unit code of `quantity`."
    )
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
    delta: float = Field(
        description="Quantity change, in `unit`; negative for a reduction.",
        json_schema_extra=_IN_UNIT,
    )
    unit: str = Field(min_length=1, description="UCUM unit code of `delta`.")
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
    quantity: float = Field(
        gt=0, description="Quantity consumed, in `unit`.", json_schema_extra=_IN_UNIT
    )
    unit: str = Field(min_length=1, description="UCUM unit code of `quantity`.")
    order: str | None = Field(default=None, description="The work order that consumed it.")
    location: str | None = Field(default=None, description="Where it was taken from.")


# ISO 4217 alphabetic currency code: three capital letters (EUR, USD, JPY).
_CURRENCY = r"^[A-Z]{3}$"


class ShipmentConfirmedV1(_Data):
    """One line (item) of an outbound delivery left the plant: goods issue of a shipment
    (ERP: delivery / goods issue; ISA-95: a material lot moved out, MaterialActual of the
    shipping segment). One event per delivery item, so that a file row, a webhook object and a
    table row each say one; a hub groups them by `delivery`."""

    delivery: str = Field(min_length=1, description="The outbound delivery (shipment) number.")
    item: str | None = Field(
        default=None, description="The delivery item (line) number within the delivery."
    )
    order: str | None = Field(default=None, description="The sales order it ships.")
    customer: str | None = Field(default=None, description="The customer (ship-to party).")
    material: str = Field(min_length=1, description="Enterprise material code shipped.")
    lot: str | None = Field(default=None, description="The lot (batch) shipped.")
    quantity: float = Field(
        gt=0, description="Quantity shipped, in `unit`.", json_schema_extra=_IN_UNIT
    )
    unit: str = Field(min_length=1, description="UCUM unit code of `quantity`.")
    carrier: str | None = Field(default=None, description="The carrier (forwarding agent).")
    tracking: str | None = Field(default=None, description="The carrier's tracking number.")
    shipped_at: datetime | None = Field(
        default=None, description="When the goods left (goods issue), UTC."
    )


class AsnReceivedV1(_Data):
    """One line of a supplier's advance ship notice (ASN, EDI DESADV) was received: material
    on its way to the plant (ERP: inbound delivery; ISA-95: expected MaterialLot). One event
    per ASN line; a hub groups them by `asn`."""

    asn: str = Field(min_length=1, description="The advance ship notice number.")
    item: str | None = Field(default=None, description="The ASN line number.")
    supplier: str = Field(min_length=1, description="The supplier (vendor) code.")
    purchase_order: str | None = Field(
        default=None, description="The purchase order (PO) the goods are for."
    )
    material: str = Field(min_length=1, description="Enterprise material code expected.")
    lot: str | None = Field(default=None, description="The supplier's lot (batch), if given.")
    quantity: float = Field(
        gt=0, description="Quantity expected, in `unit`.", json_schema_extra=_IN_UNIT
    )
    unit: str = Field(min_length=1, description="UCUM unit code of `quantity`.")
    expected_at: datetime | None = Field(
        default=None, description="When the goods are expected at the plant, UTC."
    )


class InvoicePostedV1(_Data):
    """An invoice was posted: a customer invoice (billing) or a supplier invoice (invoice
    receipt), with its amount in an ISO 4217 currency (ERP: billing document / invoice
    verification; outside ISA-95 level 3, carried for the plant's local ERP)."""

    invoice: str = Field(min_length=1, description="The invoice (billing document) number.")
    kind: Literal["customer", "supplier"] = Field(
        description="`customer`: billed to a customer; `supplier`: received from a supplier."
    )
    order: str | None = Field(default=None, description="The sales order it bills.")
    purchase_order: str | None = Field(
        default=None, description="The purchase order (PO) it settles (a supplier invoice)."
    )
    partner: str | None = Field(
        default=None, description="The customer or supplier code, as `kind` says."
    )
    amount: float = Field(description="The gross amount, in `currency` (negative: a credit).")
    currency: str = Field(
        pattern=_CURRENCY, description="ISO 4217 alphabetic currency code, e.g. EUR, USD."
    )
    tax: float | None = Field(
        default=None, description="The tax amount included in `amount`, in `currency`."
    )
    posting_date: date | None = Field(
        default=None, description="The posting date in the plant's calendar (YYYY-MM-DD)."
    )

    @model_validator(mode="after")
    def _not_zero(self) -> InvoicePostedV1:
        if self.amount == 0:
            raise ValueError("amount: an invoice of 0 posts nothing")
        return self


class MaterialProducedV1(_Data):
    """Produced material was received into stock: the goods receipt of a work order's output
    (ERP: goods movement 101 to the order; ISA-95 / B2MML: ProductionPerformance →
    SegmentResponse → MaterialActual with MaterialUse `Produced`)."""

    order: str = Field(min_length=1, description="The work (production) order it came from.")
    material: str = Field(min_length=1, description="Enterprise material code produced.")
    lot: str | None = Field(default=None, description="The lot (batch) it was received as.")
    quantity: float = Field(
        gt=0, description="Quantity received, in `unit`.", json_schema_extra=_IN_UNIT
    )
    unit: str = Field(min_length=1, description="UCUM unit code of `quantity`.")
    location: str | None = Field(
        default=None, description="The storage location it was received into."
    )
    posting_date: date | None = Field(
        default=None, description="The posting date in the plant's calendar (YYYY-MM-DD)."
    )


# The most of a rejected record's raw copy an event carries (characters, after redaction).
RAW_COPY_MAX_CHARS = 2048


class RecordRejectedV1(_Data):
    """A business record from an MES interface (a file row, a webhook object, an interface
    table row) that the agent could not take: why and where, the business keys it could read,
    and a bounded, redacted copy of the record. `signal` is the record source's signal (a
    webhook: the route's path; else `record`).

    So the hub can list which production orders failed to post and why. The event's id
    derives from the record's key (`record`): the same bad record again is a repeat."""

    record_type: str = Field(
        min_length=1, description="The event type the record was to become, e.g. "
        "`workorder.completed.v3`."
    )
    interface: Literal["file", "webhook", "table"] = Field(
        description="The MES interface it came from: a file drop, a webhook post, an "
        "interface table (or query)."
    )
    stage: Literal["read", "validate"] = Field(
        description="`read`: a field could not be read as configured (an empty required "
        "cell, a number or time that does not parse); `validate`: it was read but makes no "
        "valid event of `record_type` (the model's rule, e.g. a negative quantity)."
    )
    reason: str = Field(
        min_length=1, max_length=2000,
        description="What was wrong, naming the field or column (never quoting the record).",
    )
    location: str = Field(
        min_length=1, max_length=500,
        description="Where the record is: `<file>:<line>` for a file row, `<route> item <n>` "
        "for a webhook object, `<table> row <cursor>` for a table row.",
    )
    column: str | None = Field(
        default=None, max_length=200,
        description="The column (CSV header, JSON key or path, SQL column) or event field at "
        "fault, when one is.",
    )
    record: str = Field(
        min_length=1, max_length=500,
        description="The record's key at its interface (file digest and line, idempotency "
        "key and index, table cursor): what the event id derives from.",
    )
    set_aside: bool = Field(
        description="The record is also in the agent's dead letters (`edge-agent buffer "
        "dead-letters`); false where the interface has its own channel back (a file's "
        "`rejected/` report, a webhook's 400 answer)."
    )
    order: str | None = Field(default=None, description="The work order, when it could be read.")
    material: str | None = Field(
        default=None, description="The material (or product) code, when it could be read."
    )
    lot: str | None = Field(default=None, description="The lot (batch), when it could be read.")
    quantity: float | None = Field(
        default=None, description="The record's quantity (a quantity, good or delta field), "
        "when it could be read, in `unit`.", json_schema_extra=_IN_UNIT,
    )
    unit: str | None = Field(default=None, description="The unit of `quantity`, as given.")
    raw: str | None = Field(
        default=None, max_length=RAW_COPY_MAX_CHARS,
        description="The record as received (JSON of its fields or cells, a CSV line), with "
        "secret-looking fields and token-looking values replaced by `[redacted]`; cut at "
        f"{RAW_COPY_MAX_CHARS} characters.",
    )
    raw_truncated: bool = Field(default=False, description="`raw` was cut short.")


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

    @functools.cached_property
    def name(self) -> str:  # read several times per event: made once
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
        EventKind.WORKORDER_COMPLETED, 3, WorkorderCompletedV3, Priority.BUSINESS, RecordShape()
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
    EventKind.SHIPMENT_CONFIRMED: EventType(
        EventKind.SHIPMENT_CONFIRMED, 1, ShipmentConfirmedV1, Priority.BUSINESS, RecordShape()
    ),
    EventKind.ASN_RECEIVED: EventType(
        EventKind.ASN_RECEIVED, 1, AsnReceivedV1, Priority.BUSINESS, RecordShape()
    ),
    EventKind.INVOICE_POSTED: EventType(
        EventKind.INVOICE_POSTED, 1, InvoicePostedV1, Priority.BUSINESS, RecordShape()
    ),
    EventKind.MATERIAL_PRODUCED: EventType(
        EventKind.MATERIAL_PRODUCED, 1, MaterialProducedV1, Priority.BUSINESS, RecordShape()
    ),
    EventKind.RECORD_REJECTED: EventType(
        EventKind.RECORD_REJECTED, 1, RecordRejectedV1, Priority.CRITICAL
    ),
}
# Versions this agent no longer emits but older agents did: their contracts stay published.
RETIRED_EVENT_MODELS: dict[str, type[_Data]] = {
    "workorder.completed.v1": WorkorderCompletedV1,
    "workorder.completed.v2": WorkorderCompletedV2,
}
EVENT_TYPES_BY_NAME: dict[str, EventType] = {t.name: t for t in EVENT_TYPES.values()}

DataT = TypeVar("DataT", bound=_Data)


class CloudEvent(BaseModel, Generic[DataT]):
    """The envelope as consumers see it (after decoding one element of a message's array)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    specversion: Literal["1.0"] = Field(description="CloudEvents version: always 1.0.")
    id: str = Field(
        description="Stable UUIDv5 of the source fact: the same fact always has the same id, "
        "so a consumer drops duplicates by it."
    )
    source: str = Field(
        description="URI reference of where the fact came from: `/{site}/{agent}/{source}` "
        "(`/{site}/{agent}/agent` for the agent's own events)."
    )
    type: str = Field(description="The versioned event type, `<kind>.v<major>`.")
    time: datetime = Field(
        description="The source timestamp of the fact (RFC 3339, UTC, microseconds)."
    )
    subject: str = Field(description="The asset the fact is about, e.g. `line1/filler`.")
    site: str = Field(description="The plant's site id (`[agent] site`).")
    agent: str = Field(description="The agent's id, unique within its site (`[agent] id`).")
    seq: int = Field(ge=1, description="Per-agent sequence: +1 for every accepted event.")
    # Spliced into every published event by the forwarder (events.wire), never stored.
    datacontenttype: Literal["application/json"] = Field(
        description="The content type of `data`: always a JSON object."
    )
    dataschema: str = Field(description="The URI (`$id`) of the data schema of this type.")
    partitionkey: str = Field(
        description="`{site}/{agent}` (CloudEvents partitioning extension): a bridge to a "
        "partitioned log (Kafka) that keys by it keeps each agent's order."
    )
    traceparent: str = Field(
        pattern=r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        description="W3C trace context (CloudEvents distributed-tracing extension): the MES "
        "request's trace when the fact came with one, else a trace rooted at this event.",
    )
    tracestate: str | None = Field(
        default=None, description="W3C tracestate received with the fact, passed through."
    )
    correlationid: str | None = Field(
        default=None,
        description="Ties the events of one business object together (a work order's "
        "release, consumption, completion and hold): `<object>:<id>`, e.g. `order:WO-1`.",
    )
    causationid: str | None = Field(
        default=None,
        description="The `id` of the event this one was derived from (an alert from the "
        "telemetry it crossed on, a completion from counters, a dual-published copy of a "
        "retired version from its successor).",
    )
    supersedes: str | None = Field(
        default=None,
        description="The `id` of the event this one replaces: a business record sent again "
        "with the same business key (`business_key` of its source) and other content. A "
        "consumer replaces that event's fact with this one's, never counts both.",
    )
    supersedesreason: Literal["correction"] | None = Field(
        default=None,
        description="Why it replaces `supersedes`: `correction` (the record was corrected "
        "at its source and sent again).",
    )
    quality: Literal["good", "uncertain", "bad"] = Field(
        description="The source's quality of the value: `bad` values are forwarded, marked, "
        "with the source's status name in `status`."
    )
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
    data: DataT = Field(description="The event type's data (its own schema: `dataschema`).")


def json_schemas() -> dict[str, dict[str, Any]]:
    """The published JSON Schema of every event type (emitted, retired and the agent's own),
    keyed by versioned type name: what `edge-agent schema` prints and `schema check` compares
    (docs/hub-contract.md, "Schemas").

    Each is one event in the CloudEvents JSON format, draft 2020-12, `$id` `schema_id(type)`;
    its `data` subschema is a resource of its own, `$id` `data_schema_id(type)` (every event's
    `dataschema`), with its own `$defs`. Both are open as the compatibility policy says: the
    data admits other fields, the envelope other attributes named and typed as CloudEvents
    extensions are. The agent's own models stay closed: it never sends what they do not list.
    """
    models: dict[str, type[BaseModel]] = {t.name: t.model for t in EVENT_TYPES.values()}
    models.update(RETIRED_EVENT_MODELS)
    models.update(AGENT_EVENT_MODELS)
    return {name: _event_schema(name, model) for name, model in models.items()}


SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# The minor version of each published schema (`x-version` "MAJOR.MINOR", 0 when not named
# here): a compatible change (an optional field added, docs/hub-contract.md "Compatibility
# policy") bumps its type's entry; anything else is a new major version, a new type.
# 1: the envelope's `supersedes` and `supersedesreason` (issue 16, corrections).
SCHEMA_MINOR_VERSIONS: dict[str, int] = {
    "agent.buffer.overflow.v1": 1,
    "inventory.adjusted.v1": 1,
    "machine.alarm.v1": 1,
    "machine.downtime.v1": 1,
    "machine.state.v1": 1,
    "material.consumed.v1": 1,
    "production.count.v1": 1,
    "quality.alert.v1": 1,
    "quality.hold.v1": 1,
    "telemetry.v1": 1,
    "workorder.completed.v1": 1,
    "workorder.completed.v2": 1,
    "workorder.released.v1": 1,
}
# Every retired version and the version that replaced it (its schema's `x-superseded-by`).
SUPERSEDED: dict[str, str] = {
    # v1's copies are made from v3 now (`events.versions`): v3 is what replaces it.
    "workorder.completed.v1": "workorder.completed.v3",
    "workorder.completed.v2": "workorder.completed.v3",
}


def _event_schema(type_name: str, data_model: type[BaseModel]) -> dict[str, Any]:
    envelope = CloudEvent[data_model].model_json_schema()  # type: ignore[valid-type]
    envelope.pop("$defs", None)  # the data model's: the data resource carries its own
    properties: dict[str, Any] = envelope["properties"]
    properties.pop("data")
    if "$ref" in json.dumps(properties):
        raise RuntimeError(f"{type_name}: an envelope attribute refers to a definition")
    data = data_model.model_json_schema()
    data["additionalProperties"] = True  # consumers ignore the fields they do not know
    data["description"] = " ".join((data_model.__doc__ or "").split())
    for each in (properties, data["properties"]):
        for attribute in each.values():
            attribute.pop("title", None)  # pydantic's, made from the field name
    properties["type"]["const"] = type_name
    properties["dataschema"]["const"] = data_schema_id(type_name)
    data = properties["data"] = {"$id": data_schema_id(type_name), **data}
    major = type_name.rpartition(".v")[2]
    schema: dict[str, Any] = {
        "$schema": SCHEMA_DIALECT,
        "$id": schema_id(type_name),
        "title": type_name,
        "description": f"One `{type_name}` event in the CloudEvents JSON format. "
        + " ".join((data_model.__doc__ or "").split("\n\n")[0].split()),
        VERSION: f"{major}.{SCHEMA_MINOR_VERSIONS.get(type_name, 0)}",
    }
    if type_name in SUPERSEDED:
        schema["description"] += (
            f" Retired: superseded by `{SUPERSEDED[type_name]}`; agents publish it beside its "
            "successor only within their dual-publish window (`[contracts] "
            "dual_publish_until`)."
        )
        schema["deprecated"] = True
        schema[SUPERSEDED_BY] = SUPERSEDED[type_name]
    schema.update(
        type="object",
        properties=properties,
        required=envelope["required"],
        # Extension attributes as CloudEvents 1.0 names and types them: a consumer ignores
        # those it does not know (docs/hub-contract.md, "Compatibility policy").
        propertyNames={"pattern": EXTENSION_NAME},
        additionalProperties={"type": list(EXTENSION_TYPES)},
        examples=[_example(type_name)],
    )
    data["examples"] = [schema["examples"][0]["data"]]
    return schema


def _example(type_name: str) -> dict[str, Any]:
    """The type's example (events.examples) as a whole event, attributes in a reader's order."""
    example = {**ENVELOPE, **EXAMPLES[type_name]}
    example.update(type=type_name, dataschema=data_schema_id(type_name))
    order = [name for name in CloudEvent.model_fields if name in example]
    return {name: example[name] for name in order}


# ---------------------------------------------------------------------------------------------
# The agent's own event types (not fed by a signal; source "/{site}/{agent}/agent")


class BufferOverflowV1(BaseModel):
    """The buffer gave events up for room: what, why, which seqs.

    `evicted` events had been accepted (their seqs are gaps, named in `seq_ranges`); `sampled`
    and `refused` events were never accepted (they used no seq)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    priority_class: Literal["critical", "business", "telemetry"] = Field(
        description="The delivery class of the events given up."
    )
    event_type: str = Field(description="The versioned type of the events given up.")
    reason: Literal["evicted", "sampled", "refused"] = Field(
        description="`evicted`: accepted events deleted for room; `sampled`: new events not "
        "kept by the sampling policy; `refused`: new events turned away."
    )
    count: int = Field(ge=1, description="How many events were given up.")
    seq_ranges: list[tuple[int, int]] = Field(
        default_factory=list, description="Inclusive [first, last] seq ranges of evicted events."
    )


BUFFER_OVERFLOW_TYPE = "agent.buffer.overflow.v1"
AGENT_EVENT_MODELS: dict[str, type[BaseModel]] = {BUFFER_OVERFLOW_TYPE: BufferOverflowV1}


@dataclass(frozen=True, slots=True, init=False)
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

    def __init__(
        self,
        id: str,
        type: EventType,
        source: str,
        time: datetime,
        subject: str,
        quality: str,
        status: str | None,
        data: dict[str, Any],
        extensions: Mapping[str, str] | None = None,
    ) -> None:
        # The dataclass's own __init__ (`extensions` defaults to a new dict), in half its
        # time (one per event): the slots' setters instead of `object.__setattr__` per field.
        (
            set_id, set_type, set_source, set_time, set_subject, set_quality, set_status,
            set_data, set_extensions,
        ) = _EVENT_SETTERS
        set_id(self, id)
        set_type(self, type)
        set_source(self, source)
        set_time(self, time)
        set_subject(self, subject)
        set_quality(self, quality)
        set_status(self, status)
        set_data(self, data)
        set_extensions(self, {} if extensions is None else extensions)


_EVENT_SETTERS: tuple[Callable[[Event, Any], None], ...] = tuple(
    getattr(Event, each.name).__set__ for each in fields(Event)
)


def type_names() -> Sequence[str]:
    return sorted(EVENT_TYPES_BY_NAME)
