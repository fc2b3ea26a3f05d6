"""The side-by-side benchmark's own pieces (bench/peer_thingsboard.py, bench/ingest.py).

The figures are never asserted (tests never assert times); what is checked is that the peer
harness measures the right thing: its session-limits reply has the shape ThingsBoard IoT
Gateway's MQTT client applies (against a real mosquitto), every value of a gateway telemetry
message is checked off exactly, the generated config is loopback only, and py-spy samples are
grouped by stage. The gateway itself is not started here (it is not installed in CI; `make
bench-peer` installs it for `make bench`).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench import peer_thingsboard as peer
from bench.ingest import STAGES, stage_shares
from testkit.broker import MosquittoBroker


def test_the_session_limits_rpc_is_answered_as_the_gateway_expects(
    broker: MosquittoBroker,
) -> None:
    replies: list[tuple[str, dict[str, Any]]] = []
    got = threading.Event()
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fake-gateway")

    def on_message(_client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        replies.append((message.topic, json.loads(message.payload)))
        got.set()

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe(peer.RPC_RESPONSE_TOPIC + "+", qos=1)
    with peer.SessionLimitsResponder(broker) as responder:
        client.connect(broker.host, broker.port)
        client.loop_start()
        try:
            assert subscribed.wait(10)
            # What tb_device_mqtt.py sends: another method first (ignored), then the request.
            client.publish(peer.RPC_REQUEST_TOPIC + "6", json.dumps({"method": "other"}), qos=1)
            request = {"method": "getSessionLimits", "params": {"timeout": 5000}}
            client.publish(peer.RPC_REQUEST_TOPIC + "7", json.dumps(request), qos=1)
            assert got.wait(10), "no reply to getSessionLimits"
        finally:
            client.disconnect()
            client.loop_stop()
    assert responder.answered == 1
    [(topic, limits)] = replies
    assert topic == peer.RPC_RESPONSE_TOPIC + "7"
    # tb_gateway_mqtt pops these two and needs a positive payload size and inflight window.
    assert limits["rateLimits"] == {} and limits["gatewayRateLimits"] == {}
    assert limits["maxPayloadSize"] > 0 and limits["maxInflightMessages"] > 0


def test_every_value_of_a_gateway_telemetry_message_is_checked_off() -> None:
    payload = json.dumps(
        {
            peer.DEVICE: [
                {"ts": 1_700_000_000_250, "values": {"V3": 2.0, "V10": 5.0, "status": "ok"}},
                {"ts": 1_700_000_000_500, "values": {"V3": 3.0}},
            ],
        }
    ).encode()
    assert peer.telemetry_values(payload) == [
        ((3, 2.0), 1_700_000_000.25),
        ((10, 5.0), 1_700_000_000.25),
        ((3, 3.0), 1_700_000_000.5),
    ]


def test_the_generated_peer_config_is_loopback_and_names_every_item(tmp_path: Path) -> None:
    peer.write_config(tmp_path, broker_port=18830, opcua_port=48400, items=3, storage="sqlite")
    gateway = json.loads((tmp_path / "tb_gateway.json").read_text())
    connector = json.loads((tmp_path / "opcua.json").read_text())
    assert gateway["thingsboard"]["host"] == "127.0.0.1"
    assert gateway["thingsboard"]["remoteConfiguration"] is False
    assert gateway["storage"]["type"] == "sqlite"
    assert connector["server"]["url"] == "opc.tcp://127.0.0.1:48400/bench/"
    assert connector["server"]["enableSubscriptions"] is True
    series = connector["mapping"][0]["timeseries"]
    assert [entry["value"] for entry in series] == ["${ns=2;s=V0}", "${ns=2;s=V1}", "${ns=2;s=V2}"]
    assert {entry["timestampLocation"] for entry in series} == {"sourceTimestamp"}
    json.loads((tmp_path / "logs.json").read_text())


def test_an_unknown_peer_storage_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="peer storage 'file'"):
        peer.write_config(tmp_path, broker_port=1, opcua_port=2, items=1, storage="file")


def test_py_spy_samples_are_grouped_by_stage() -> None:
    raw = "\n".join(
        [
            "_run (asyncio/events.py:80);execute (/x/aiosqlite/core.py:10);commit (sqlite3) 6",
            "_run (asyncio/events.py:80);process (/x/asyncua/common/subscription.py:1) 3",
            "_run (asyncio/events.py:80);emit (/w/agent/flow/mapping.py:5) 1",
            "select (selectors.py:468) 10",
            "not a sample line",
        ]
    )
    shares = stage_shares(raw)
    assert set(shares) == {name for name, _ in STAGES}
    assert shares["SQLite (buffer threads)"] == pytest.approx(0.3)
    assert shares["asyncua receive + decode"] == pytest.approx(0.15)
    assert shares["mapping"] == pytest.approx(0.05)
    assert shares["event loop, idle, other"] == pytest.approx(0.5)
    assert stage_shares("") == {}
