"""`BatchedSubscription`: one batch per publish response, bounded, drop-oldest, ends on delete."""

from __future__ import annotations

import asyncio
from typing import Any

from asyncua import ua
from asyncua.ua.status_codes import StatusCodes

from connectors.opcua.batches import BatchedSubscription, Notification


class _Observer:
    def on_notification(self, subscription_id: Any, produced: int) -> None:
        pass


class _Session:
    observer = _Observer()


def _changes(sequence: int, *handles: int) -> ua.PublishResult:
    items = [
        ua.MonitoredItemNotification(ClientHandle=handle, Value=ua.DataValue(ua.Variant(1.0)))
        for handle in handles
    ]
    message = ua.NotificationMessage(
        SequenceNumber=sequence, NotificationData=[ua.DataChangeNotification(MonitoredItems=items)]
    )
    return ua.PublishResult(1, NotificationMessage=message)


def _handles(batch: list[Notification]) -> list[int]:
    return [item.ClientHandle for item in batch if isinstance(item, ua.MonitoredItemNotification)]


async def _take(subscription: BatchedSubscription, count: int) -> list[list[Notification]]:
    batches = subscription.batches()
    return [await anext(batches) for _ in range(count)]


async def test_one_batch_per_publish_response_in_order() -> None:
    subscription = BatchedSubscription(_Session(), ua.CreateSubscriptionParameters(), 100)
    await subscription.publish_callback(_changes(1, 1, 2, 3))
    keep_alive = ua.PublishResult(1, NotificationMessage=ua.NotificationMessage(SequenceNumber=2))
    keep_alive.NotificationMessage.NotificationData = None
    await subscription.publish_callback(keep_alive)
    status = ua.StatusChangeNotification(Status=ua.StatusCode(ua.UInt32(StatusCodes.BadShutdown)))
    await subscription.publish_callback(
        ua.PublishResult(1, NotificationMessage=ua.NotificationMessage(
            SequenceNumber=3, NotificationData=[status]
        ))
    )
    assert subscription.last_publish_at is not None
    assert subscription.last_sequence_number == 3
    first, second = await _take(subscription, 2)
    assert _handles(first) == [1, 2, 3]
    assert second == [status]
    assert subscription.queued == 0


async def test_the_oldest_notifications_are_dropped_beyond_the_bound() -> None:
    subscription = BatchedSubscription(_Session(), ua.CreateSubscriptionParameters(), 5)
    await subscription.publish_callback(_changes(1, 1, 2, 3))
    await subscription.publish_callback(_changes(2, 4, 5, 6, 7))
    assert subscription.dropped_total == 2
    assert subscription.queued == 5
    first, second = await _take(subscription, 2)
    assert (_handles(first), _handles(second)) == ([3], [4, 5, 6, 7])
    await subscription.publish_callback(_changes(3, *range(10, 18)))  # more than the bound
    (only,) = await _take(subscription, 1)
    assert _handles(only) == [13, 14, 15, 16, 17]
    assert subscription.dropped_total == 5


async def test_batches_end_once_deleted_and_drained() -> None:
    subscription = BatchedSubscription(_Session(), ua.CreateSubscriptionParameters(), 100)
    received: list[list[int]] = []

    async def consume() -> None:
        async for batch in subscription.batches():
            received.append(_handles(batch))

    consumer = asyncio.create_task(consume())
    await subscription.publish_callback(_changes(1, 1))
    await asyncio.sleep(0)
    await subscription.publish_callback(_changes(2, 2))
    subscription._close_iterator()  # what asyncua's delete() calls
    await asyncio.wait_for(consumer, 5)
    assert received == [[1], [2]]
