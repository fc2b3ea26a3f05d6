"""The whole path for issue 9's events: an OPC UA alarm raised on a real asyncua server and
values backfilled after a session gap arrive at a real mosquitto as canonical events."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.link.status import sources_status
from connectors.opcua.certificates import create_application_certificate
from connectors.opcua.trust import TrustStore
from testkit.broker import MosquittoBroker, Subscriber, free_loopback_port
from testkit.events import EVENTS_TOPIC, decode_events
from testkit.opcua_servers import (
    ALARMS,
    ALL_SECURE,
    TEMPERATURE,
    serve_line,
    server_certificate,
    thumbprint_of,
)
from tests.integration.test_first_path import events_at_hub, running_agent, until
from tests.integration.test_opcua_connector import until_async


def config_text(tmp_path: Path, hub: str, endpoint: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "{tmp_path / 'state'}"
shutdown_grace_s = 5

[hub]
url = "{hub}"
batch_max_wait_ms = 20

[[sources]]
name = "line1"
type = "opcua"
endpoint = "{endpoint}"
publishing_interval_ms = 50

  [[sources.signals]]
  node = "{ALARMS}"
  mode = "events"
  event = "machine.alarm"
  asset = "line1/filler"
  name = "alarms"

  [[sources.signals]]
  node = "{TEMPERATURE}"
  event = "telemetry"
  asset = "line1/filler"
  name = "temperature"
  unit = "Cel"
  backfill = true
""")
    return path


async def test_an_alarm_raised_on_the_server_arrives_as_a_canonical_machine_alarm(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with serve_line(free_loopback_port()) as line:
        config = config_text(tmp_path, broker.url, line.endpoint)
        with Subscriber(broker, EVENTS_TOPIC) as subscriber:
            async with running_agent(config):
                await events_at_hub(subscriber, 1)  # the current temperature: subscribed
                at = datetime(2026, 11, 26, 14, 30, tzinfo=UTC)
                await line.raise_alarm("Filler over temperature", 850, at=at)
                events = await events_at_hub(subscriber, 2)
    (alarm,) = [event for event in events if event["type"] == "machine.alarm.v1"]
    assert alarm["time"] == "2026-11-26T14:30:00.000000Z"
    assert alarm["subject"] == "line1/filler"
    data = alarm["data"]
    assert data["signal"] == "alarms"
    assert data["message"] == "Filler over temperature"
    assert data["severity"] == 850 and data["severity_class"] == "critical"
    assert data["condition"] == "FillerOverTemperature"
    assert data["source_name"] == "Line1.Filler"


async def test_values_missed_during_a_session_gap_arrive_marked_backfilled_once(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    async with serve_line(free_loopback_port(), history=True) as line:
        config = config_text(tmp_path, broker.url, line.endpoint)
        with Subscriber(broker, EVENTS_TOPIC) as subscriber:
            async with running_agent(config) as agent:
                await events_at_hub(subscriber, 1)
                connector = agent.sources[0].connector
                await line.write("Temperature", 30.0)
                await events_at_hub(subscriber, 2)
                # The network drops (the server keeps running and historizing); values
                # change while the agent is away; the network comes back.
                await line.drop_connections()
                await until(lambda: not connector.health.connected, "the drop")
                for value in (31.0, 32.0):
                    await line.write("Temperature", value)
                    await until_async(lambda: line.historized("Temperature"), value)
                await line.accept_connections()
                await until(lambda: connector.health.connected, "reconnected", limit_s=30)
                await events_at_hub(subscriber, 4)
                received = decode_events(subscriber.messages)  # every message, not de-duplicated
    values = [(e["data"]["value"], e.get("backfilled")) for e in received]
    assert (31.0, "true") in values and (32.0, "true") in values
    # 30.0 was seen live and is read again from history (the backfill starts at the last value
    # seen) and with the new subscription: same id, so the buffer accepted it once.
    assert [value for value, _ in values].count(30.0) == 1
    assert (30.0, None) in values


async def test_secrets_from_systemd_credentials_and_a_near_expiry_notice_in_status(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = tmp_path / "pki"
    create_application_certificate(
        certificate_path=pki / "own" / "cert.der", key_path=tmp_path / "creds" / "opcua-key",
        application_uri="urn:test-host:plant-edge-agent", host_name="localhost",
    )
    (tmp_path / "creds" / "opcua-password").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    server_pki = tmp_path / "server-pki"
    server_certificate(server_pki, days=10)
    TrustStore(pki).add_trusted(server_pki / "server" / "cert.der")
    async with serve_line(free_loopback_port(), pki=server_pki, policies=ALL_SECURE,
                          users={"operator": "s3cret"}) as line:
        config = tmp_path / "agent.toml"
        config.write_text(f"""
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "state"

[hub]
url = "{broker.url}"

[[sources]]
name = "line1"
type = "opcua"
endpoint = "{line.endpoint}"
security_policy = "Basic256Sha256"
application_uri = "urn:test-host:plant-edge-agent"
private_key = "credential:opcua-key"
username = "operator"
password_file = "credential:opcua-password"

  [[sources.signals]]
  node = "{TEMPERATURE}"
  event = "telemetry"
  asset = "line1/filler"
  unit = "Cel"
""")
        async with running_agent(config) as agent:  # connected: key and password were read
            notices = sources_status(agent)["line1"]["notices"]
    thumbprint = thumbprint_of(server_pki / "server" / "cert.der")
    assert notices["server_certificate"].startswith(
        f"the server's certificate ({thumbprint}) expires in "
    )
