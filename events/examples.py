"""One realistic event per published type: the `examples` of its JSON Schema
(`events.models.json_schemas`) and of docs/hub-contract.md ("Event types").

Each entry is what is particular to the type's example: its data, its subject and source, and
the extension attributes worth showing with it (a trace from an MES webhook, a correlation
id, a causation id). `events.models` lays it over the envelope every example shares
(`ENVELOPE`) and adds `type` and `dataschema`.

Invariants: plain data, imports nothing of ours. Every example is an event this agent could
publish: tests/unit/test_contracts.py validates each against its type's schema (with
`jsonschema`) and against the agent's own models (pydantic), so an example never drifts from
the contract.
"""

from __future__ import annotations

from typing import Any

# What every example shares: one agent, at one moment (`seq` differs per type, so that the
# examples read as one stream).
ENVELOPE: dict[str, Any] = {
    "specversion": "1.0",
    "time": "2026-11-26T15:29:12.491426Z",
    "site": "plant-a",
    "agent": "edge-01",
    "datacontenttype": "application/json",
    "partitionkey": "plant-a/edge-01",
    "quality": "good",
}

_ORDER = "WO-10427"
_WEBHOOK_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-a3ce929d0e0e4736-01"

EXAMPLES: dict[str, dict[str, Any]] = {
    "telemetry.v1": {
        "seq": 1041,
        "id": "5d6f64b6-3b1e-5c02-8f4e-0e2b9c6a7d11",
        "source": "/plant-a/edge-01/line1",
        "subject": "line1/filler",
        "traceparent": "00-5d6f64b63b1e5c028f4e0e2b9c6a7d11-8f4e0e2b9c6a7d11-01",
        "assetpath": "acme/plant-a/packaging/line1/filler",
        "data": {"signal": "product_temp", "value": 72.4, "unit": "Cel"},
    },
    "machine.state.v1": {
        "seq": 1042,
        "id": "941be99b-c3d3-5106-99e4-fd27876afc10",
        "source": "/plant-a/edge-01/line1",
        "subject": "line1/filler",
        "traceparent": "00-941be99bc3d3510699e4fd27876afc10-99e4fd27876afc10-01",
        "assetpath": "acme/plant-a/packaging/line1/filler",
        "workorder": _ORDER,
        "data": {
            "signal": "state", "state": "running", "previous": "idle",
            "previous_duration_s": 1.5, "raw": 1,
        },
    },
    "production.count.v1": {
        "seq": 1043,
        "id": "0c8a1f3e-7d52-5a9b-b4c6-2e91d0f7a385",
        "source": "/plant-a/edge-01/line1",
        "subject": "line1/filler",
        "traceparent": "00-0c8a1f3e7d525a9bb4c62e91d0f7a385-b4c62e91d0f7a385-01",
        "workorder": _ORDER,
        "product": "SKU-4711",
        "data": {"signal": "good_count", "count": 15230, "increment": 12, "reset": False},
    },
    "quality.alert.v1": {
        "seq": 1044,
        "id": "7e2d9b40-1a6c-5f83-9d05-c4b8a2e61f97",
        "source": "/plant-a/edge-01/line1",
        "subject": "line1/checkweigher",
        "traceparent": "00-7e2d9b401a6c5f839d05c4b8a2e61f97-9d05c4b8a2e61f97-01",
        "data": {
            "signal": "fill_weight", "phase": "end", "severity": "warning", "value": 500.2,
            "unit": "g", "limit": 499.5, "started_at": "2026-11-26T15:28:30.117000Z",
            "duration_s": 42.374426,
        },
    },
    "machine.downtime.v1": {
        "seq": 1045,
        "id": "b31f6c92-48e0-5d7a-a2c9-6f0d3e15b8a4",
        "source": "/plant-a/edge-01/line1",
        "subject": "line1/filler",
        "traceparent": "00-b31f6c9248e05d7aa2c96f0d3e15b8a4-a2c96f0d3e15b8a4-01",
        "causationid": "941be99b-c3d3-5106-99e4-fd27876afc10",
        "data": {
            "signal": "state", "phase": "end", "reason": "MECH-JAM", "reason_raw": "E17",
            "value": 1.0, "started_at": "2026-11-26T15:23:57.288000Z", "duration_s": 315.203426,
        },
    },
    "machine.alarm.v1": {
        "seq": 1046,
        "id": "e4a07d15-9c3b-5e26-8f71-d2b6c0a49e38",
        "source": "/plant-a/edge-01/line1",
        "subject": "line1/filler",
        "traceparent": "00-e4a07d159c3b5e268f71d2b6c0a49e38-8f71d2b6c0a49e38-01",
        "data": {
            "signal": "alarms", "message": "Guard door 3 open", "severity": 700,
            "severity_class": "critical", "condition": "GuardDoor3",
            "source_name": "Filler.Guard3", "active": True, "acknowledged": False,
            "event_type": "ns=0;i=2915",
        },
    },
    "workorder.released.v1": {
        "seq": 1047,
        "id": "3f9b2c71-d04e-5a18-b6e3-81c5f7a2d906",
        "source": "/plant-a/edge-01/mes",
        "subject": "line1",
        "traceparent": _WEBHOOK_TRACE,
        "tracestate": "mes=00f067aa0ba902b7",
        "correlationid": f"order:{_ORDER}",
        "data": {
            "signal": "mes", "order": _ORDER, "product": "SKU-4711", "quantity": 1200.0,
            "unit": "1", "due_at": "2026-11-27T06:00:00Z",
        },
    },
    "material.consumed.v1": {
        "seq": 1048,
        "id": "a85e1d3c-6b79-5f02-9c4a-e7d2f30b6c15",
        "source": "/plant-a/edge-01/mes",
        "subject": "line1",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-9c4ae7d2f30b6c15-01",
        "correlationid": f"order:{_ORDER}",
        "data": {
            "signal": "mes", "material": "MAT-100200", "lot": "L-2026-1126-03",
            "quantity": 48.0, "unit": "kg", "order": _ORDER, "location": "LINE1-STAGING",
        },
    },
    # The final confirmation of operation 0010 of a work order, from an MES record.
    "workorder.completed.v3": {
        "seq": 1059,
        "id": "3e7b9d14-58a2-5c6f-9b01-c4d2e8f6a713",
        "source": "/plant-a/edge-01/mes-webhook",
        "subject": "line1/filler",
        "traceparent": _WEBHOOK_TRACE,
        "correlationid": f"order:{_ORDER}",
        "data": {
            "signal": "/mes/confirmations", "order": _ORDER, "operation": "0010",
            "work_center": "FILL-01", "confirmation": "000482", "final": True,
            "product": "SKU-4711", "good": 1180.0, "scrap": 20.0, "scrap_reason": "S03",
            "rework": 4.0, "rework_reason": "R01", "unit": "1", "lot": "L-2026-1126-07",
            "location": "FG01", "started_at": "2026-11-26T06:00:00Z",
            "finished_at": "2026-11-26T15:29:12.491426Z", "posting_date": "2026-11-26",
            "personnel": "10042",
        },
    },
    # Retired: the copies of the v3 example above that agents publish within their
    # dual-publish window (each one's causationid is the v3 event's id).
    "workorder.completed.v2": {
        "seq": 1049,
        "id": "6c2f8e47-1b9d-5a30-84e5-0d7b3c9f2a61",
        "source": "/plant-a/edge-01/mes-webhook",
        "subject": "line1/filler",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-84e50d7b3c9f2a61-01",
        "correlationid": f"order:{_ORDER}",
        "causationid": "3e7b9d14-58a2-5c6f-9b01-c4d2e8f6a713",
        "data": {
            "signal": "/mes/confirmations", "order": _ORDER, "product": "SKU-4711",
            "good": 1180.0, "scrap": 20.0, "unit": "1",
        },
    },
    "workorder.completed.v1": {
        "seq": 1050,
        "id": "d91a4b6e-2c83-5f57-a0e8-3b6f1c7d94e2",
        "source": "/plant-a/edge-01/mes-webhook",
        "subject": "line1/filler",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-a0e83b6f1c7d94e2-01",
        "correlationid": f"order:{_ORDER}",
        "causationid": "3e7b9d14-58a2-5c6f-9b01-c4d2e8f6a713",
        "workorder": _ORDER,
        "data": {
            "signal": "order_done", "order": _ORDER, "product": "SKU-4711", "good": 1180,
            "scrap": 20,
        },
    },
    "quality.hold.v1": {
        "seq": 1051,
        "id": "1e7c3a95-f268-5d4b-b90e-5a2d8c6f01b7",
        "source": "/plant-a/edge-01/qms",
        "subject": "line1",
        "traceparent": "00-1e7c3a95f2685d4bb90e5a2d8c6f01b7-b90e5a2d8c6f01b7-01",
        "correlationid": "lot:L-2026-1126-03",
        "data": {
            "signal": "qms", "lot": "L-2026-1126-03", "phase": "placed",
            "reason": "QH-CONTAM", "material": "MAT-100200", "quantity": 250.0, "unit": "kg",
            "note": "Foreign particles found in sample 3",
        },
    },
    "inventory.adjusted.v1": {
        "seq": 1052,
        "id": "8b4d0f26-a3e1-5c79-8d52-f6e9b1a07c34",
        "source": "/plant-a/edge-01/wms",
        "subject": "warehouse",
        "traceparent": "00-8b4d0f26a3e15c798d52f6e9b1a07c34-8d52f6e9b1a07c34-01",
        "data": {
            "signal": "wms", "material": "MAT-100200", "lot": "L-2026-1126-03",
            "location": "WH1-A-03", "delta": -12.5, "unit": "kg", "reason": "CYCLE-COUNT",
        },
    },
    "shipment.confirmed.v1": {
        "seq": 1055,
        "id": "2b8e6f14-9c3a-5d71-a4e2-7f0c1b9d3e58",
        "source": "/plant-a/edge-01/erp-drop",
        "subject": "shipping",
        "traceparent": "00-2b8e6f149c3a5d71a4e27f0c1b9d3e58-a4e27f0c1b9d3e58-01",
        "correlationid": "order:SO-88012",
        "data": {
            "signal": "record", "delivery": "80017345", "item": "10", "order": "SO-88012",
            "customer": "C-2044", "material": "SKU-4711", "lot": "L-2026-1126-07",
            "quantity": 480.0, "unit": "1", "carrier": "DHL", "tracking": "JJD000390007",
            "shipped_at": "2026-11-26T14:05:00Z",
        },
    },
    "asn.received.v1": {
        "seq": 1056,
        "id": "9d4c2a61-7e8b-5f03-b1d5-3a6e9f0c2b47",
        "source": "/plant-a/edge-01/erp-drop",
        "subject": "receiving",
        "traceparent": "00-9d4c2a617e8b5f03b1d53a6e9f0c2b47-b1d53a6e9f0c2b47-01",
        "correlationid": "purchase_order:4500012877",
        "data": {
            "signal": "record", "asn": "ASN-77120", "item": "1", "supplier": "V-1009",
            "purchase_order": "4500012877", "material": "MAT-100200",
            "lot": "S-LOT-55A", "quantity": 1000.0, "unit": "kg",
            "expected_at": "2026-11-28T06:00:00Z",
        },
    },
    "invoice.posted.v1": {
        "seq": 1057,
        "id": "5e1f9b37-2d6c-5a84-8c0f-e4b7a2d91c36",
        "source": "/plant-a/edge-01/erp-drop",
        "subject": "finance",
        "traceparent": "00-5e1f9b372d6c5a848c0fe4b7a2d91c36-8c0fe4b7a2d91c36-01",
        "correlationid": "order:SO-88012",
        "data": {
            "signal": "record", "invoice": "90031877", "kind": "customer",
            "order": "SO-88012", "purchase_order": None, "partner": "C-2044",
            "amount": 11424.0, "currency": "EUR", "tax": 1824.0, "posting_date": "2026-11-26",
        },
    },
    "material.produced.v1": {
        "seq": 1058,
        "id": "7a3d5c82-4f1e-5b96-9e27-c8b0d4f6a153",
        "source": "/plant-a/edge-01/mes",
        "subject": "line1",
        "traceparent": "00-7a3d5c824f1e5b969e27c8b0d4f6a153-9e27c8b0d4f6a153-01",
        "correlationid": f"order:{_ORDER}",
        "data": {
            "signal": "mes", "order": _ORDER, "material": "SKU-4711",
            "lot": "L-2026-1126-07", "quantity": 1180.0, "unit": "1", "location": "FG01",
            "posting_date": "2026-11-26",
        },
    },
    "record.rejected.v1": {
        "seq": 1054,
        "id": "c7e1a3d9-5b24-5f86-9e0a-4d1b8c2f6a73",
        "source": "/plant-a/edge-01/mes-drop",
        "subject": "line1",
        "traceparent": "00-c7e1a3d95b245f869e0a4d1b8c2f6a73-9e0a4d1b8c2f6a73-01",
        "correlationid": "order:WO-10431",
        "data": {
            "signal": "record", "record_type": "workorder.completed.v3", "interface": "file",
            "stage": "read", "reason": "column 'GOOD_QTY': expected a finite number",
            "location": "completions-2026-11-26.csv:7", "column": "GOOD_QTY",
            "record": "9f2c4e1ab37d5c08e6f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7:7",
            "set_aside": False, "order": "WO-10431", "material": "SKU-4711",
            "lot": None, "quantity": None, "unit": "1",
            "raw": '{"WO": "WO-10431", "MATERIAL": "SKU-4711", "GOOD_QTY": "1O8", '
            '"FINISHED": "26.11.2026 16:20:00"}',
            "raw_truncated": False,
        },
    },
    "agent.buffer.overflow.v1": {
        "seq": 1053,
        "id": "f0c6e2a8-5d1b-5e94-a7f3-92b4d8c1e605",
        "source": "/plant-a/edge-01/agent",
        "subject": "agent",
        "traceparent": "00-f0c6e2a85d1b5e94a7f392b4d8c1e605-a7f392b4d8c1e605-01",
        "data": {
            "priority_class": "telemetry", "event_type": "telemetry.v1", "reason": "evicted",
            "count": 5000, "seq_ranges": [[1201, 6200]],
        },
    },
}
