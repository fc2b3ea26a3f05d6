"""Which business object an event belongs to: its `correlationid`, `<field>:<value>`.

The events of one work order (its release, the material it consumed, its completion) all carry
`order:<order id>`, so the hub can follow the order through every system that touched it;
the events of other objects carry theirs (`lot:<lot>`, `material:<material>`).

From an MES record, the event's `correlationid` is `<field>:<value>` of the first field of its
type's default (`DEFAULT_CORRELATION`, below) that has a value in the record; none has one:
no `correlationid`. A record source overrides the default with `correlate_by` (one text field
of its event type, or `"none"` for no `correlationid`), checked when the config is loaded
(`check_correlate_by`).

| event type | default `correlationid` |
|---|---|
| workorder.released, workorder.completed | `order:<order>` |
| material.consumed | `order:<order>`, else `lot:<lot>` |
| quality.hold | `lot:<lot>` (a hold names a lot, not an order) |
| inventory.adjusted | `lot:<lot>`, else `material:<material>` |
| shipment.confirmed | `order:<order>` (the sales order), else `delivery:<delivery>` |
| asn.received | `purchase_order:<purchase_order>`, else `asn:<asn>` |
| invoice.posted | `order:<order>`, else `purchase_order:<po>`, else `invoice:<invoice>` |
| material.produced | `order:<order>` |
| production.count, machine.downtime | none |

From plant signals: a `workorder.completed` carries `order:<its order>`; every other event of
an asset with a work order context (a `context = "workorder"` signal) carries
`order:<that work order>`.
"""

from __future__ import annotations

import types
import typing

from pydantic import ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from events.kinds import EventKind
from events.models import EVENT_TYPES

__all__ = [
    "CORRELATE_OFF",
    "DEFAULT_CORRELATION",
    "ORDER_FIELD",
    "check_correlate_by",
    "correlatable_fields",
    "correlation_fields",
]

# `correlate_by = "none"`: the source's events carry no correlationid.
CORRELATE_OFF = "none"
ORDER_FIELD = "order"
_NOT_OBJECTS = frozenset({"signal", "unit"})
DEFAULT_CORRELATION: dict[EventKind, tuple[str, ...]] = {
    EventKind.WORKORDER_RELEASED: (ORDER_FIELD,),
    EventKind.WORKORDER_COMPLETED: (ORDER_FIELD,),
    EventKind.MATERIAL_CONSUMED: (ORDER_FIELD, "lot"),
    EventKind.QUALITY_HOLD: ("lot",),
    EventKind.INVENTORY_ADJUSTED: ("lot", "material"),
    EventKind.SHIPMENT_CONFIRMED: (ORDER_FIELD, "delivery"),
    EventKind.ASN_RECEIVED: ("purchase_order", "asn"),
    EventKind.INVOICE_POSTED: (ORDER_FIELD, "purchase_order", "invoice"),
    EventKind.MATERIAL_PRODUCED: (ORDER_FIELD,),
}


def correlatable_fields(kind: EventKind) -> list[str]:
    """The data fields of `kind` that can name a business object: its text fields, but not
    the signal (the agent's own) or a unit."""
    fields = EVENT_TYPES[kind].model.model_fields
    return sorted(
        name for name, info in fields.items()
        if name not in _NOT_OBJECTS and _is_text(info.annotation)
    )


def check_correlate_by(kind: EventKind, correlate_by: str | None) -> None:
    """`correlate_by` fits a source of `kind` events; else a ValidationError (a ValueError)
    on the key `correlate_by` itself (so `check-config` names its line), naming the field and
    the fields it could be. Called from the record source's model validator."""
    if correlate_by is None or correlate_by == CORRELATE_OFF:
        return
    fields = correlatable_fields(kind)
    if correlate_by not in fields:
        message = (
            f"correlate_by = {correlate_by!r}: {kind.value} has no text field "
            f"{correlate_by!r}; its fields: {', '.join(fields) or 'none'} "
            f"(or \"{CORRELATE_OFF}\" for no correlationid)"
        )
        raise ValidationError.from_exception_data("correlate_by", [InitErrorDetails(
            type=PydanticCustomError("value_error", "{message}", {"message": message}),
            loc=("correlate_by",),
            input=correlate_by,
        )])


def correlation_fields(kind: EventKind, correlate_by: str | None) -> tuple[str, ...]:
    """The fields to take a `kind` event's correlationid from, first with a value wins."""
    if correlate_by is None:
        return DEFAULT_CORRELATION.get(kind, ())
    if correlate_by == CORRELATE_OFF:
        return ()
    return (correlate_by,)


def _is_text(annotation: object) -> bool:
    if annotation is str:
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return str in typing.get_args(annotation)
    return False
