"""OPC UA source: subscribes to configured nodes and emits each data change as a `Reading`.

One `run()` is one session: connect, create one subscription, add the monitored items, then
forward notifications until the session is lost (raises `SourceUnavailable`) or the runtime
cancels it. Reconnecting is the runtime's job, so a new session re-creates the subscription
from scratch; the server then sends every current value again, and those repeats carry the
same source timestamp, so they map to the same event ids and the buffer drops them.

Readings keep the server's source timestamp (falling back to the server timestamp, then the
receive time) and map the OPC UA status code to quality (good / uncertain / bad with its name).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import (
    DataChangeEvent,
    OverflowPolicy,
    StatusChangeEvent,
    Subscription,
)
from asyncua.ua.uaerrors import UaError

from connectors.base import (
    Emit,
    Quality,
    Reading,
    SourceConfigError,
    SourceHealth,
    SourceUnavailable,
    Value,
)
from connectors.opcua.config import OpcUaSettings, OpcUaSignalSettings

_log = logging.getLogger(__name__)

# Notifications waiting between asyncua's publish loop and this connector. asyncua drops the
# oldest when it is full; it only fills when the agent cannot keep up with the server.
_NOTIFICATION_QUEUE = 50_000


class OpcUaConnector:
    """Reads one OPC UA server. See the module docstring."""

    def __init__(
        self, name: str, settings: OpcUaSettings, signals: Sequence[OpcUaSignalSettings]
    ) -> None:
        self.name = name
        self.settings = settings
        self.signals = list(signals)
        self.health = SourceHealth()

    async def run(self, emit: Emit) -> None:
        client = Client(
            self.settings.endpoint,
            timeout=self.settings.request_timeout_s,
            watchdog_intervall=self.settings.watchdog_interval_s,
        )
        try:
            await client.connect()
        except (OSError, TimeoutError, UaError) as error:
            raise SourceUnavailable(
                f"cannot connect to {self.settings.endpoint}: {_describe(error)}"
            ) from error
        try:
            self.health.connected = True
            self.health.last_error = None
            await self._subscribe_and_forward(client, emit)
        except (OSError, TimeoutError, UaError) as error:
            raise SourceUnavailable(
                f"session with {self.settings.endpoint} lost: {_describe(error)}"
            ) from error
        finally:
            self.health.connected = False
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), timeout=2.0)

    async def _subscribe_and_forward(self, client: Client, emit: Emit) -> None:
        subscription = await client.create_subscription(
            self.settings.publishing_interval_ms,
            handler=None,
            queue_maxsize=_NOTIFICATION_QUEUE,
            overflow=OverflowPolicy.DROP_OLDEST,
        )
        signal_of: dict[ua.NodeId, str] = {}
        groups: dict[tuple[float, int], list[OpcUaSignalSettings]] = defaultdict(list)
        for signal in self.signals:
            groups[(signal.sampling_interval_ms, signal.queue_size)].append(signal)
        failed: dict[str, str] = {}
        for (sampling, queue_size), members in groups.items():
            nodes = [client.get_node(signal.node) for signal in members]
            results = await subscription.subscribe_data_change(
                nodes, queuesize=queue_size, sampling_interval=ua.Double(sampling)
            )
            for signal, node, result in zip(members, nodes, results, strict=True):
                if isinstance(result, ua.StatusCode):
                    failed[signal.node] = result.name
                else:
                    signal_of[node.nodeid] = signal.node
        self.health.signal_errors = failed
        for node_id, reason in failed.items():
            _log.warning("source=%s node=%s cannot be monitored: %s", self.name, node_id, reason)
        if not signal_of:
            raise SourceConfigError(
                f"none of the {len(self.signals)} configured nodes can be monitored on "
                f"{self.settings.endpoint}: "
                + ", ".join(f"{node} ({reason})" for node, reason in failed.items())
            )
        _log.info(
            "source=%s subscribed to %d of %d nodes on %s",
            self.name, len(signal_of), len(self.signals), self.settings.endpoint,
        )
        # Two tasks: one forwards notifications, one watches the session. asyncua reports a
        # lost session as a bad StatusChange, and the watcher also notices a session state that
        # went bad without one. (No `next_event(timeout=...)`: on Python 3.11 its wait_for can
        # swallow a cancellation that races with a notification, and the source never stops.)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._forward(subscription, signal_of, emit))
                group.create_task(self._watch(client))
        except BaseExceptionGroup as group_error:
            unavailable = group_error.subgroup(SourceUnavailable)
            if unavailable is not None:
                raise unavailable.exceptions[0] from None
            raise

    async def _forward(
        self, subscription: Subscription, signal_of: dict[ua.NodeId, str], emit: Emit
    ) -> None:
        async for notification in subscription:
            if isinstance(notification, DataChangeEvent):
                address = signal_of.get(notification.node.nodeid)
                if address is None:
                    continue
                reading = self._reading(address, notification)
                self.health.readings_total += 1
                self.health.last_value_at = reading.timestamp
                await emit((reading,))
            elif isinstance(notification, StatusChangeEvent):
                status = notification.notification.Status
                if status.is_bad():
                    raise SourceUnavailable(
                        f"subscription on {self.settings.endpoint} ended: {status.name}"
                    )
        raise SourceUnavailable(f"subscription on {self.settings.endpoint} was closed")

    async def _watch(self, client: Client) -> None:
        while True:
            await asyncio.sleep(self.settings.watchdog_interval_s)
            if client.state is not UaClientState.CONNECTED:
                raise SourceUnavailable(f"session with {self.settings.endpoint} lost")

    def _reading(self, signal: str, notification: DataChangeEvent) -> Reading:
        data_value = notification.data.monitored_item.Value
        status = data_value.StatusCode if data_value.StatusCode is not None else None
        quality, status_name = Quality.GOOD, None
        if status is not None and not status.is_good():
            quality = Quality.BAD if status.is_bad() else Quality.UNCERTAIN
            status_name = status.name
        timestamp = data_value.SourceTimestamp or data_value.ServerTimestamp or datetime.now(UTC)
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        return Reading(
            source=self.name,
            signal=signal,
            value=_plain(notification.value),
            timestamp=timestamp,
            quality=quality,
            status=status_name,
        )


def _plain(value: Any) -> Value:
    """OPC UA scalars as plain Python values; anything else as its text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) < 300 else text[:297] + "..."
