"""The ERP-facing types of issue 16 (`shipment.confirmed.v1`, `asn.received.v1`,
`invoice.posted.v1`, `material.produced.v1`): what each model refuses, which record fields
each takes, their default correlation, and that no signal feeds them (they come from
records)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from config.correlation import correlation_fields
from config.mapping import SignalMapping
from config.schema import RECORD_FIELDS
from events.kinds import EventKind, Priority
from events.models import (
    EVENT_TYPES,
    AsnReceivedV1,
    InvoicePostedV1,
    MaterialProducedV1,
    ShipmentConfirmedV1,
)

NEW = {
    EventKind.SHIPMENT_CONFIRMED: "shipment.confirmed.v1",
    EventKind.ASN_RECEIVED: "asn.received.v1",
    EventKind.INVOICE_POSTED: "invoice.posted.v1",
    EventKind.MATERIAL_PRODUCED: "material.produced.v1",
}
INVOICE: dict[str, Any] = {
    "signal": "record", "invoice": "9003", "kind": "supplier", "amount": -12.5,
    "currency": "EUR",
}


@pytest.mark.parametrize("kind", list(NEW))
def test_each_is_a_business_record_type(kind: EventKind) -> None:
    event_type = EVENT_TYPES[kind]
    assert event_type.name == NEW[kind]
    assert event_type.default_priority is Priority.BUSINESS
    assert kind in RECORD_FIELDS
    with pytest.raises(ValidationError, match="come from MES records"):
        SignalMapping.model_validate({"event": kind.value, "asset": "line1"})


def test_the_record_fields_required_and_optional() -> None:
    assert RECORD_FIELDS[EventKind.SHIPMENT_CONFIRMED][0] == {
        "delivery", "material", "quantity", "unit"
    }
    assert RECORD_FIELDS[EventKind.ASN_RECEIVED][0] == {
        "asn", "supplier", "material", "quantity", "unit"
    }
    assert RECORD_FIELDS[EventKind.INVOICE_POSTED][0] == {"invoice", "kind", "amount", "currency"}
    assert RECORD_FIELDS[EventKind.MATERIAL_PRODUCED][0] == {
        "order", "material", "quantity", "unit"
    }
    assert "posting_date" in RECORD_FIELDS[EventKind.MATERIAL_PRODUCED][1]


def test_invoice_currency_is_iso_4217_and_amount_not_zero() -> None:
    assert InvoicePostedV1.model_validate(INVOICE).amount == -12.5  # a credit note
    for bad in ({"currency": "eur"}, {"currency": "EURO"}, {"amount": 0}, {"kind": "vendor"},
                {"posting_date": "26.11.2026"}):
        with pytest.raises(ValidationError):
            InvoicePostedV1.model_validate({**INVOICE, **bad})
    dumped = InvoicePostedV1.model_validate({**INVOICE, "posting_date": "2026-11-26"})
    assert dumped.model_dump(mode="json")["posting_date"] == "2026-11-26"


@pytest.mark.parametrize("model", [ShipmentConfirmedV1, AsnReceivedV1, MaterialProducedV1])
def test_quantities_are_positive_with_a_unit(model: type[Any]) -> None:
    base = {"signal": "record", "delivery": "D", "asn": "A", "supplier": "S", "order": "O",
            "material": "M", "quantity": 1.0, "unit": "kg"}
    fields = {key: value for key, value in base.items() if key in model.model_fields}
    assert model.model_validate(fields).quantity == 1.0
    with pytest.raises(ValidationError):
        model.model_validate({**fields, "quantity": 0})
    with pytest.raises(ValidationError):
        model.model_validate({key: value for key, value in fields.items() if key != "unit"})


def test_default_correlation() -> None:
    assert correlation_fields(EventKind.SHIPMENT_CONFIRMED, None) == ("order", "delivery")
    assert correlation_fields(EventKind.ASN_RECEIVED, None) == ("purchase_order", "asn")
    assert correlation_fields(EventKind.INVOICE_POSTED, None) == (
        "order", "purchase_order", "invoice"
    )
    assert correlation_fields(EventKind.MATERIAL_PRODUCED, None) == ("order",)
