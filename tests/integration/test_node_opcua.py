"""The OPC UA connector against a real node-opcua server (testkit/node_opcua): a server
whose certificate manager refuses unknown client certificates, and its alarms' condition fields.

One node-opcua process serves the whole module (it takes a second or two to start); each test
uses its own agent certificate or its own signals, so the tests do not depend on their order.
Every wait is bounded; nothing waits on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.runtime import SourceRunner
from connectors.base import Emit, Reading
from connectors.opcua import OpcUaConnector, OpcUaSettings, OpcUaSignalSettings
from connectors.opcua.certificates import create_application_certificate
from connectors.opcua.config import SignalMode
from connectors.opcua.trust import TrustStore
from testkit.node_opcua_peer import (
    LINE,
    TEMPERATURE,
    NodeOpcUaServer,
    missing_node_opcua,
)
from testkit.opcua_servers import thumbprint_of
from tests.integration.test_opcua_security import running, until

AGENT_URI = "urn:test-host:plant-edge-agent"


@pytest.fixture(scope="module")
def node_opcua(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeOpcUaServer]:
    """A started node-opcua server on a free loopback port (one for this module). `make test`
    installs node and node-opcua: without them these tests fail, they do not pass by skipping."""
    reason = missing_node_opcua()
    if reason is not None:
        pytest.fail(reason)
    with NodeOpcUaServer(tmp_path_factory.mktemp("node-opcua")) as server:
        yield server


class CountingConnector(OpcUaConnector):
    """Counts the sessions the runtime starts (each is one connection attempt)."""

    attempts = 0

    async def run(self, emit: Emit) -> None:
        self.attempts += 1
        await super().run(emit)


def alarms(readings: list[Reading]) -> list[dict[str, Any]]:
    """The attributes of each alarm reading, with its message as `message`."""
    return [
        {**dict(reading.attributes), "message": reading.value}
        for reading in readings
        if reading.signal == LINE
    ]


async def test_a_refused_agent_certificate_is_named_once_and_connects_once_trusted(
    node_opcua: NodeOpcUaServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    pki = tmp_path / "pki"
    create_application_certificate(
        certificate_path=pki / "own" / "cert.der", key_path=pki / "own" / "private" / "key.pem",
        application_uri=AGENT_URI, host_name="localhost",
    )
    TrustStore(pki).add_trusted(node_opcua.certificate)  # the agent trusts the server
    thumbprint = thumbprint_of(pki / "own" / "cert.der")
    connector = CountingConnector(
        "line",
        OpcUaSettings.model_validate({
            "endpoint": node_opcua.endpoint, "application_uri": AGENT_URI,
            "certificate": pki / "own" / "cert.der",
            "private_key": pki / "own" / "private" / "key.pem", "pki_dir": pki,
            "security_policy": "Basic256Sha256", "publishing_interval_ms": 50,
        }),
        [OpcUaSignalSettings(node=TEMPERATURE)],
    )
    readings: list[Reading] = []

    async def emit(batch: Any) -> None:
        readings.extend(batch)

    runner = SourceRunner(connector, backoff_min_s=0.1, backoff_max_s=0.3)
    task = asyncio.create_task(runner.run(emit))
    try:
        # Three refused attempts: the refusal is a state, said once, retried with backoff.
        await until(lambda: connector.attempts >= 3, "three refused attempts", limit_s=60)
        assert not connector.health.connected
        assert runner.state in {"running", "retrying"}  # still trying, not failed
        error = connector.health.last_error or ""
        assert "does not trust the agent's certificate yet" in error
        assert f"SHA-1 thumbprint {thumbprint}" in error
        assert "from its rejected folder to its trusted folder" in error
        said = [record for record in caplog.records if thumbprint in record.getMessage()]
        assert len(said) == 1, [record.getMessage() for record in said]
        assert said[0].levelno == logging.WARNING
        assert "does not trust the agent's certificate yet" in said[0].getMessage()
        assert [record.getMessage() for record in caplog.records if record.exc_info] == []
        assert "Traceback" not in caplog.text
        assert "failed unexpectedly" not in caplog.text

        # The OT engineer trusts it on the server: the agent connects and reads by itself.
        node_opcua.trust_rejected(thumbprint)
        await until(lambda: readings, "a value once the server trusts the agent", limit_s=60)
        assert connector.health.connected
        assert readings[0].signal == TEMPERATURE
        assert isinstance(readings[0].value, float)
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=10)
    assert task.done()


async def test_alarm_active_and_acknowledged_arrive_with_the_default_event_filter(
    node_opcua: NodeOpcUaServer,
) -> None:
    connector = OpcUaConnector(
        "line",
        OpcUaSettings(endpoint=node_opcua.endpoint, publishing_interval_ms=20),
        [OpcUaSignalSettings(node=LINE, mode=SignalMode.EVENTS),
         OpcUaSignalSettings(node=TEMPERATURE)],
    )
    async with running(connector) as readings:
        await until(lambda: any(r.signal == TEMPERATURE for r in readings), "the subscription")
        await asyncio.to_thread(node_opcua.command, "set 95")
        await until(lambda: any(a.get("active") is True for a in alarms(readings)),
                    "the alarm, active", limit_s=30)
        raised = next(a for a in alarms(readings) if a.get("active") is True)
        assert raised["acknowledged"] is False
        assert raised["condition"] == "TemperatureHigh"
        assert isinstance(raised["severity"], int)
        assert raised["message"]
        assert raised["event_type"] == "i=9341"  # ExclusiveLimitAlarmType

        await asyncio.to_thread(node_opcua.command, "ack")
        await until(lambda: any(a.get("acknowledged") is True for a in alarms(readings)),
                    "the alarm, acknowledged", limit_s=30)
        acknowledged = next(a for a in alarms(readings) if a.get("acknowledged") is True)
        assert acknowledged["active"] is True
        assert acknowledged["condition"] == "TemperatureHigh"

        await asyncio.to_thread(node_opcua.command, "set 20")
        await until(lambda: any(a.get("active") is False for a in alarms(readings)),
                    "the alarm, back to normal", limit_s=30)
        cleared = next(a for a in alarms(readings) if a.get("active") is False)
        assert cleared["acknowledged"] is True
        assert cleared["condition"] == "TemperatureHigh"
