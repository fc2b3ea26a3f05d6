"""Down-conversions: how an event of the current major version becomes one of a retired version,
so that the retired version can be published beside it for a window (`[contracts]
dual_publish_until`, docs/hub-contract.md "Retiring a major version").

Invariants:
- `DOWN_CONVERSIONS` has one entry per retired version that can be published again, keyed by
  its versioned name; each names the version it is made from (`successor`, an emitted type)
  and the retired type as an `EventType` (same kind, its own version and model).
- `DownConversion.convert` is pure: the retired event is the successor's copy, with the
  retired version's data (validated by the retired model), the same `time`, `source`,
  `subject`, `quality`, `status` and extensions, and its own id (`retired_id`: derived from
  the successor's id and the retired type's name, so a repeat of the successor makes the same
  copy and is dropped as a duplicate too). Its `causationid` is the successor's id (it was
  derived from it: a consumer of both versions drops the copy by it); its `traceparent` keeps
  the successor's trace (a span of its own in it).
- Data the retired version cannot say is never forced into it: `convert` raises
  `NotConvertible` with the reason, and the copy is not made (the caller counts it).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from events.ids import traceparent
from events.kinds import EventKind, Priority
from events.models import (
    EVENT_TYPES,
    Event,
    EventType,
    WorkorderCompletedV1,
    WorkorderCompletedV2,
)

# The namespace of the retired copies' ids (`retired_id`): part of the contract, like
# `events.ids`'s own: changing it changes the id of every copy.
_RETIRED_ID_NAMESPACE = uuid.UUID("2a7d4c19-8e3b-5f60-b1d2-94c7e0a5f3b8")


class NotConvertible(ValueError):
    """This event cannot be said in the retired version; the message says why."""


def retired_id(successor_id: str, type_name: str) -> str:
    """The id of the `type_name` copy of the event `successor_id`."""
    return str(uuid.uuid5(_RETIRED_ID_NAMESPACE, f"{successor_id}\x1f{type_name}"))


@dataclass(frozen=True)
class DownConversion:
    """How events of `successor` become events of the retired `retired` (module docstring)."""

    retired: EventType
    successor: EventType
    # The successor's data in, the retired version's data out (NotConvertible: it cannot).
    data: Callable[[Mapping[str, Any]], dict[str, Any]]

    def convert(self, event: Event) -> Event:
        """The retired version's copy of `event` (of `successor`); NotConvertible if it
        cannot be made."""
        if event.type != self.successor:
            raise ValueError(f"{event.type.name} is not {self.successor.name}")
        own_id = retired_id(event.id, self.retired.name)
        extensions = dict(event.extensions)
        parent = extensions.get("traceparent") or traceparent(event.id)
        extensions["traceparent"] = traceparent(own_id, parent)
        extensions["causationid"] = event.id
        if "supersedes" in extensions:  # the retired copy replaces the earlier copy
            extensions["supersedes"] = retired_id(extensions["supersedes"], self.retired.name)
        data = self.retired.model.model_validate(self.data(event.data)).model_dump(mode="json")
        return replace(event, id=own_id, type=self.retired, data=data, extensions=extensions)


def _workorder_completed_v2(data: Mapping[str, Any]) -> dict[str, Any]:
    """v3 → v2: v2 says "the work order was completed" with its good and scrap. A partial
    confirmation (`final` false) is not a completion: a v2 consumer would count its quantities
    as the order's, and again with the next one, so it has no v2. What v2 has no field for
    (operation, work center, rework, lot, location, times, posting date, personnel) is left
    out: a v2 consumer never read it."""
    if data.get("final") is False:
        raise NotConvertible(
            "a partial confirmation (final false): workorder.completed.v2 says the order was "
            "completed"
        )
    return {key: data.get(key) for key in ("signal", "order", "product", "good", "scrap")} | {
        "unit": data["unit"]
    }


def _workorder_completed_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """v3 → v1, through v2 (`_workorder_completed_v2`, so a partial confirmation has no v1
    either): v1 counts whole pieces (integers, no unit); v2 says quantities in `unit`. A
    completion in another unit than pieces ("1"), or with a fraction of a piece, has no v1."""
    data = _workorder_completed_v2(data)
    unit = data.get("unit")
    if unit != "1":
        raise NotConvertible(f"quantities in {unit!r}: workorder.completed.v1 counts pieces")
    counts: dict[str, int | None] = {}
    for key in ("good", "scrap"):
        quantity = data.get(key)
        if quantity is not None and not float(quantity).is_integer():
            raise NotConvertible(f"{key} {quantity} is not a whole number of pieces")
        counts[key] = None if quantity is None else int(quantity)
    return {
        "signal": data["signal"],
        "order": data["order"],
        "product": data.get("product"),
        **counts,
    }


_WORKORDER_COMPLETED_V1 = EventType(
    EventKind.WORKORDER_COMPLETED, 1, WorkorderCompletedV1, Priority.BUSINESS
)
_WORKORDER_COMPLETED_V2 = EventType(
    EventKind.WORKORDER_COMPLETED, 2, WorkorderCompletedV2, Priority.BUSINESS
)

# Each retired version is made from the emitted one (v3) directly, never from another copy:
# a copy's causationid is always the emitted event's id.
DOWN_CONVERSIONS: dict[str, DownConversion] = {
    conversion.retired.name: conversion
    for conversion in (
        DownConversion(
            _WORKORDER_COMPLETED_V2,
            EVENT_TYPES[EventKind.WORKORDER_COMPLETED],
            _workorder_completed_v2,
        ),
        DownConversion(
            _WORKORDER_COMPLETED_V1,
            EVENT_TYPES[EventKind.WORKORDER_COMPLETED],
            _workorder_completed_v1,
        ),
    )
}
