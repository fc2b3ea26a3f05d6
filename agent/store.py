"""The agent's store: its state dir, held by one process, and the buffer in it, as configured.

This is the one place in `agent` that names the concrete buffer (`buffer.sqlite`); everything
else gets a `buffer.base.Buffer` from here (`tests/unit/test_architecture.py` holds to it).

`open_store(config)` takes the state dir lock (`agent.service.statelock`: a second agent, or a
writing `edge-agent buffer` command, is refused with `BufferLocked` naming the holder), then
opens the buffer with the configured durability and capacity, moving a corrupt file aside
(never deleting it) and starting afresh. The runtime and the `edge-agent buffer` commands open
it the same way.

`open_reader(config)` opens the buffer read-only without the lock, for what only looks
(`edge-agent buffer stats`, the dead-letter listing): SQLite's WAL readers never block the
writer, so it works while the agent runs; it checks nothing, migrates nothing and refuses a
file of another schema version.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from agent.link.forwarder import BacklogPacing
from agent.service.statelock import StateDirLock
from buffer.base import Buffer, Capacity, OverflowPolicy
from buffer.sqlite import SqliteBuffer
from config.schema import AgentConfig
from events.kinds import AGENT_EVENT_KINDS, Priority

BUFFER_FILE = "buffer.sqlite"


def buffer_file(config: AgentConfig) -> Path:
    return config.agent.state_dir / BUFFER_FILE


def capacity(config: AgentConfig) -> Capacity:
    section = config.buffer
    policy: OverflowPolicy = section.telemetry_overflow
    return Capacity(
        max_pending_bytes=section.max_bytes,
        retained_max_bytes=section.retention_max_bytes,
        disk_free_reserve_bytes=section.disk_free_reserve,
        policies={Priority.TELEMETRY: policy},
        sample_keep_one_in=section.sample_keep_one_in,
    )


def priorities(config: AgentConfig) -> dict[str, int]:
    """Delivery class per unversioned event type, as configured (defaults left out)."""
    return {kind: Priority[name.upper()] for kind, name in config.buffer.priorities.items()}


def overflow_priority(config: AgentConfig) -> Priority:
    return config.buffer.priority_of(AGENT_EVENT_KINDS[0], Priority.CRITICAL)


def pacing(config: AgentConfig) -> BacklogPacing:
    section = config.buffer
    return BacklogPacing(
        max_rate=section.backlog_max_rate,
        jitter=section.backlog_jitter,
        start_delay_max_s=section.backlog_start_delay_max_s,
    )


@contextlib.asynccontextmanager
async def open_store(
    config: AgentConfig, *, role: str = "edge-agent run"
) -> AsyncIterator[Buffer]:
    """Hold the state dir and open its buffer; see the module docstring."""
    lock = StateDirLock(config.agent.state_dir, role=role)
    await asyncio.to_thread(lock.acquire)
    try:
        async with SqliteBuffer.open(
            buffer_file(config),
            synchronous=config.buffer.synchronous,
            retention_s=config.buffer.retention_s,
            capacity=capacity(config),
            recover_corrupt=True,
        ) as buffer:
            yield buffer
    finally:
        lock.release()


@contextlib.asynccontextmanager
async def open_reader(config: AgentConfig) -> AsyncIterator[Buffer]:
    """Open the buffer read-only, without the state dir lock; see the module docstring.
    BufferUnavailable if there is no buffer file yet."""
    async with SqliteBuffer.open(buffer_file(config), read_only=True) as buffer:
        yield buffer


__all__ = ["buffer_file", "capacity", "open_reader", "open_store", "pacing", "priorities"]
