"""The pipeline's reading queue: bounded in readings, FIFO, `put` waits for room and puts
what fits first; `put_total` counts what went in (commit tickets depend on it)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from agent.flow.pipeline import _ReadingQueue
from connectors.base import Reading

_T = datetime(2026, 1, 1, tzinfo=UTC)


def _readings(*values: int) -> list[Reading]:
    return [Reading(source="s", signal="x", value=value, timestamp=_T) for value in values]


def _values(batch: list[Reading]) -> list[object]:
    return [reading.value for reading in batch]


async def test_a_batch_that_fits_goes_in_at_once() -> None:
    queue = _ReadingQueue(10)
    await queue.put(_readings(1, 2, 3))
    await queue.put(_readings(4))
    assert (queue.qsize(), queue.put_total) == (4, 4)
    await queue.wait()
    assert _values(queue.take(3)) == [1, 2, 3]
    assert _values(queue.take(3)) == [4]
    assert queue.qsize() == 0


async def test_put_waits_for_room_and_keeps_the_order() -> None:
    queue = _ReadingQueue(3)
    putter = asyncio.create_task(queue.put(_readings(1, 2, 3, 4, 5)))
    await asyncio.sleep(0)
    assert not putter.done()  # backpressure: what fits is in, the rest waits
    assert (queue.qsize(), queue.put_total) == (3, 3)
    taken = _values(queue.take(2))
    while not putter.done():
        await asyncio.sleep(0)
        if queue.qsize() == 3 and not putter.done():
            taken += _values(queue.take(2))
    taken += _values(queue.take(10))
    assert taken == [1, 2, 3, 4, 5]
    assert queue.put_total == 5


async def test_a_cancelled_put_counts_what_went_in() -> None:
    queue = _ReadingQueue(2)
    putter = asyncio.create_task(queue.put(_readings(1, 2, 3)))
    await asyncio.sleep(0)
    putter.cancel()
    await asyncio.gather(putter, return_exceptions=True)
    assert (queue.qsize(), queue.put_total) == (2, 2)


async def test_wait_returns_once_something_arrives() -> None:
    queue = _ReadingQueue(0)  # as asyncio.Queue: 0 is unbounded
    waiter = asyncio.create_task(queue.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    await queue.put(_readings(*range(100)))
    await asyncio.wait_for(waiter, 5)
    assert len(queue.take(1000)) == 100
