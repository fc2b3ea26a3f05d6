"""OPC UA source: watches the configured signals of one server and emits `Reading`s.

One `run()` is one session (`connectors.opcua.session` opens it with the configured security,
trust list and user identity). Reconnecting is the runtime's job (`SourceRunner`: capped
exponential backoff with jitter), so every session starts from scratch: addresses are resolved
again (namespace indexes and browse paths may point elsewhere after a server update), one
subscription is created with every monitored item, and the server sends every current value
again; those repeats carry the same source timestamp and map to the same event ids, which the
buffer drops.

Per signal, by `mode`:
- `subscribe`: a monitored item (sampling interval, queue size, absolute/percent deadband
  filter evaluated by the server);
- `poll`: one batched Read per poll interval for all signals sharing it; a reading is emitted
  when value, status or source timestamp changed;
- `events`: an event monitored item on a notifier (Alarms & Conditions); each event becomes a
  reading whose value is the message and whose attributes carry severity, condition, state
  (`active`, `acknowledged`): the filter selects each condition field against the type that
  defines it (`connectors.opcua.event_filter`), so they arrive whatever the event types.

Invariants:
- One bad signal never stops the others: a signal whose node does not resolve or cannot be
  monitored is listed in `health.signal_errors` and tried again every `signal_retry_s` while
  the rest flow. A value with a Bad status is forwarded marked bad, never dropped.
- The session is watched: a lost connection, or a subscription that went silent (neither data
  nor keep-alive for three keep-alive periods, or recreated in place by asyncua's own stale
  watchdog after 1.5), ends the session with `SourceUnavailable`, and the next session
  recreates everything.
- A connection gap is visible in `health.disconnected_at` / `health.reconnected_at`; after a
  gap, signals marked `backfill` are filled from the server's history (`history`).
- Readings keep source, server and receive time; `timestamp` (config) chooses which one is the
  reading's time. A server clock off by more than `clock_skew_warn_s` is reported. The receive
  time is read once per publish response; a reading whose time it is reads the clock itself.
- No `asyncio.wait_for` / `next_event(timeout=)` around notification reads: on Python 3.11 its
  wait_for can swallow a cancellation racing with a notification, and the source never stops.
  Notifications are pumped with `async for`, and a separate task watches the session.
- Each publish response becomes one `emit` of its readings, in the server's order
  (`connectors.opcua.batches`); a Bad subscription status emits what came before it, then
  ends the session. Data changes arrive as columns (`DataChanges`, from the session's lean
  decoder `connectors.opcua.fast_publish`) or as asyncua's objects (a republish, a response
  the lean decoder left to asyncua); both give the same readings.

Why ~660 lines: the session's whole life (connect, subscribe or poll, events, backfill
after a gap, reconnect) shares the one asyncua client and its health, and readings are made
from asyncua's objects and from the lean decoder's columns alike; the address resolution,
batching, decoding, history and certificates already live in their own modules.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UaClientState
from asyncua.common.subscription import OpcEvent, Subscription
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes, get_name_and_doc
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from connectors.base import (
    Emit,
    Quality,
    Reading,
    SourceHealth,
    SourceUnavailable,
    Value,
)
from connectors.opcua.addressing import AddressNotFound, AddressResolver
from connectors.opcua.batches import (
    BatchedSubscription,
    Notification,
    create_batched_subscription,
)
from connectors.opcua.config import (
    OpcUaSettings,
    OpcUaSignalSettings,
    SignalMode,
    TimestampChoice,
)
from connectors.opcua.event_filter import event_filter
from connectors.opcua.fast_publish import DataChanges
from connectors.opcua.history import NoHistory, read_raw
from connectors.opcua.session import SessionInfo, describe_error, open_session

_log = logging.getLogger(__name__)

# Notifications waiting between asyncua's publish loop and this connector (`batches`): the
# oldest are dropped when it is full; it only fills when the agent cannot keep up.
_NOTIFICATION_QUEUE = 50_000
_KEEPALIVE_MS = 5_000.0
# A subscription with neither data nor keep-alive for this many keep-alive periods is dead.
_SILENT_KEEPALIVES = 3.0
# Status codes that mean "this node is not (or no longer) on the server".
_NODE_GONE = {StatusCodes.BadNodeIdUnknown, StatusCodes.BadNodeIdInvalid}
# A status code's severity bits (00 Good, 01 Uncertain, 10 and 11 Bad; `ua.StatusCode.is_good`,
# `is_bad`).
_SEVERITY = 0xC000_0000
_BAD = 0x8000_0000
# Client handles of monitored items this connector creates itself (asyncua's own start at 200).
_FIRST_HANDLE = 1_000_000


@dataclass(slots=True)
class _Plan:
    """What this session watches: monitored items by handle, poll groups, failed signals."""

    data: dict[int, OpcUaSignalSettings] = field(default_factory=dict)  # client handle
    events: dict[int, OpcUaSignalSettings] = field(default_factory=dict)  # server handle
    polls: dict[float, dict[str, ua.NodeId]] = field(default_factory=lambda: defaultdict(dict))
    failed: dict[str, str] = field(default_factory=dict)


class OpcUaConnector:
    """Reads one OPC UA server. See the module docstring."""

    def __init__(
        self, name: str, settings: OpcUaSettings, signals: Sequence[OpcUaSignalSettings]
    ) -> None:
        self.name = name
        self.settings = settings
        self.signals = list(signals)
        self.health = SourceHealth()
        self._handles = itertools.count(_FIRST_HANDLE)
        # Source timestamp of the last reading of each `backfill` signal, across sessions.
        self._last_seen: dict[str, datetime] = {}
        self._by_address = {signal.node: signal for signal in self.signals}
        self._backfilled = {signal.node for signal in self.signals if signal.backfill}

    async def run(self, emit: Emit) -> None:
        info = SessionInfo()
        async with open_session(self.settings, info) as client:
            self.health.notices.update(info.notices)
            self.health.connected = True
            self.health.last_error = None
            if self.health.disconnected_at is not None:
                self.health.reconnected_at = datetime.now(UTC)
            try:
                await self._session(client, emit)
            except (OSError, TimeoutError, UaError) as error:
                raise SourceUnavailable(
                    f"session with {self.settings.endpoint} lost: {describe_error(error)}"
                ) from error
            finally:
                self.health.connected = False
                self.health.disconnected_at = datetime.now(UTC)

    async def _session(self, client: Client, emit: Emit) -> None:
        await self._check_clock(client)
        interval = self.settings.publishing_interval_ms
        parameters = ua.CreateSubscriptionParameters()
        parameters.RequestedPublishingInterval = interval
        # A keep-alive about every 5 s when nothing changes, so a silent subscription is told
        # from a quiet one quickly; the lifetime is the spec's minimum of three keep-alives, +1.
        parameters.RequestedMaxKeepAliveCount = max(1, math.ceil(_KEEPALIVE_MS / interval))
        parameters.RequestedLifetimeCount = 4 * parameters.RequestedMaxKeepAliveCount
        parameters.MaxNotificationsPerPublish = 10_000
        parameters.PublishingEnabled = True
        subscription = await create_batched_subscription(client, parameters, _NOTIFICATION_QUEUE)
        plan = _Plan()
        await self._attach(client, subscription, self.signals, plan)
        self._report(plan)
        await self._backfill(client, plan, emit)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._forward(subscription, plan, emit))
                group.create_task(self._watch(client, subscription))
                group.create_task(self._retry_failed(client, subscription, plan))
                for interval_ms in list(plan.polls):
                    group.create_task(self._poll(client, plan, interval_ms, emit))
        except BaseExceptionGroup as group_error:
            for kind in (SourceUnavailable, OSError, TimeoutError, UaError):
                found = group_error.subgroup(kind)
                if found is not None:
                    raise _first_leaf(found) from None
            raise

    # --- setting up --------------------------------------------------------------------------

    async def _attach(
        self,
        client: Client,
        subscription: Subscription,
        signals: Iterable[OpcUaSignalSettings],
        plan: _Plan,
    ) -> None:
        """Resolve and start watching `signals`; failures go to `plan.failed`."""
        resolver = AddressResolver(client)
        resolved: list[tuple[OpcUaSignalSettings, ua.NodeId]] = []
        for signal in signals:
            try:
                resolved.append((signal, await resolver.resolve(signal.node)))
            except AddressNotFound as error:
                plan.failed[signal.node] = str(error)
            except UaStatusCodeError as error:
                plan.failed[signal.node] = ua.StatusCode(error.code).name
        items: list[tuple[OpcUaSignalSettings, ua.MonitoredItemCreateRequest]] = []
        for signal, node_id in resolved:
            if signal.mode is SignalMode.SUBSCRIBE:
                items.append((signal, self._item_request(signal, node_id)))
            elif signal.mode is SignalMode.EVENTS:
                await self._attach_events(client, subscription, signal, node_id, plan)
            else:
                await self._attach_poll(client, signal, node_id, plan)
        if items:
            results = await subscription.create_monitored_items([request for _, request in items])
            for (signal, request), result in zip(items, results, strict=True):
                if isinstance(result, ua.StatusCode):
                    plan.failed[signal.node] = result.name
                else:
                    plan.data[request.RequestedParameters.ClientHandle] = signal
                    plan.failed.pop(signal.node, None)

    def _item_request(
        self, signal: OpcUaSignalSettings, node_id: ua.NodeId
    ) -> ua.MonitoredItemCreateRequest:
        parameters = ua.MonitoringParameters()
        parameters.ClientHandle = next(self._handles)
        parameters.SamplingInterval = signal.sampling_interval_ms
        parameters.QueueSize = signal.queue_size
        parameters.DiscardOldest = True
        if signal.deadband_absolute is not None or signal.deadband_percent is not None:
            absolute = signal.deadband_absolute is not None
            parameters.Filter = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=ua.DeadbandType.Absolute if absolute else ua.DeadbandType.Percent,
                DeadbandValue=(
                    signal.deadband_absolute if absolute else signal.deadband_percent
                ),
            )
        request = ua.MonitoredItemCreateRequest()
        request.ItemToMonitor = ua.ReadValueId(NodeId=node_id, AttributeId=AttributeIds.Value)
        request.MonitoringMode = ua.MonitoringMode.Reporting
        request.RequestedParameters = parameters
        return request

    async def _attach_events(
        self,
        client: Client,
        subscription: Subscription,
        signal: OpcUaSignalSettings,
        node_id: ua.NodeId,
        plan: _Plan,
    ) -> None:
        try:
            handle = await subscription.subscribe_events(
                node_id,
                evfilter=await event_filter(client, signal.event_types),
                queuesize=signal.queue_size,
            )
        except UaStatusCodeError as error:
            plan.failed[signal.node] = ua.StatusCode(error.code).name
            return
        plan.events[handle] = signal
        plan.failed.pop(signal.node, None)

    async def _attach_poll(
        self, client: Client, signal: OpcUaSignalSettings, node_id: ua.NodeId, plan: _Plan
    ) -> None:
        (value,) = await _read(client, [node_id])
        if value.StatusCode is not None and value.StatusCode.value in _NODE_GONE:
            plan.failed[signal.node] = value.StatusCode.name
            return
        plan.polls[signal.poll_interval_ms][signal.node] = node_id
        plan.failed.pop(signal.node, None)

    def _report(self, plan: _Plan) -> None:
        self.health.signal_errors = dict(plan.failed)
        for address, reason in plan.failed.items():
            _log.warning(
                "source=%s signal %s cannot be watched: %s (retrying every %.0f s)",
                self.name, address, reason, self.settings.signal_retry_s,
            )
        watched = len(self.signals) - len(plan.failed)
        _log.info(
            "source=%s subscribed to %d of %d nodes on %s",
            self.name, watched, len(self.signals), self.settings.endpoint,
        )

    async def _check_clock(self, client: Client) -> None:
        before = datetime.now(UTC)
        clock = client.get_node(ObjectIds.Server_ServerStatus_CurrentTime)
        server_time = await clock.read_value()
        after = datetime.now(UTC)
        if not isinstance(server_time, datetime):
            return
        if server_time.tzinfo is None:
            server_time = server_time.replace(tzinfo=UTC)
        skew = (server_time - (before + (after - before) / 2)).total_seconds()
        if abs(skew) > self.settings.clock_skew_warn_s:
            text = (
                f"the server clock is {abs(skew):.1f} s {'ahead of' if skew > 0 else 'behind'} "
                f"the agent's (more than clock_skew_warn_s = {self.settings.clock_skew_warn_s})"
            )
            if self.health.notices.get("clock_skew") is None:
                _log.warning("source=%s %s", self.name, text)
            self.health.notices["clock_skew"] = text
        else:
            self.health.notices.pop("clock_skew", None)

    # --- backfill ----------------------------------------------------------------------------

    async def _backfill(self, client: Client, plan: _Plan, emit: Emit) -> None:
        watched = {signal.node for signal in plan.data.values()}
        watched.update(address for group in plan.polls.values() for address in group)
        resolver = AddressResolver(client)
        now = datetime.now(UTC)
        earliest = now - timedelta(seconds=self.settings.backfill_max_s)
        for signal in self.signals:
            since = self._last_seen.get(signal.node)
            if not signal.backfill or since is None or signal.node not in watched:
                continue
            try:
                node_id = await resolver.resolve(signal.node)
                values = await read_raw(client, node_id, max(since, earliest), now)
            except NoHistory as error:
                text = f"{signal.node}: the server keeps no history for it ({error}); no backfill"
                if self.health.notices.get(f"history:{signal.node}") is None:
                    _log.warning("source=%s %s", self.name, text)
                self.health.notices[f"history:{signal.node}"] = text
                continue
            except AddressNotFound:
                continue
            self.health.notices.pop(f"history:{signal.node}", None)
            readings = [
                self._reading(signal.node, value.Value.Value if value.Value else None, value,
                              backfilled=True)
                for value in values
            ]
            if readings:
                _log.info(
                    "source=%s backfilled %d value(s) of %s since %s",
                    self.name, len(readings), signal.node, since.isoformat(),
                )
                await self._emit(emit, readings)

    # --- running -----------------------------------------------------------------------------

    async def _forward(
        self, subscription: BatchedSubscription, plan: _Plan, emit: Emit
    ) -> None:
        """One `emit` per publish response, with its readings in the server's order."""
        async for batch in subscription.batches():
            readings, ended = self._readings(batch, plan)
            if ended is not None:
                if readings:  # what came before the status is kept
                    await self._emit(emit, readings)
                raise SourceUnavailable(
                    f"subscription on {self.settings.endpoint} ended: {ended.Status.name}"
                )
            if readings:
                await self._emit(emit, readings)
        raise SourceUnavailable(f"subscription on {self.settings.endpoint} was closed")

    def _readings(
        self, batch: Sequence[Notification], plan: _Plan
    ) -> tuple[list[Reading], ua.StatusChangeNotification | None]:
        """The readings of one publish response, in the server's order, and the bad
        subscription status that ended it (None: it did not; what follows it is dropped)."""
        readings: list[Reading] = []
        received = datetime.now(UTC)  # one clock read per publish response
        errors = self.health.signal_errors
        data = plan.data
        for notification in batch:
            if type(notification) is DataChanges:  # the lean decoder's columns
                readings.extend(self._column_readings(notification, data, errors, received))
            elif isinstance(notification, ua.MonitoredItemNotification):
                signal = data.get(notification.ClientHandle)
                if signal is None:
                    continue
                value = notification.Value
                status = value.StatusCode
                if errors or (status is not None and status.value):  # else nothing to track
                    self._track_node_status(signal.node, status)
                readings.append(self._reading(signal.node, _variant(value), value, received))
            elif isinstance(notification, OpcEvent):
                handle = notification.event.server_handle
                event_signal = plan.events.get(handle) if handle is not None else None
                if event_signal is not None:
                    readings.append(self._event_reading(event_signal.node, notification))
            elif isinstance(notification, ua.StatusChangeNotification):
                if notification.Status.is_bad():
                    return readings, notification
        return readings, None

    def _column_readings(
        self,
        changes: DataChanges,
        data: dict[int, OpcUaSignalSettings],
        errors: dict[str, str],
        received: datetime,
    ) -> list[Reading]:
        """The readings of one DataChangeNotification decoded as columns: the same readings
        `_reading` makes of asyncua's objects (the decoder's timestamps are aware UTC)."""
        readings: list[Reading] = []
        append = readings.append
        values, statuses = changes.values, changes.statuses
        sources, servers = changes.sources, changes.servers
        choice, name, good = self.settings.timestamp, self.name, Quality.GOOD
        for row, handle in enumerate(changes.handles):
            signal = data.get(handle)
            if signal is None:
                continue
            code = statuses[row]
            if errors or code:  # else nothing to track
                self._track_status_code(signal.node, code)
            source, server = sources[row], servers[row]
            if choice is TimestampChoice.SOURCE:
                timestamp = source or server
            else:
                timestamp = server if choice is TimestampChoice.SERVER else None
            if timestamp is None or code & _SEVERITY:  # not Good, or timed by the clock
                append(self._column_reading(signal.node, values[row], code, source, server,
                                            received))  # fmt: skip
                continue
            value = values[row]
            if type(value) not in _PLAIN_TYPES:
                value = _plain(value)
            # What `_column_reading` builds for a Good value with a time (positional: the
            # fields' order, one per value on the hot path).
            append(Reading(name, signal.node, value, timestamp, good, None, (), False, source,
                           server, received))  # fmt: skip
        return readings

    async def _poll(self, client: Client, plan: _Plan, interval_ms: float, emit: Emit) -> None:
        last: dict[str, tuple[Any, Any, Any]] = {}
        while True:
            group = plan.polls[interval_ms]
            addresses = list(group)
            if addresses:
                values = await _read(client, [group[address] for address in addresses])
                received = datetime.now(UTC)  # one clock read per Read response
                readings = []
                for address, value in zip(addresses, values, strict=True):
                    self._track_node_status(address, value.StatusCode)
                    fact = (_variant(value), value.StatusCode, value.SourceTimestamp)
                    if last.get(address) == fact:
                        continue
                    last[address] = fact
                    readings.append(self._reading(address, _variant(value), value, received))
                if readings:
                    await self._emit(emit, readings)
            await asyncio.sleep(interval_ms / 1000)

    async def _watch(self, client: Client, subscription: Subscription) -> None:
        parameters = subscription.parameters
        keepalive_s = (
            parameters.RequestedPublishingInterval / 1000
            * max(int(parameters.RequestedMaxKeepAliveCount or 1), 1)
        )
        silent_after = max(keepalive_s * _SILENT_KEEPALIVES, 2.0)
        # asyncua's client has its own stale-subscription watchdog (1.5 keep-alive periods) that
        # recreates a silent subscription in place, under a new id and with new server handles
        # (event items are keyed by server handle here). A new id therefore also means "went
        # silent": the session ends and the next one recreates everything from scratch.
        created_id = subscription.subscription_id
        silent = (
            f"subscription on {self.settings.endpoint} went silent (no data and no keep-alive "
            f"for {silent_after:.0f} s); recreating it"
        )
        while True:
            await asyncio.sleep(self.settings.watchdog_interval_s)
            if client.state is not UaClientState.CONNECTED:
                raise SourceUnavailable(f"session with {self.settings.endpoint} lost")
            if subscription.subscription_id != created_id:
                raise SourceUnavailable(silent)
            last = subscription.last_publish_at
            if last is not None and time.monotonic() - last > silent_after:
                raise SourceUnavailable(silent)

    async def _retry_failed(
        self, client: Client, subscription: Subscription, plan: _Plan
    ) -> None:
        while True:
            await asyncio.sleep(self.settings.signal_retry_s)
            if not plan.failed:
                continue
            retry = [self._by_address[address] for address in plan.failed]
            await self._attach(client, subscription, retry, plan)
            for signal in retry:
                if signal.node not in plan.failed:
                    _log.info("source=%s signal %s is watched now", self.name, signal.node)
            self.health.signal_errors = dict(plan.failed)

    # --- readings ----------------------------------------------------------------------------

    async def _emit(self, emit: Emit, readings: Sequence[Reading]) -> None:
        if self._backfilled:
            for reading in readings:
                if reading.signal in self._backfilled and reading.source_timestamp:
                    self._last_seen[reading.signal] = reading.source_timestamp
        self.health.readings_total += len(readings)
        self.health.last_value_at = readings[-1].received_at
        await emit(readings)

    def _track_node_status(self, address: str, status: ua.StatusCode | None) -> None:
        self._track_status_code(address, None if status is None else status.value)

    def _track_status_code(self, address: str, code: int | None) -> None:
        """`code`: the value's status code (None: it had none)."""
        if code is not None and code in _NODE_GONE:
            name = get_name_and_doc(code)[0]  # `ua.StatusCode.name`
            if address not in self.health.signal_errors:
                _log.warning("source=%s signal %s: %s", self.name, address, name)
            self.health.signal_errors[address] = name
        elif address in self.health.signal_errors and (code is None or not code & _SEVERITY):
            del self.health.signal_errors[address]

    def _reading(
        self,
        signal: str,
        value: Any,
        data_value: ua.DataValue,
        received: datetime | None = None,
        *,
        backfilled: bool = False,
    ) -> Reading:
        """`received`: when its publish response arrived (None: now). A reading whose time is
        its receive time (`timestamp = "receive"`, or a value without timestamps) reads the
        clock itself, so two values of one response never share a made-up time."""
        status = data_value.StatusCode
        return self._column_reading(
            signal,
            value,
            None if status is None else status.value,
            _utc(data_value.SourceTimestamp),
            _utc(data_value.ServerTimestamp),
            received,
            backfilled=backfilled,
        )

    def _column_reading(
        self,
        signal: str,
        value: Any,
        code: int | None,
        source: datetime | None,
        server: datetime | None,
        received: datetime | None,
        *,
        backfilled: bool = False,
    ) -> Reading:
        """`_reading` of a value taken apart: its status code (None: none) and its two
        timestamps, aware UTC or None."""
        quality, status_name = Quality.GOOD, None
        if code and code & _SEVERITY:  # not Good: Uncertain (01) or Bad (10, 11)
            quality = Quality.BAD if code & _BAD else Quality.UNCERTAIN
            status_name = get_name_and_doc(code)[0]  # `ua.StatusCode.name`
        timestamp = self._choose(source, server)
        if timestamp is None or received is None:
            received = datetime.now(UTC)
        return Reading(
            source=self.name,
            signal=signal,
            value=value if type(value) in _PLAIN_TYPES else _plain(value),
            timestamp=timestamp or received,
            quality=quality,
            status=status_name,
            backfilled=backfilled,
            source_timestamp=source,
            server_timestamp=server,
            received_at=received,
        )

    def _event_reading(self, signal: str, notification: OpcEvent) -> Reading:
        fields = vars(notification.event)
        received = datetime.now(UTC)
        source = _utc(_field(fields, "Time"))
        server = _utc(_field(fields, "ReceiveTime"))
        attributes: list[tuple[str, Value]] = []
        for key, name in (
            ("severity", "Severity"),
            ("source_name", "SourceName"),
            ("condition", "ConditionName"),
            ("active", "ActiveState/Id"),
            ("acknowledged", "AckedState/Id"),
            ("event_type", "EventType"),
            ("event_id", "EventId"),
        ):
            value = _field(fields, name)
            if value is not None:
                attributes.append((key, _plain(value)))
        message = _field(fields, "Message")
        return Reading(
            source=self.name,
            signal=signal,
            value=_plain(message) if message is not None else "",
            timestamp=self._choose(source, server) or received,
            attributes=tuple(attributes),
            source_timestamp=source,
            server_timestamp=server,
            received_at=received,
        )

    def _choose(self, source: datetime | None, server: datetime | None) -> datetime | None:
        """The reading's time as configured; None: its receive time."""
        choice = self.settings.timestamp
        if choice is TimestampChoice.SOURCE:
            return source or server
        if choice is TimestampChoice.SERVER:
            return server
        return None


async def _read(client: Client, node_ids: Sequence[ua.NodeId]) -> list[ua.DataValue]:
    """One Read request for all `node_ids`, with source and server timestamps."""
    parameters = ua.ReadParameters()
    parameters.TimestampsToReturn = ua.TimestampsToReturn.Both
    parameters.NodesToRead = [
        ua.ReadValueId(NodeId=node_id, AttributeId=AttributeIds.Value) for node_id in node_ids
    ]
    values: list[ua.DataValue] = await client.uaclient.read(parameters)
    return values


def _field(fields: dict[str, Any], name: str) -> Any:
    variant = fields.get(name)
    return variant.Value if isinstance(variant, ua.Variant) else variant


def _variant(value: ua.DataValue) -> Any:
    return value.Value.Value if value.Value is not None else None


def _utc(moment: Any) -> datetime | None:
    if type(moment) is datetime:  # what asyncua decodes: naive UTC
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    if not isinstance(moment, datetime):
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


# Values `_plain` returns as they are (`bool` and `int` kept apart: a type check, not isinstance).
_PLAIN_TYPES = frozenset({type(None), bool, int, float, str})


def _plain(value: Any) -> Value:
    """OPC UA scalars as plain Python values; anything else as its text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, ua.LocalizedText):
        return value.Text
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, ua.NodeId):
        return value.to_string()
    return str(value)


def _first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
