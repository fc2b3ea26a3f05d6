"""What a misbehaving publisher sends on an events topic never wedges the hub: a message that
is not of the wire contract, an event without a valid id, and values JSON has no text for
(NaN, bytes) land or are rejected with the reason, and the next good message lands. A raw
paho publisher (the misbehaving peer), a real mosquitto, a real `edge-agent hub run`, a real
PostgreSQL."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from events.formats import FORMATS
from hub.store import envelope_json
from testkit.broker import MosquittoBroker
from tests.hub.harness import HubProcess, fetch, hub_config, wait_until

TOPIC = "mfg/plant-x/edge-x/events/telemetry.v1"
CONTENT_TYPE = FORMATS["cloudevents-batch-msgpack"].content_type


def _event(seq: int, value: object) -> dict[str, object]:
    return {
        "specversion": "1.0", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"hostile/{seq}")),
        "seq": seq, "type": "telemetry.v1", "source": "/plant-x/edge-x/sim",
        "time": "2026-12-04T12:00:00Z", "site": "plant-x", "agent": "edge-x",
        "data": {"signal": "t", "value": value, "unit": "Cel"},
    }


def _publish(broker: MosquittoBroker, payloads: list[bytes]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hostile",
                         protocol=MQTTProtocolVersion.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for payload in payloads:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ContentType = CONTENT_TYPE
            client.publish(TOPIC, payload, qos=1, properties=properties).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_the_envelope_json_is_json_postgresql_takes() -> None:
    text = envelope_json({"a": float("nan"), "b": float("inf"), "c": b"\x01", "d": {1: 2}})
    assert json.loads(text) == {"a": None, "b": None, "c": "AQ==", "d": {"1": 2}}
    assert "NaN" not in text and "Infinity" not in text


async def test_hostile_payloads_are_rejected_or_landed_and_the_stream_goes_on(
    tmp_path: Path, broker: MosquittoBroker, postgres_url: str
) -> None:
    hub = HubProcess(hub_config(tmp_path / "hub.toml", broker, postgres_url), tmp_path / "hub.log")
    try:
        hub.start()
        hub.wait_log("hub ready")
        _publish(broker, [
            b"\xc1 not msgpack at all",
            msgpack.packb([{"id": "not-a-uuid", "seq": 1, "type": "telemetry.v1"}]),
            msgpack.packb([_event(1, float("nan")), _event(2, float("inf"))]),
            msgpack.packb([_event(3, 21.5)]),
        ])
        rows = await wait_until(lambda: _landed(postgres_url, 3), "seqs 1-3 landed")
        assert [row["seq"] for row in rows] == [1, 2, 3]
        assert [row["value"] for row in rows] == [None, None, "21.5"]
        rejected = await fetch(postgres_url, "SELECT reason FROM rejected_messages ORDER BY 1")
        reasons = [row["reason"] for row in rejected]
        assert len(reasons) == 2, reasons
        assert any("not a message of the wire contract" in reason for reason in reasons), reasons
        assert any("'id' is not a UUID" in reason for reason in reasons), reasons
        assert "Traceback" not in hub.log_text()
    finally:
        hub.ensure_stopped()


async def _landed(url: str, count: int) -> list[Any] | None:
    rows = await fetch(
        url, "SELECT seq, envelope->'data'->>'value' AS value FROM events ORDER BY seq"
    )
    return rows if len(rows) >= count else None
