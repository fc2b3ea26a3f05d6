"""The agent's retained status at `{prefix}/{site}/{agent}/status` (JSON, human-readable).

`online` with a small summary on every connect and every `status_interval_s`; the same topic
is the MQTT will (`offline`, reason "connection lost"), and a clean stop publishes `offline`
with reason "stopped" before disconnecting.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent import __version__

if TYPE_CHECKING:
    from agent.runtime import Agent

CONTENT_TYPE = "application/json"


def offline_payload(site: str, agent: str, reason: str) -> bytes:
    return _encode(
        {"state": "offline", "site": site, "agent": agent, "reason": reason, "at": _now()}
    )


async def online_payload(agent: Agent) -> bytes:
    return _encode(await snapshot(agent))


async def snapshot(agent: Agent) -> dict[str, Any]:
    """The status document, from the state the agent already keeps."""
    stats = await agent.buffer.stats()
    now = time.time()
    oldest = stats.oldest_pending_at
    return {
        "state": "online",
        "site": agent.config.agent.site,
        "agent": agent.config.agent.id,
        "version": __version__,
        "at": _now(),
        "started_at": datetime.fromtimestamp(agent.started_at, UTC).isoformat(),
        "uptime_s": round(now - agent.started_at, 1),
        "sources": {
            runner.connector.name: {
                "state": runner.state,
                "connected": runner.connector.health.connected,
                "readings_total": runner.connector.health.readings_total,
                "last_value_at": _iso(runner.connector.health.last_value_at),
                "last_error": runner.connector.health.last_error,
                "signal_errors": dict(runner.connector.health.signal_errors),
            }
            for runner in agent.sources
        },
        "buffer": {
            "pending": stats.pending,
            "pending_by_priority": _by_priority(stats.pending_by_priority),
            "oldest_pending_age_s": round(now - oldest, 3) if oldest is not None else None,
            "last_seq": stats.last_seq,
            "dead_letters": stats.dead_letters,
            "file_bytes": stats.file_bytes,
        },
        "pipeline": {
            "readings_total": agent.pipeline.counters.readings_total,
            "events_accepted_total": agent.pipeline.counters.events_accepted_total,
            "events_duplicate_total": agent.pipeline.counters.events_duplicate_total,
            "readings_unmappable_total": agent.pipeline.counters.readings_unmappable_total,
        },
        "forwarder": {
            "connected": agent.session.connected,
            "events_forwarded_total": agent.forwarder.counters.events_forwarded_total,
            "events_dead_lettered_total": agent.forwarder.counters.events_dead_lettered_total,
            "last_puback_at": _iso_ts(agent.forwarder.counters.last_puback_at),
        },
    }


def _by_priority(counts: Mapping[int, int]) -> dict[str, int]:
    names = {0: "telemetry", 1: "business", 2: "critical"}
    return {names.get(priority, str(priority)): count for priority, count in counts.items()}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _iso_ts(timestamp: float | None) -> str | None:
    return datetime.fromtimestamp(timestamp, UTC).isoformat() if timestamp is not None else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()
