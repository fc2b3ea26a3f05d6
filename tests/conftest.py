"""Shared pytest fixtures. Keep this file thin: the logic lives in testkit/."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from agent.demo.plant import FillingLinePlant, serve_plant
from testkit.broker import MosquittoBroker, free_loopback_port
from testkit.postgres import postgres_url  # noqa: F401  (the fixture)


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    """A private, started mosquitto on a free loopback port (never the system one on 1883)."""
    with MosquittoBroker() as started:
        yield started


@pytest.fixture
async def plant() -> AsyncIterator[FillingLinePlant]:
    """The demo filling line served by a real asyncua server on a free loopback port; the test
    writes its values (no simulation). `plant.port` is where it listens."""
    async with serve_plant(free_loopback_port()) as served:
        yield served
