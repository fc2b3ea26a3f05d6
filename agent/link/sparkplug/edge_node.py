"""The agent as one Sparkplug B 3.0 edge node: its state (bdSeq, seq, aliases, the devices'
births, the Primary Host's STATE) and the hooks the session and the forwarder call.

Invariants:
- bdSeq: each MQTT CONNECT gets the next one (0 to 255, wrapping), taken by `will()` when the
  session builds that connection's client: the NDEATH registered as its will carries it, and
  so does every NBIRTH published on it. An attempt that got no CONNACK (the broker never held
  its will) leaves its bdSeq to the next attempt. The last one used is kept in the state dir
  (`BDSEQ_FILE`, written and fsynced before the CONNECT), so a restart goes on from it.
- seq: NBIRTH is 0; every DBIRTH and DDATA after it takes the next (mod 256), given when it is
  published (`publish`), never when encoded. NDEATH has none.
- Births: on every connection, once the Primary Host (if one is configured) is online, and on
  an NCMD `Node Control/Rebirth`, the node publishes NBIRTH then a DBIRTH for every device it
  knows, before anything else (`ready`). A device seen for the first time, or whose metrics
  changed (a new metric, datatype or unit), gets its DBIRTH right before its next DDATA.
- Aliases: one per (device, metric), unique in the node, kept for the process's life (births
  name them again after every NBIRTH).
- Holding: while a rebirth is due, or the Primary Host's last STATE on this connection is not
  `online` (none yet counts as offline), `holding` is true: the forwarder publishes nothing
  and acks nothing more (the events stay pending in the buffer), then calls `ready` again.
- Historical: a metric is `is_historical` when its event was sent from the forwarder's backlog
  lane or was accepted before the current NBIRTH (it waited in the buffer).
- QoS: births and NDEATH as the spec says (QoS 0, the NDEATH will QoS 1); DDATA at QoS 1,
  against the spec's QoS 0, because a PUBACK is what lets the forwarder ack the events in the
  buffer (docs/sparkplug.md, "Deviations").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from agent.link.mqtt_session import MqttSession, NotConnected, PubAck, SubscribeRefused, WillMessage
from agent.link.sparkplug.metrics import AGENT_DEVICE, STRING, Scalar, device_id, event_metrics
from agent.link.sparkplug.payloads import (
    FIRST_DEVICE_ALIAS,
    DeviceMetric,
    device_payload,
    node_birth,
    node_death,
    rebirth_requested,
    with_seq,
)
from buffer.base import StoredRecord
from events.formats import WireMessage
from events.wire import COMPACT_BODY, AgentIdentity, IdentityHistory, expand_envelopes

__all__ = ["BDSEQ_FILE", "NAMESPACE", "BdSeqFile", "SparkplugEdgeNode"]

_log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
BDSEQ_FILE = "sparkplug-bdseq"
# Not a Sparkplug media type (there is none): what `WireMessage` needs; never sent.
_CONTENT_TYPE = "application/vnd.sparkplug-b+protobuf"
_HOLD_CHECK_S = 0.5
_NO_STATE_S = 2.0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class BdSeqFile:
    """The last bdSeq used, in the state dir (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def last(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        try:
            value = int(text)
        except ValueError:
            _log.warning("%s holds %r, not a bdSeq; starting again at 0", self.path, text[:20])
            return None
        return value if 0 <= value <= 255 else None

    def next(self) -> int:
        """The next bdSeq, recorded before it is returned."""
        last = self.last()
        value = 0 if last is None else (last + 1) % 256
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as file:
            file.write(f"{value}\n")
            file.flush()
            os.fsync(file.fileno())
        tmp.replace(self.path)
        return value


@dataclass(slots=True)
class _Metric:
    alias: int
    datatype: int
    unit: str | None
    value: Scalar = None
    timestamp_ms: int = 0
    historical: bool = False


@dataclass(slots=True)
class _Device:
    metrics: dict[str, _Metric] = field(default_factory=dict)
    version: int = 0  # bumped when the metric set changes
    born_version: int = -1  # the version its last DBIRTH (after the current NBIRTH) declared


@dataclass(slots=True)
class SparkplugCounters:
    node_births_total: int = 0
    device_births_total: int = 0
    rebirth_requests_total: int = 0
    host_offline_total: int = 0


class SparkplugEdgeNode:
    """One edge node on `session`; see the module docstring. `wake`: tells the forwarder to
    look at `holding` again (a STATE or NCMD arrived)."""

    def __init__(
        self,
        session: MqttSession,
        *,
        group_id: str,
        edge_node_id: str,
        primary_host_id: str | None,
        state_dir: Path,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self._session = session
        self.group_id = group_id
        self.edge_node_id = edge_node_id
        self.primary_host_id = primary_host_id
        self._wake = wake
        self._bdseq_file = BdSeqFile(state_dir / BDSEQ_FILE)
        self.bdseq: int | None = None  # of the latest CONNECT's will
        self._will_epoch = -1  # the session's connection epoch when that will was made
        self._seq = 0
        self._next_alias = FIRST_DEVICE_ALIAS
        self._devices: dict[str, _Device] = {}
        self._born_epoch: int | None = None
        self._born_at = 0.0
        self._rebirth_requested = False
        self._host_online = False
        self._host_epoch = -1
        self._host_timestamp = -1
        self._host_offline_since: float | None = None
        self._changed = asyncio.Event()
        self.counters = SparkplugCounters()
        self.ncmd_topic = self.node_topic("NCMD")
        self.state_topic = f"{NAMESPACE}/STATE/{primary_host_id}" if primary_host_id else None

    def node_topic(self, message_type: str) -> str:
        return f"{NAMESPACE}/{self.group_id}/{message_type}/{self.edge_node_id}"

    def device_topic(self, message_type: str, device: str) -> str:
        return f"{self.node_topic(message_type)}/{device}"

    # -- the session's side --------------------------------------------------------------

    def will(self) -> WillMessage:
        """The NDEATH will of the next CONNECT (the session's provider): the next bdSeq, or
        the same again when the last attempt got no CONNACK (its will was never in force)."""
        epoch = self._session.connection_epoch
        if self.bdseq is None or epoch != self._will_epoch:
            self.bdseq = self._bdseq_file.next()
        self._will_epoch = epoch
        return WillMessage(
            topic=self.node_topic("NDEATH"),
            payload=node_death(self.bdseq, _now_ms()),
            retain=False,
            qos=1,
        )

    def final_messages(self) -> list[tuple[str, bytes, bool, str | None]]:
        """The NDEATH to publish before a clean DISCONNECT (which makes the broker drop the
        will): an edge node that stops on purpose says so itself."""
        if self.bdseq is None:
            return []
        return [(self.node_topic("NDEATH"), node_death(self.bdseq, _now_ms()), False, None)]

    async def subscribe(self) -> None:
        """NCMD, and the Primary Host's STATE (made again on every reconnect by the session)."""
        for topic_filter in (self.ncmd_topic, self.state_topic):
            if topic_filter is None:
                continue
            try:
                await self._session.subscribe(topic_filter, qos=1)
            except SubscribeRefused as error:
                _log.error("sparkplug: %s (check the broker's ACL)", error)

    def offer(self, topic: str, payload: bytes) -> bool:
        """A message the session received: True if it was this node's (NCMD, STATE)."""
        if topic == self.ncmd_topic:
            if rebirth_requested(payload):
                _log.info("sparkplug: rebirth requested (NCMD Node Control/Rebirth)")
                self.counters.rebirth_requests_total += 1
                self._rebirth_requested = True
                self._changed.set()
                self._wake()
            return True
        if topic == self.state_topic:
            self._on_state(payload)
            return True
        return False

    def _on_state(self, payload: bytes) -> None:
        try:
            state: Any = json.loads(payload)
            online, timestamp = state["online"], state["timestamp"]
            if not isinstance(online, bool) or not isinstance(timestamp, int):
                raise TypeError("online must be a boolean and timestamp an integer")
        except (ValueError, KeyError, TypeError) as error:
            _log.warning(
                "sparkplug: ignored a STATE message on %s that is not the 3.0 JSON "
                '{"online": bool, "timestamp": ms}: %s',
                self.state_topic,
                error,
            )
            return
        epoch = self._session.connection_epoch
        if timestamp < self._host_timestamp and epoch == self._host_epoch:
            return  # older than one already seen (a stale retained message)
        was_online = self._host_online and self._host_epoch == epoch
        self._host_timestamp, self._host_online, self._host_epoch = timestamp, online, epoch
        if online and not was_online:
            since = self._host_offline_since
            if since is not None:
                _log.info(
                    "sparkplug: primary host %s online again after %.0f s; birth, then sending",
                    self.primary_host_id,
                    time.monotonic() - since,
                )
            self._host_offline_since = None
        elif not online and self._host_offline_since is None:
            self._note_host_offline()
        self._changed.set()
        self._wake()

    def _note_host_offline(self) -> None:
        self._host_offline_since = time.monotonic()
        self.counters.host_offline_total += 1
        _log.warning(
            "sparkplug: primary host %s is offline; holding the output (events stay in the "
            "buffer) until it is online",
            self.primary_host_id,
        )

    # -- the forwarder's side (`agent.link.forwarder.OutputHook`) -------------------------

    def _host_ok(self, epoch: int) -> bool:
        return self.state_topic is None or (self._host_online and self._host_epoch == epoch)

    @property
    def holding(self) -> bool:
        epoch = self._session.connection_epoch
        return self._rebirth_requested or self._born_epoch != epoch or not self._host_ok(epoch)

    async def ready(self, epoch: int) -> bool:
        """Wait until the node may publish on connection `epoch` (the Primary Host online),
        then birth (NBIRTH, a DBIRTH per known device). False: that connection is gone."""
        started = time.monotonic()
        while self._session.connected and self._session.connection_epoch == epoch:
            if self._host_ok(epoch):
                try:
                    self._birth(epoch)
                except NotConnected:
                    return False
                return True
            if self._host_offline_since is None and (
                self._host_epoch == epoch or time.monotonic() - started > _NO_STATE_S
            ):
                # An offline STATE, or none at all: the retained one comes right after the
                # subscription on connect, so its absence is said only after a while.
                self._note_host_offline()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), _HOLD_CHECK_S)
        return False

    def _birth(self, epoch: int) -> None:
        assert self.bdseq is not None, "the session connected without asking for its will"
        self._rebirth_requested = False
        self._seq = 0
        self._session.publish(self.node_topic("NBIRTH"), node_birth(self.bdseq, _now_ms()), qos=0)
        self.counters.node_births_total += 1
        self._born_epoch, self._born_at = epoch, time.time()
        for device, state in self._devices.items():
            state.born_version = -1
            if state.metrics:
                self._device_birth(device, state)

    def _device_birth(self, device: str, state: _Device) -> None:
        metrics = [
            DeviceMetric(name, m.alias, m.datatype, m.value, m.timestamp_ms, m.unit, m.historical)
            for name, m in state.metrics.items()
        ]
        payload = with_seq(device_payload(metrics, _now_ms(), birth=True), self._take_seq())
        self._session.publish(self.device_topic("DBIRTH", device), payload, qos=0)
        state.born_version = state.version
        self.counters.device_births_total += 1

    def _take_seq(self) -> int:
        self._seq = (self._seq + 1) % 256
        return self._seq

    def topic(self, record: StoredRecord) -> str:
        """The DDATA topic of the device `record` belongs to."""
        body = record.body
        try:
            fields = msgpack.unpackb(body[1:] if body[:1] == bytes((COMPACT_BODY,)) else body)
        except (ValueError, msgpack.UnpackException):
            fields = None
        device = device_id(fields) if isinstance(fields, dict) else AGENT_DEVICE
        return self.device_topic("DDATA", device)

    def encode(
        self,
        topic: str,
        records: Sequence[StoredRecord],
        identity: AgentIdentity | IdentityHistory | None,
        *,
        backlog: bool,
    ) -> WireMessage:
        """One DDATA (without seq) of `records`, all of the device of `topic`. ValueError: an
        event that cannot be metrics."""
        device = topic.rsplit("/", 1)[-1]
        state = self._devices.setdefault(device, _Device())
        entries = []
        for record, part in zip(records, expand_envelopes(records, identity), strict=True):
            envelope = msgpack.unpackb(part, raw=False)
            if not isinstance(envelope, dict):  # pragma: no cover - envelopes are maps
                raise ValueError("an event envelope must be a map")
            historical = backlog or record.accepted_at < self._born_at
            for value in event_metrics(envelope):
                metric = self._learn(state, value.name, value.datatype, value.unit)
                metric.value, metric.timestamp_ms = value.value, value.timestamp_ms
                metric.historical = historical
                entries.append(
                    DeviceMetric(
                        value.name,
                        metric.alias,
                        metric.datatype,
                        value.value,
                        value.timestamp_ms,
                        historical=historical,
                    )
                )
        return WireMessage(device_payload(entries, _now_ms(), birth=False), _CONTENT_TYPE)

    def _learn(self, state: _Device, name: str, datatype: int | None, unit: str | None) -> _Metric:
        metric = state.metrics.get(name)
        if metric is None:
            metric = _Metric(self._next_alias, datatype or STRING, unit)
            self._next_alias += 1
            state.metrics[name] = metric
            state.version += 1
        elif (datatype is not None and datatype != metric.datatype) or (
            unit is not None and unit != metric.unit
        ):
            metric.datatype = datatype or metric.datatype
            metric.unit = unit or metric.unit
            state.version += 1  # born again before its next DDATA
        return metric

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
    ) -> asyncio.Future[PubAck]:
        """Publish a DDATA from `encode`: its device's DBIRTH first if due, then the DDATA
        with the next seq (no MQTT properties: Sparkplug has none)."""
        state = self._devices.get(topic.rsplit("/", 1)[-1])
        if state is not None and state.born_version != state.version:
            self._device_birth(topic.rsplit("/", 1)[-1], state)
        return self._session.publish(topic, with_seq(payload, self._take_seq()), qos=qos)
