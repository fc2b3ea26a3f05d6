"""Shared pytest fixtures. Keep this file thin: the logic lives in testkit/."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from agent.demo.plant import FillingLinePlant, serve_plant
from testkit.broker import MosquittoBroker, free_loopback_port
from testkit.nats_mqtt import INSTALL_HINT, NatsMqttBroker, find_nats_server
from testkit.postgres import postgres_url  # noqa: F401  (the fixture)


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    """A private, started mosquitto on a free loopback port (never the system one on 1883)."""
    with MosquittoBroker() as started:
        yield started


@pytest.fixture
def nats() -> Iterator[NatsMqttBroker]:
    """A private nats-server whose MQTT gateway speaks only 3.1.1, on free loopback ports.
    `make test` installs nats-server: without it the MQTT 3.1.1 tests fail (a missing peer is a
    machine not set up, not a pass), as the hub tests do without PostgreSQL."""
    if find_nats_server() is None:
        pytest.fail(f"nats-server (a 3.1.1-only MQTT broker) is not installed: {INSTALL_HINT}")
    with NatsMqttBroker() as started:
        yield started


@pytest.fixture
async def plant() -> AsyncIterator[FillingLinePlant]:
    """The demo filling line served by a real asyncua server on a free loopback port; the test
    writes its values (no simulation). `plant.port` is where it listens."""
    async with serve_plant(free_loopback_port()) as served:
        yield served
