"""A subscription that hands over one batch per publish response, not one object per change.

asyncua's iterator API turns every notification into a `DataChangeEvent` (plus a
`DataChangeNotif`) and puts each on its own queue; at thousands of changes per second that
per-notification work costs more than the connector's own. `BatchedSubscription` keeps
asyncua's subscription (creation, monitored items, stale watchdog, recreate and restore after
a reconnect all stay asyncua's) and replaces only its publish callback: each publish response
becomes one list of the raw notifications it carried, in the server's order:

- `DataChanges`: the data changes of one DataChangeNotification as columns, when the session
  decodes with the lean decoder (`connectors.opcua.fast_publish`, installed per session by
  `create_batched_subscription`);
- `ua.MonitoredItemNotification`: a data change (its `ClientHandle` and `DataValue`), when
  asyncua decoded the response (a republish, a response the lean decoder left to asyncua);
- `OpcEvent`: an event firing, made by asyncua's own event decoding (`server_handle` set);
- `ua.StatusChangeNotification`: the subscription's status changed (also what asyncua sends
  when it loses the connection: `BadShutdown`).

Invariants (those of asyncua's iterator with `OverflowPolicy.DROP_OLDEST`):
- The publish loop never waits for the consumer: at most `max_notifications` notifications
  wait (a `DataChanges` counts as its rows); beyond that the oldest are dropped
  (`dropped_total`). It only fills when the agent
  cannot keep up with the server.
- `batches()` yields in arrival order and ends once the subscription is deleted and what
  arrived before is consumed.
- `last_publish_at` / `last_sequence_number` are kept as asyncua keeps them (its stale
  watchdog and republish read them).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import OpcEvent, OverflowPolicy, Subscription

from connectors.opcua import fast_publish
from connectors.opcua.fast_publish import DataChanges, LeanPublish

_log = logging.getLogger(__name__)

Notification = DataChanges | ua.MonitoredItemNotification | OpcEvent | ua.StatusChangeNotification


def _size(notification: Notification) -> int:
    """How many notifications an entry of a batch stands for."""
    return len(notification) if type(notification) is DataChanges else 1


class BatchedSubscription(Subscription):
    """An asyncua subscription read with `batches()`. See the module docstring."""

    # The lean decoder hands this subscription's data changes over as `DataChanges`.
    takes_data_changes = True

    def __init__(
        self, session: Any, parameters: ua.CreateSubscriptionParameters, max_notifications: int
    ) -> None:
        super().__init__(
            session, parameters, None, queue_maxsize=1, overflow=OverflowPolicy.DROP_OLDEST
        )
        self._event_queue = None  # asyncua's per-notification queue is not used
        # Each batch with the count of notifications it holds.
        self._batches: collections.deque[tuple[int, list[Notification]]] = collections.deque()
        self._queued = 0
        self._max_notifications = max_notifications
        self._arrived = asyncio.Event()
        self._closed = False
        self.dropped_total = 0

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        """One publish response (or asyncua's own status notice) in: one batch queued."""
        self.last_publish_at = time.monotonic()
        message = publish_result.NotificationMessage
        if message.NotificationData is None:
            return  # a keep-alive
        self.last_sequence_number = int(message.SequenceNumber)
        batch: list[Notification] = []
        produced = 0
        for data in message.NotificationData:
            if type(data) is DataChanges:
                if data.handles:
                    batch.append(data)
                    produced += len(data.handles)
            elif isinstance(data, ua.DataChangeNotification):
                batch.extend(data.MonitoredItems)
                produced += len(data.MonitoredItems)
            elif isinstance(data, ua.EventNotificationList):
                events = list(self._explode_events(data))
                batch.extend(events)
                produced += len(events)
            elif isinstance(data, ua.StatusChangeNotification):
                batch.append(data)
                produced += 1
            else:
                _log.warning("notification type not supported: %s", type(data).__name__)
        if batch:
            self._queue_batch(batch, produced)
        self._observe(
            lambda: self.server.observer.on_notification(self.subscription_id, produced)
        )

    def _queue_batch(self, batch: list[Notification], size: int) -> None:
        """Queue `batch` (`size` notifications), first dropping the oldest notifications
        queued (then the oldest of `batch` itself) beyond `max_notifications`."""
        excess = self._queued + size - self._max_notifications
        if excess > 0:
            self.dropped_total += excess
            _log.debug("subscription %s: dropping %d oldest notifications",
                       self.subscription_id, excess)
            while excess > 0 and self._batches:
                oldest_size, oldest = self._batches[0]
                if oldest_size <= excess:
                    self._batches.popleft()
                    self._queued -= oldest_size
                    excess -= oldest_size
                else:
                    _drop_oldest(oldest, excess)
                    self._batches[0] = (oldest_size - excess, oldest)
                    self._queued -= excess
                    excess = 0
            if excess > 0:
                _drop_oldest(batch, excess)
                size -= excess
        if size > 0:
            self._batches.append((size, batch))
            self._queued += size
            self._arrived.set()

    def _close_iterator(self) -> None:
        """asyncua calls this when the subscription is deleted: `batches()` ends."""
        self._closed = True
        self._arrived.set()

    @property
    def queued(self) -> int:
        """Notifications received and not yet taken by `batches()`."""
        return self._queued

    async def batches(self) -> AsyncIterator[list[Notification]]:
        """Each publish response's notifications, in order, until the subscription is deleted."""
        while True:
            while not self._batches:
                if self._closed:
                    return
                self._arrived.clear()
                await self._arrived.wait()
            size, batch = self._batches.popleft()
            self._queued -= size
            yield batch


def _drop_oldest(batch: list[Notification], count: int) -> None:
    """Remove the first `count` notifications of `batch` (rows of a `DataChanges` one by one)."""
    dropped = 0
    while count > 0 and dropped < len(batch):
        entry = batch[dropped]
        size = _size(entry)
        if size <= count:
            count -= size
            dropped += 1
        else:
            entry.drop_oldest(count)  # type: ignore[union-attr]  # only DataChanges is > 1
            count = 0
    del batch[:dropped]


async def create_batched_subscription(
    client: Client,
    parameters: ua.CreateSubscriptionParameters,
    max_notifications: int,
    *,
    lean: bool = True,
) -> BatchedSubscription:
    """`Client.create_subscription` (asyncua 2.x), with a `BatchedSubscription`: registered
    with the client like its own, so its stale watchdog and reconnect handling cover it.
    `lean`: the client's session decodes PublishResponses with `fast_publish` (this session
    only; asyncua's own publish stays if its shapes differ)."""
    session = client.uaclient.session
    if lean:
        fast_publish.install(session)
    subscription = BatchedSubscription(session, parameters, max_notifications)
    results = await subscription.init()
    revised = client.get_subscription_revised_params(parameters, results)
    if revised:
        await subscription.update(revised)
    client._subscriptions.append(subscription)  # as create_subscription does
    return subscription


def lean_publish(client: Client) -> LeanPublish | None:
    """The lean decoder installed in this client's session, if it is."""
    publish = getattr(client.uaclient.session, "publish", None)
    return publish if isinstance(publish, LeanPublish) else None
