"""The connector contract (`connectors.base`), clause by clause, for every connector, each
against its real peer (`peers.py`: an asyncua server, a drop folder, HTTP posts, an SQLite
file and the real PostgreSQL, and the simulated clock), each built through its row in
`config.source_types`:

- cancelling `run` closes the connector's session and re-raises `CancelledError`;
- the peer down ends `run` with `SourceUnavailable`;
- settings that cannot work end `run` with `SourceConfigError`;
- the same source fact gives an equal `Reading`;
- `health` is kept current: `connected` while a session is up, false once `run` ended, and
  `readings_total` counts what was emitted.

A clause that does not apply to a connector is skipped with the reason `peers.NOT_APPLICABLE`
states.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from config.source_types import Source, build_connector
from connectors.base import (
    Connector,
    Reading,
    SourceConfigError,
    SourceUnavailable,
)
from tests.conformance.peers import NOT_APPLICABLE, PEERS, Peer

LIMIT_S = 15.0
# A thread of a connector's that outlives `run` (and this test's event loop) is an error: it
# raised "Event loop is closed" in mes-sql's SQLite reader after a failed open. Every test of
# the module, since the thread's exception shows in whichever test runs when it fires.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")


def peers_for(clause: str) -> list[Any]:
    """The `peer` parameters of one clause, each not-applicable one skipped with its reason."""
    reasons = NOT_APPLICABLE.get(clause, {})
    return [
        pytest.param(name, id=name, marks=[pytest.mark.skip(reason=f"{name}: {reasons[name]}")]
                     if name in reasons else [])
        for name in PEERS
    ]


class MemoryHost:
    """The agent's side of `SourceHost`, in memory: the state emitted readings commit, no
    backpressure, every record valid."""

    def __init__(self) -> None:
        self.state: dict[str, str] = {}

    async def source_state(self, prefix: str) -> dict[str, str]:
        return {key: value for key, value in self.state.items() if key.startswith(prefix)}

    async def drop_source_state(self, prefix: str, older_than: float) -> int:
        return 0

    def backpressure(self) -> bool:
        return False

    def check_record(self, reading: Reading) -> tuple[str, list[tuple[str, str]]]:
        return f"{reading.source}/{reading.signal}/{reading.timestamp.isoformat()}", []


class Collected:
    """An `Emit` that commits at once: it keeps the readings and applies their state."""

    def __init__(self, host: MemoryHost) -> None:
        self.host = host
        self.readings: list[Reading] = []

    async def __call__(self, readings: Sequence[Reading]) -> asyncio.Future[None]:
        self.readings.extend(readings)
        for reading in readings:
            for key, value in reading.state:
                if value is None:
                    self.host.state.pop(key, None)
                else:
                    self.host.state[key] = value
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        committed.set_result(None)
        return committed


class Running:
    """One connector built from `source` through the registry, its `run` a task."""

    def __init__(self, source: Source) -> None:
        host = MemoryHost()
        self.connector: Connector = build_connector(source, host)
        self.emitted = Collected(host)
        self.task = asyncio.create_task(self.connector.run(self.emitted))

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(self.task, LIMIT_S)


async def until(condition: Callable[[], bool], what: str, task: asyncio.Task[None]) -> None:
    deadline = asyncio.get_running_loop().time() + LIMIT_S
    while not condition():
        if task.done():
            pytest.fail(f"run ended before {what}: {task.exception()!r}")
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {LIMIT_S} s: {what}")
        await asyncio.sleep(0.02)


async def closed_by_the_peer(peer: Peer) -> bool:
    """Whether the peer holds no session for the agent (bounded: it may see the close late)."""
    deadline = asyncio.get_running_loop().time() + LIMIT_S
    while (sessions := await peer.open_sessions()) not in (None, 0):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return sessions in (None, 0)


async def ended_with(source: Source) -> BaseException | None:
    """What `run` raised (bounded)."""
    connector = build_connector(source, MemoryHost())
    with pytest.raises(Exception) as raised:
        await asyncio.wait_for(connector.run(Collected(MemoryHost())), LIMIT_S)
    assert not connector.health.connected
    return raised.value


@pytest.mark.parametrize("peer", peers_for("cancel"), indirect=True)
async def test_cancel_closes_the_session_and_reraises(peer: Peer) -> None:
    running = Running(peer.source())
    await until(lambda: running.connector.health.connected, "connected", running.task)
    await peer.offer_fact()
    await until(lambda: bool(running.emitted.readings), "a reading", running.task)
    assert await peer.open_sessions() in (None, 1)

    await running.stop()  # raises unless run re-raised CancelledError

    assert running.task.cancelled()
    assert not running.connector.health.connected
    assert await closed_by_the_peer(peer)


@pytest.mark.parametrize("peer", peers_for("peer_down"), indirect=True)
async def test_the_peer_down_ends_run_with_source_unavailable(peer: Peer) -> None:
    source = peer.source()
    await peer.go_down()

    assert isinstance(await ended_with(source), SourceUnavailable)


@pytest.mark.parametrize("peer", peers_for("bad_config"), indirect=True)
async def test_settings_that_cannot_work_end_run_with_source_config_error(peer: Peer) -> None:
    assert isinstance(await ended_with(peer.misconfigured()), SourceConfigError)


@pytest.mark.parametrize("peer", peers_for("same_fact"), indirect=True)
async def test_the_same_fact_gives_an_equal_reading(peer: Peer) -> None:
    def facts(readings: list[Reading]) -> dict[tuple[str, object], Reading]:
        return {(reading.signal, reading.timestamp): reading for reading in readings}

    first = Running(peer.source())
    await until(lambda: first.connector.health.connected, "connected", first.task)
    await peer.offer_fact()
    await until(lambda: bool(first.emitted.readings), "a reading", first.task)
    if peer.one_at_a_time:
        await first.stop()
    second = Running(peer.source())
    await until(lambda: second.connector.health.connected, "connected", second.task)
    await peer.offer_fact()  # the same fact, offered again

    def seen_twice() -> set[tuple[str, object]]:
        return set(facts(first.emitted.readings).keys() & facts(second.emitted.readings).keys())

    await until(lambda: bool(seen_twice()), "the same fact seen by both", second.task)
    await second.stop()
    if not first.task.done():
        await first.stop()

    for key in seen_twice():
        assert facts(second.emitted.readings)[key] == facts(first.emitted.readings)[key]


@pytest.mark.parametrize("peer", peers_for("health"), indirect=True)
async def test_health_is_kept_current(peer: Peer) -> None:
    running = Running(peer.source())
    health = running.connector.health
    await until(lambda: health.connected, "connected", running.task)
    await peer.offer_fact()
    await until(lambda: bool(running.emitted.readings), "a reading", running.task)
    await until(lambda: health.readings_total >= len(running.emitted.readings) > 0,
                "readings_total counting what was emitted", running.task)

    await running.stop()

    assert not health.connected
    assert health.readings_total >= len(running.emitted.readings)
