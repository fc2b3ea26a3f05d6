"""`GET /metrics`: the agent's counters as Prometheus metric families, read at each scrape.

`AgentCollector` reads what the agent already keeps (the sources' health and runners, the
pipeline's and forwarder's counters, the session, the command server's counters) when
Prometheus scrapes; only the buffer's figures need a query (`Buffer.stats()`, one per scrape,
made by `refresh()` before the synchronous `collect()`). Nothing is copied or cached between
scrapes, so the endpoint can never drift from what `edge-agent remote status` says.

Names follow the Prometheus conventions: the `edge_agent_` prefix, base units (seconds, bytes),
`_total` on counters (prometheus_client adds it to a counter family's name), gauges for what
goes up and down. Labels are bounded: `source` (the configured sources), `class` (3), `reason`
(the buffer's eviction reasons, the command server's refusal reasons: fixed sets in code),
`command` (the commands the agent knows), `state` (5); never an event, a seq, a signal or a
time. The counters start at 0 with each generation of the agent (a reload builds a new one),
which Prometheus reads as a counter reset; the buffer's `evictions` are counted over the life
of the buffer file. The process's CPU, memory and descriptors are prometheus_client's own
`ProcessCollector`; the PUBACK latency is a prometheus_client `Histogram` the forwarder feeds
(`Forwarder.on_puback`).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from agent import __version__

if TYPE_CHECKING:
    from agent.view import AgentView
    from buffer.base import BufferStats

__all__ = ["PUBACK_BUCKETS", "SOURCE_STATES", "AgentCollector", "agent_registry"]

PRIORITY_CLASS = {0: "telemetry", 1: "business", 2: "critical"}
SOURCE_STATES = ("starting", "running", "retrying", "paused", "failed")
# PUBACK round trips on a plant link: a LAN broker answers in about a millisecond, a WAN or
# cellular hub in tens to hundreds; a stalled one hits the session's PUBACK deadline.
PUBACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def agent_registry(agent: AgentView) -> tuple[CollectorRegistry, AgentCollector]:
    """A registry with the agent's collector, the process collector and the PUBACK latency
    histogram, which it hooks to the agent's forwarder."""
    registry = CollectorRegistry(auto_describe=False)
    collector = AgentCollector(agent)
    registry.register(collector)
    ProcessCollector(registry=registry)
    latency = Histogram(
        "edge_agent_forwarder_puback_latency_seconds",
        "From publishing a message to its PUBACK (any reason code).",
        buckets=PUBACK_BUCKETS, registry=registry,
    )
    agent.forwarder.on_puback = latency.observe
    return registry, collector


class AgentCollector(Collector):
    """See the module docstring. Call `await refresh()` before each `collect()`."""

    def __init__(self, agent: AgentView) -> None:
        self._agent = agent
        self._stats: BufferStats | None = None
        self._stats_at = 0.0

    async def refresh(self) -> None:
        self._stats = await self._agent.buffer.stats()
        self._stats_at = time.time()

    def collect(self) -> Iterable[Metric]:
        yield from self._agent_info()
        yield from self._sources()
        yield from self._buffer()
        yield from self._pipeline()
        yield from self._forwarder()
        yield from self._commands()

    def _agent_info(self) -> Iterable[Metric]:
        agent = self._agent
        info = GaugeMetricFamily("edge_agent_info", "The agent's identity and version (1).",
                                 labels=["site", "agent", "version", "format"])
        info.add_metric([agent.config.agent.site, agent.config.agent.id, __version__,
                         agent.forwarder.wire_format.name], 1.0)
        yield info
        yield GaugeMetricFamily("edge_agent_start_time_seconds",
                                "When this generation of the agent started (Unix time).",
                                value=agent.started_at)

    def _sources(self) -> Iterable[Metric]:
        labels = ["source"]
        readings = CounterMetricFamily("edge_agent_source_readings",
                                       "Readings the source handed over.", labels=labels)
        errors = CounterMetricFamily(
            "edge_agent_source_errors",
            "Times the source's connector failed (its session was lost or it raised).",
            labels=labels)
        reconnects = CounterMetricFamily(
            "edge_agent_source_reconnects",
            "Times the connector was started again after it stopped.", labels=labels)
        connected = GaugeMetricFamily("edge_agent_source_connected",
                                      "1: the source's session to its peer is up.", labels=labels)
        state = GaugeMetricFamily("edge_agent_source_state",
                                  "1 for the source's current state.", labels=["source", "state"])
        signal_errors = GaugeMetricFamily(
            "edge_agent_source_signal_errors",
            "Signals of the source that cannot be read now.", labels=labels)
        last_value = GaugeMetricFamily(
            "edge_agent_source_last_value_timestamp_seconds",
            "Time of the source's newest reading (Unix time).", labels=labels)
        for runner in self._agent.sources:
            name = [runner.connector.name]
            health = runner.connector.health
            readings.add_metric(name, health.readings_total)
            errors.add_metric(name, runner.failures_total)
            reconnects.add_metric(name, max(runner.starts_total - 1, 0))
            connected.add_metric(name, 1.0 if health.connected else 0.0)
            for each in SOURCE_STATES:
                state.add_metric([*name, each], 1.0 if runner.state == each else 0.0)
            signal_errors.add_metric(name, len(health.signal_errors))
            if health.last_value_at is not None:
                last_value.add_metric(name, health.last_value_at.timestamp())
        yield from (readings, errors, reconnects, connected, state, signal_errors, last_value)

    def _buffer(self) -> Iterable[Metric]:
        stats = self._stats
        if stats is None:
            return
        pending = GaugeMetricFamily("edge_agent_buffer_pending_events",
                                    "Events in the buffer not yet acknowledged by the broker.",
                                    labels=["class"])
        oldest = GaugeMetricFamily(
            "edge_agent_buffer_oldest_pending_age_seconds",
            "Age of the class's oldest pending event (absent: none pending).", labels=["class"])
        evictions = CounterMetricFamily(
            "edge_agent_buffer_evictions",
            "Events given up for room, over the life of the buffer file.",
            labels=["class", "reason"])
        for priority, name in PRIORITY_CLASS.items():
            pending.add_metric([name], stats.pending_by_priority.get(priority, 0))
            accepted_at = stats.oldest_pending_by_priority.get(priority)
            if accepted_at is not None:
                oldest.add_metric([name], max(self._stats_at - accepted_at, 0.0))
        by_reason: collections.Counter[tuple[str, str]] = collections.Counter()
        for (priority, _kind, reason), count in stats.evictions.items():
            by_reason[(PRIORITY_CLASS.get(priority, str(priority)), reason)] += count
        for (name, reason), count in sorted(by_reason.items()):
            evictions.add_metric([name, reason], count)
        yield from (pending, oldest, evictions)
        yield GaugeMetricFamily("edge_agent_buffer_dead_letters",
                                "Events and readings in the buffer's dead-letter table.",
                                value=stats.dead_letters)
        yield GaugeMetricFamily("edge_agent_buffer_file_bytes", "Size of the buffer's files.",
                                value=stats.file_bytes)
        yield GaugeMetricFamily("edge_agent_buffer_last_seq", "The last seq accepted.",
                                value=stats.last_seq)

    def _pipeline(self) -> Iterable[Metric]:
        counters = self._agent.pipeline.counters
        for name, doc, value in (
            ("edge_agent_readings", "Readings taken by the pipeline.", counters.readings_total),
            ("edge_agent_events_accepted", "Events committed to the buffer.",
             counters.events_accepted_total),
            ("edge_agent_events_duplicate", "Events the buffer already held (same id).",
             counters.events_duplicate_total),
            ("edge_agent_readings_unmappable", "Readings no mapping could make an event of.",
             counters.readings_unmappable_total),
            ("edge_agent_records_rejected", "MES records rejected (record.rejected events).",
             counters.records_rejected_total),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily(
            "edge_agent_backpressure",
            "1: the buffer holds readings back and the sources are paused.",
            value=1.0 if counters.backpressure else 0.0)

    def _forwarder(self) -> Iterable[Metric]:
        agent = self._agent
        forwarder, session = agent.forwarder, agent.session
        counters = forwarder.counters
        yield GaugeMetricFamily("edge_agent_hub_connected", "1: the MQTT session is up.",
                                value=1.0 if session.connected else 0.0)
        yield CounterMetricFamily("edge_agent_hub_connections",
                                  "MQTT connections made (CONNACKs).",
                                  value=session.connection_epoch)
        yield CounterMetricFamily("edge_agent_hub_reconnects",
                                  "MQTT connections made after the first.",
                                  value=max(session.connection_epoch - 1, 0))
        for name, doc, value in (
            ("edge_agent_forwarder_messages_published", "MQTT messages published (QoS 1).",
             counters.messages_published_total),
            ("edge_agent_forwarder_events_acked",
             "Events acknowledged by the broker (PUBACK success) and marked delivered.",
             counters.events_forwarded_total),
            ("edge_agent_forwarder_backlog_events_acked",
             "Of those, events sent from the backlog lane.",
             counters.backlog_events_forwarded_total),
            ("edge_agent_forwarder_messages_rejected",
             "Messages the broker refused (PUBACK reason code >= 0x80).",
             counters.messages_rejected_total),
            ("edge_agent_forwarder_events_dead_lettered",
             "Events moved to dead letters (refused for good, or too large).",
             counters.events_dead_lettered_total),
            ("edge_agent_forwarder_puback_timeouts",
             "Connections dropped because PUBACKs stopped coming.",
             session.puback_timeouts_total),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        yield GaugeMetricFamily("edge_agent_forwarder_inflight_messages",
                                "Messages published and not yet acknowledged.",
                                value=forwarder.inflight)
        yield GaugeMetricFamily("edge_agent_forwarder_paused_lanes",
                                "Event topics paused because the broker refuses them.",
                                value=len(forwarder.paused_topics))
        if counters.last_puback_at is not None:
            yield GaugeMetricFamily("edge_agent_forwarder_last_puback_timestamp_seconds",
                                    "When the last PUBACK arrived (Unix time).",
                                    value=counters.last_puback_at)

    def _commands(self) -> Iterable[Metric]:
        counts = self._agent.commands.counters.as_dict()
        accepted = CounterMetricFamily("edge_agent_commands_accepted",
                                       "Remote commands handled, per command.",
                                       labels=["command"])
        for command, count in sorted(counts.get("handled_total", {}).items()):
            accepted.add_metric([command], count)
        refused = CounterMetricFamily("edge_agent_commands_refused",
                                      "Remote commands refused, per reason.", labels=["reason"])
        for reason, count in sorted(counts.get("refused_total", {}).items()):
            refused.add_metric([reason], count)
        yield from (accepted, refused)
