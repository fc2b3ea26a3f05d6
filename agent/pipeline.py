"""Pipeline: readings from every source → mapping → one buffer transaction per batch.

Sources hand readings to `emit`, which puts them on a bounded queue (`max_pending` readings):
when the buffer falls behind, `emit` blocks and the sources slow down; nothing is dropped here.
One task takes everything waiting (up to `max_batch`), maps it, and appends the events to the
buffer in one transaction (group commit), then wakes the forwarder. A reading is *accepted*
when that transaction commits; until then it exists only in memory, and `stop()` drains the
queue into the buffer before the agent exits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.events import encode_body
from agent.mapping import Mapper
from buffer.base import Buffer, Record
from connectors.base import Reading

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class PipelineCounters:
    readings_total: int = 0
    events_accepted_total: int = 0
    events_duplicate_total: int = 0
    readings_unmappable_total: int = 0
    last_seq: int = 0


class Pipeline:
    def __init__(
        self,
        mapper: Mapper,
        buffer: Buffer,
        *,
        site: str,
        agent: str,
        on_accepted: Callable[[], None] = lambda: None,
        max_pending: int = 20_000,
        max_batch: int = 2_000,
    ) -> None:
        self._mapper = mapper
        self._buffer = buffer
        self._site = site
        self._agent = agent
        self._on_accepted = on_accepted
        self._queue: asyncio.Queue[Reading] = asyncio.Queue(max_pending)
        self._max_batch = max_batch
        self._unmappable_seen: set[str] = set()
        self._committing: asyncio.Future[None] | None = None
        self.counters = PipelineCounters()

    async def emit(self, readings: Sequence[Reading]) -> None:
        """Hand readings over; blocks while the queue is full (backpressure)."""
        queue = self._queue
        for reading in readings:
            if queue.full():
                await queue.put(reading)
            else:
                queue.put_nowait(reading)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        """Commit batches until cancelled. A commit under way is never cut short by the
        cancellation: it is shielded, and `stop` waits for it."""
        while True:
            first = await self._queue.get()
            self._committing = asyncio.ensure_future(self._commit(self._take(first)))
            await asyncio.shield(self._committing)

    async def stop(self, task: asyncio.Task[None], timeout: float) -> None:
        """Stop the `run` task and commit everything still queued (call after the sources
        have stopped, so nothing more arrives)."""
        task.cancel()
        await asyncio.wait([task], timeout=timeout)
        if self._committing is not None and not self._committing.done():
            await asyncio.wait([self._committing], timeout=timeout)
        while not self._queue.empty():
            await self._commit(self._take(self._queue.get_nowait()))

    def _take(self, first: Reading) -> list[Reading]:
        batch = [first]
        queue = self._queue
        while len(batch) < self._max_batch and not queue.empty():
            batch.append(queue.get_nowait())
        return batch

    async def _commit(self, readings: list[Reading]) -> None:
        events, rejected = self._mapper.map_all(readings)
        self.counters.readings_total += len(readings)
        for reading, reason in rejected:
            self.counters.readings_unmappable_total += 1
            key = f"{reading.source}/{reading.signal}"
            if key not in self._unmappable_seen:  # log once per signal, count every time
                self._unmappable_seen.add(key)
                _log.warning("unmappable reading set aside: %s", reason)
        if not events:
            return
        records = [
            Record(
                id=event.id,
                kind=event.type.name,
                priority=int(event.type.default_priority),
                body=encode_body(event, site=self._site, agent=self._agent),
            )
            for event in events
        ]
        result = await self._buffer.append(records)
        self.counters.events_accepted_total += result.accepted
        self.counters.events_duplicate_total += result.duplicates
        self.counters.last_seq = result.last_seq
        if result.accepted:
            self._on_accepted()
