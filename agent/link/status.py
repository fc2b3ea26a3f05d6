"""The agent's retained status at `{prefix}/{site}/{agent}/status` (JSON, human-readable).

What it says
------------
`online` with: version, uptime, config fingerprint, the status interval (so a reader can tell a
stale status), per source its state (running, retrying, paused, failed), connected, when it
last received a value (`last_value_at`, also as `last_received_at`: what staleness monitoring
watches) and, for MES record sources, the latest record's business time apart from it
(`last_business_time`: a back-dated record is not a stale source), readings and errors (the
source's `last_error` only while it is not running and connected: a resolved problem is not
shown), and per signal its last value, quality (the StatusCode name), source timestamp,
change count and current and last error (`signals`, at most `SIGNALS_PER_SOURCE` per source,
the rest counted in `signals_not_listed`; `agent.flow.signal_values`); per
buffer class (telemetry, business, critical) pending events, evictions and its oldest pending
age (and the oldest over all classes); the forwarder:
connected, the hub format it publishes in (`format`, `[hub] format`), last PUBACK, events per
second over the last minute, the topics the broker refuses (`paused_lanes`: topic, reason code,
since) and the connections dropped by the PUBACK deadline; the command server's counters; the
event types it publishes (`event_types`: per kind the versions, newest first, and each
dual-publish window of a retired version). The same topic is the MQTT will (`offline`,
reason "connection lost"); a clean stop publishes `offline` with reason "stopped".

It always fits the broker
-------------------------
A retained message over the broker's Maximum Packet Size (CONNACK) is never published, and the
hub would never see the agent online. So the publisher sends the largest of these forms that
fits (`form` says which; `details` names the command topic whose `status` answers in full):

- `full`: everything above (no `form` key).
- `compact`: what `edge-agent fleet` reads, and little more: state, site, agent, `at`,
  interval, version, config fingerprint; per source its state and connected; pending and oldest
  pending age, in all and per buffer class; the forwarder's connected, format, last PUBACK and
  paused lanes; backpressure.
- `summary`: `compact` listing only the sources that are not running and connected (the ones
  fleet flags), the totals in `sources_summary`.
- `minimal`: state, site, agent, times, interval, `sources_summary`, forwarder connected: a
  couple of hundred bytes, under any packet size limit a broker sets in practice.

Every reduced form carries `sources_summary` (total, up, paused). A change of form is logged
once (sizes and limit), not on every publish.

When it is published (never more than needed)
---------------------------------------------
`StatusPublisher` publishes on every connect, every `status_interval_s`, and when the state
changes: a source connects, drops, pauses or resumes, the hub link comes or goes, a command
asks for it (`changed()`). It looks for changes once a second on in-memory state only (no SQLite
query); a change publishes at most once per `min_gap_s`. Counters alone (readings, backlog)
are not a change: they go out at the interval.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.link.mqtt_session import PacketTooLarge

if TYPE_CHECKING:
    from agent.view import AgentView
    from config.schema import AgentConfig

CONTENT_TYPE = "application/json"
FULL_FORM = "full"
REDUCED_FORMS = ("compact", "summary", "minimal")
PRIORITY_NAMES = {0: "telemetry", 1: "business", 2: "critical"}
_RATE_WINDOW_S = 60.0
# Signals listed per source in the status document (it goes over MQTT); the rest are counted
# in `signals_not_listed` and `edge-agent status` on the machine lists them all.
SIGNALS_PER_SOURCE = 32

_log = logging.getLogger(__name__)


def offline_payload(site: str, agent: str, reason: str) -> bytes:
    return _encode(
        {"state": "offline", "site": site, "agent": agent, "reason": reason, "at": _now()}
    )


def config_fingerprint(config: AgentConfig) -> str:
    """A short hash of the config's meaning (not its comments or layout)."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:16]


class ForwardRate:
    """Events forwarded per second over the last minute, from samples of the counter."""

    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)

    def sample(self, total: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._samples.append((now, total))
        while self._samples and now - self._samples[0][0] > _RATE_WINDOW_S:
            self._samples.popleft()

    def per_second(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return round((n1 - n0) / (t1 - t0), 2) if t1 > t0 else 0.0


async def snapshot(agent: AgentView) -> dict[str, Any]:
    """The full status document, from the state the agent already keeps."""
    return {
        "state": "online",
        "site": agent.config.agent.site,
        "agent": agent.config.agent.id,
        "version": __version__,
        "at": _now(),
        "started_at": datetime.fromtimestamp(agent.started_at, UTC).isoformat(),
        "uptime_s": round(time.time() - agent.started_at, 1),
        "config_fingerprint": agent.config_fingerprint,
        "interval_s": agent.config.hub.status_interval_s,
        "sources": sources_status(agent),
        "buffer": await buffer_status(agent),
        "pipeline": {
            "readings_total": agent.pipeline.counters.readings_total,
            "events_accepted_total": agent.pipeline.counters.events_accepted_total,
            "events_duplicate_total": agent.pipeline.counters.events_duplicate_total,
            "readings_unmappable_total": agent.pipeline.counters.readings_unmappable_total,
            # Of those, stored in the buffer's dead-letter table (the rest: being retried).
            "readings_set_aside_total": agent.pipeline.counters.readings_set_aside_total,
            # MES records the agent could not take (record.rejected events), and keyed
            # records that corrected an earlier one or repeated it (dropped).
            "records_rejected_total": agent.pipeline.counters.records_rejected_total,
            "records_corrected_total": agent.pipeline.corrections.corrections_total,
            "records_repeated_total": agent.pipeline.corrections.repeats_total,
            # Buffer full of events that are never evicted: sources paused (README).
            "backpressure": agent.pipeline.counters.backpressure,
            "backpressure_since": _iso_ts(agent.pipeline.counters.backpressure_since),
        },
        "mapping": {  # master-data codes no lookup knew, per lookup table
            "codes_unmapped_total": dict(agent.mapper.counters.codes_unmapped_total),
            "codes_dead_lettered_total": dict(agent.mapper.counters.codes_dead_lettered_total),
            # Webhook trace headers ignored as invalid, per source and route.
            "trace_headers_invalid_total": dict(
                agent.mapper.counters.trace_headers_invalid_total
            ),
            # MES records, per source: codes no lookup knew, units neither UCUM nor UN/ECE
            # Rec 20, units read as Rec 20 and sent as UCUM.
            "record_codes_unmapped_total": dict(
                agent.mapper.counters.record_codes_unmapped_total
            ),
            "record_units_unknown_total": dict(agent.mapper.counters.record_units_unknown_total),
            "record_units_normalised_total": dict(
                agent.mapper.counters.record_units_normalised_total
            ),
        },
        # The versions published per kind, and each retired one published beside its
        # successor for a window (`[contracts] dual_publish_until`).
        "event_types": agent.pipeline.dual_publish.status(),
        "forwarder": {
            "connected": agent.session.connected,
            "format": agent.forwarder.wire_format.name,
            "events_forwarded_total": agent.forwarder.counters.events_forwarded_total,
            "events_dead_lettered_total": agent.forwarder.counters.events_dead_lettered_total,
            "last_puback_at": _iso_ts(agent.forwarder.counters.last_puback_at),
            "events_per_s": agent.status.rate.per_second(),
            "paused_lanes": agent.forwarder.paused_lanes(),
            "puback_timeouts_total": agent.session.puback_timeouts_total,
        },
        "commands": agent.commands.counters.as_dict(),
    }


def sources_status(
    agent: AgentView, *, signals_per_source: int = SIGNALS_PER_SOURCE
) -> dict[str, dict[str, Any]]:
    configured = {source.name: source for source in agent.config.sources}
    document: dict[str, dict[str, Any]] = {}
    for runner in agent.sources:
        health = runner.connector.health
        name = runner.connector.name
        source = configured.get(name)
        names = {signal.node: signal.name for signal in getattr(source, "signals", ())}
        signals, left_out = agent.signals.document(
            name, names=names, errors=health.signal_errors, limit=signals_per_source
        )
        document[name] = {
            "state": runner.state,
            "connected": health.connected,
            "readings_total": health.readings_total,
            # Receive time (what staleness monitoring watches) and, for record sources, the
            # latest record's business time, which may lie far back: never mixed.
            "last_value_at": _iso(health.last_value_at),
            "last_received_at": _iso(health.last_value_at),
            "last_business_time": _iso(health.last_business_time),
            # A problem that is resolved is not reported: once the source runs and is
            # connected again, the error that made it retry is history (the log has it).
            "last_error": None if _running(runner.state, health.connected)
            else health.last_error,
            "signal_errors": dict(health.signal_errors),
            "disconnected_at": _iso(health.disconnected_at),
            "reconnected_at": _iso(health.reconnected_at),
            "notices": dict(health.notices),
            "counters": dict(health.counters),
            # Per signal (agent.flow.signal_values): value, quality, source timestamp,
            # changes, current and last error; at most `signals_per_source` of them.
            "signals": signals,
            "signals_not_listed": left_out,
        }
    return document


def _running(state: str, connected: bool) -> bool:
    return state == "running" and connected


async def buffer_status(agent: AgentView) -> dict[str, Any]:
    stats = await agent.buffer.stats()
    now = time.time()
    oldest = stats.oldest_pending_at
    evictions: dict[int, int] = collections.Counter()
    for (priority, _kind, _reason), count in stats.evictions.items():
        evictions[priority] += count
    classes = {
        name: {
            "pending": stats.pending_by_priority.get(priority, 0),
            "oldest_pending_age_s": _age(now, stats.oldest_pending_by_priority.get(priority)),
            "evictions": evictions.get(priority, 0),
        }
        for priority, name in PRIORITY_NAMES.items()
    }
    return {
        "pending": stats.pending,
        "oldest_pending_age_s": _age(now, oldest),
        "classes": classes,
        "last_seq": stats.last_seq,
        "dead_letters": stats.dead_letters,
        "file_bytes": stats.file_bytes,
    }


def reduced_status(document: dict[str, Any], form: str, *, details: str) -> dict[str, Any]:
    """The `form` ("compact", "summary" or "minimal") of a full status `document`; see the
    module docstring. `details`: the topic that answers `status` in full."""
    if form not in REDUCED_FORMS:
        raise ValueError(f"unknown status form {form!r}: expected one of {REDUCED_FORMS}")
    sources: dict[str, dict[str, Any]] = document.get("sources", {})
    reduced: dict[str, Any] = {
        key: document[key] for key in _IDENTITY_KEYS if key in document
    }
    reduced.update(form=form, details=details, sources_summary=_sources_summary(sources))
    forwarder: dict[str, Any] = document.get("forwarder", {})
    if form == "minimal":
        reduced["forwarder"] = {"connected": forwarder.get("connected", False)}
        return reduced
    listed = {
        name: {"state": source.get("state"), "connected": source.get("connected")}
        for name, source in sources.items()
        if form == "compact" or not _source_healthy(source)
    }
    buffer: dict[str, Any] = document.get("buffer", {})
    classes: dict[str, dict[str, Any]] = buffer.get("classes", {})
    reduced.update(
        version=document.get("version"),
        config_fingerprint=document.get("config_fingerprint"),
        sources=listed,
        buffer={
            "pending": buffer.get("pending"),
            "oldest_pending_age_s": buffer.get("oldest_pending_age_s"),
            "classes": {
                name: {key: entry.get(key) for key in ("pending", "oldest_pending_age_s")}
                for name, entry in classes.items()
            },
        },
        pipeline={"backpressure": document.get("pipeline", {}).get("backpressure")},
        forwarder={
            key: forwarder.get(key)
            for key in ("connected", "format", "last_puback_at", "paused_lanes")
        },
    )
    return reduced


_IDENTITY_KEYS = ("state", "site", "agent", "at", "interval_s")


def _source_healthy(source: dict[str, Any]) -> bool:
    return source.get("state") == "running" and bool(source.get("connected"))


def _sources_summary(sources: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {
        "total": len(sources),
        "up": sum(1 for source in sources.values() if source.get("connected")),
        "paused": sum(1 for source in sources.values() if source.get("state") == "paused"),
    }


class StatusPublisher:
    """Publishes the retained status; see the module docstring for when."""

    def __init__(self, agent: AgentView, *, interval_s: float, min_gap_s: float = 1.0) -> None:
        self._agent = agent
        self._interval_s = interval_s
        self._min_gap_s = min_gap_s
        self._wake = asyncio.Event()
        self._last_signature: tuple[Any, ...] | None = None
        self._last_published = float("-inf")
        self.rate = ForwardRate()
        self.published_total = 0
        self.form = FULL_FORM  # the form of the last status published (module docstring)
        self.not_published_total = 0  # not even the minimal form fitted the broker

    def changed(self) -> None:
        """Something worth telling the hub now happened (e.g. a source was paused)."""
        self._wake.set()

    async def publish(self) -> None:
        """Publish now, the largest form that fits the broker (also the session's on_connected:
        the link is usable)."""
        agent = self._agent
        self._last_signature = self._signature()
        self._last_published = time.monotonic()
        document = await snapshot(agent)
        full = _encode(document)
        payload = full
        form = FULL_FORM
        forms = iter(REDUCED_FORMS)
        while True:
            try:
                future = agent.session.publish(
                    agent.status_topic, payload, qos=1, retain=True, content_type=CONTENT_TYPE
                )
                break
            except PacketTooLarge as error:
                form = next(forms, "")
                if not form:
                    self._not_published(len(full), len(payload), error.max_packet_size)
                    return
                payload = _encode(
                    reduced_status(document, form, details=f"{agent.topic_root}/cmd/status")
                )
        self._note_form(form, len(full), len(payload), agent.session.max_packet_size)
        self.published_total += 1
        with contextlib.suppress(Exception):
            await asyncio.wait_for(future, timeout=5.0)

    def _note_form(self, form: str, full_size: int, size: int, limit: int | None) -> None:
        """Log a change of the form published, once."""
        if form == self.form:
            return
        self.form = form
        if form == FULL_FORM:
            _log.info("status fits the broker's maximum packet size again: full form (%d bytes)",
                      size)
        else:
            _log.warning(
                "status (%d bytes) is over the broker's maximum packet size (%s bytes): "
                "publishing its %s form (%d bytes); ask the agent for the rest (`edge-agent "
                "remote status`, or the smaller `remote sources` and `remote buffer`)",
                full_size, limit, form, size,
            )

    def _not_published(self, full_size: int, size: int, limit: int) -> None:
        self.not_published_total += 1
        if self.form == "":
            return
        self.form = ""
        _log.error(
            "status not published: the broker's maximum packet size (%d bytes) is too small "
            "even for its minimal form (%d bytes; full %d bytes)", limit, size, full_size,
        )

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)
            asked = self._wake.is_set()
            self._wake.clear()
            self.rate.sample(self._agent.forwarder.counters.events_forwarded_total)
            if not self._agent.session.connected:
                continue
            since = time.monotonic() - self._last_published
            changed = asked or self._signature() != self._last_signature
            if since >= self._interval_s or (changed and since >= self._min_gap_s):
                try:
                    await self.publish()
                except Exception:
                    _log.debug("status publish failed", exc_info=True)
            elif changed:
                self._wake.set()  # too soon after the last one: publish at the gap's end
                await asyncio.sleep(self._min_gap_s - since)

    def _signature(self) -> tuple[Any, ...]:
        agent = self._agent
        return (
            agent.session.connected,
            agent.forwarder.paused_topics,
            tuple(
                (runner.state, runner.connector.health.connected,
                 runner.connector.health.last_error)
                for runner in agent.sources
            ),
        )


def _age(now: float, accepted_at: float | None) -> float | None:
    return round(max(now - accepted_at, 0.0), 3) if accepted_at is not None else None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _iso_ts(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, UTC).isoformat() if timestamp is not None else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()
