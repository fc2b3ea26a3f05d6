"""SourceRunner stops when the agent stops it, even when a connector turns the cancellation
into an error (asyncua can: Python 3.11's wait_for may swallow a CancelledError that races
with a completion; that race cannot be provoked on demand against a real server, so this test
uses a connector written to behave that way)."""

from __future__ import annotations

import asyncio

from agent.runtime import SourceRunner
from connectors.base import Emit, SourceHealth, SourceUnavailable


class SwallowingConnector:
    """Runs until cancelled, then reports the cancellation as a lost connection."""

    def __init__(self) -> None:
        self.name = "swallow"
        self.health = SourceHealth()
        self.runs = 0

    async def run(self, emit: Emit) -> None:
        self.runs += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise SourceUnavailable("connection closed") from None


async def test_a_runner_stops_although_its_connector_swallowed_the_cancellation() -> None:
    connector = SwallowingConnector()
    runner = SourceRunner(connector, backoff_min_s=0.01, backoff_max_s=0.02)

    async def emit(batch: object) -> None:
        return None

    task = asyncio.create_task(runner.run(emit))
    await asyncio.sleep(0.05)
    assert connector.runs == 1
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5)
    assert task in done and task.cancelled()
    assert connector.runs == 1  # not started again after the stop
