"""The event vocabulary: kinds, machine states and delivery classes.

Invariants:
- An `EventKind` value is the unversioned type name, as an OT engineer writes it in the config
  (`event = "machine.state"`); the versioned name on the wire (`machine.state.v1`) comes from
  its `events.models.EventType`.
- `Priority` orders delivery: a higher class drains first after an outage. `PriorityClass` is
  its lower-case member name, as written in the config (`[buffer] priorities`).
- `AGENT_EVENT_KINDS` are the kinds the agent itself produces (not fed by a signal).
"""

from __future__ import annotations

import enum
from typing import Literal


class EventKind(enum.StrEnum):
    """The canonical event types a signal can feed (unversioned names, as written in config)."""

    TELEMETRY = "telemetry"
    MACHINE_STATE = "machine.state"
    PRODUCTION_COUNT = "production.count"
    QUALITY_ALERT = "quality.alert"
    MACHINE_DOWNTIME = "machine.downtime"
    WORKORDER_COMPLETED = "workorder.completed"
    # An OPC UA Alarms & Conditions event (a signal with mode = "events"; issue 9).
    MACHINE_ALARM = "machine.alarm"
    # Business events from MES records (file drop, webhook, interface table; issue 4).
    WORKORDER_RELEASED = "workorder.released"
    QUALITY_HOLD = "quality.hold"
    INVENTORY_ADJUSTED = "inventory.adjusted"
    MATERIAL_CONSUMED = "material.consumed"
    # ERP-facing business events from MES/legacy-ERP records (issue 16).
    SHIPMENT_CONFIRMED = "shipment.confirmed"
    ASN_RECEIVED = "asn.received"
    INVOICE_POSTED = "invoice.posted"
    MATERIAL_PRODUCED = "material.produced"
    # A business record the agent could not take (issue 16): made by the agent from the
    # rejected record, never fed by a signal or configured as a record's event.
    RECORD_REJECTED = "record.rejected"


# What a machine is doing, as a machine.state event names it. No docstring: it would become the
# description in every published JSON Schema that uses it (tests/contracts).
class MachineState(enum.StrEnum):
    RUNNING = "running"
    IDLE = "idle"
    DOWN = "down"
    FAULT = "fault"


class Priority(enum.IntEnum):
    """Delivery class: higher drains first after an outage."""

    TELEMETRY = 0
    BUSINESS = 1
    CRITICAL = 2


# `Priority` by name, as the config writes a delivery class.
PriorityClass = Literal["critical", "business", "telemetry"]
# Event types the agent itself produces (not fed by a signal), by unversioned name.
AGENT_EVENT_KINDS = ("agent.buffer.overflow",)
