"""The agents' retained statuses, kept at the hub: the latest per agent, and samples over time.

::

    agent ──retained JSON (agent.link.status: full / compact / summary / minimal form;
            the MQTT will and a clean stop: `offline`)──▶ {prefix}/{site}/{agent}/status
        ──▶ every hub process (an ordinary subscription, NOT the shared one: each process
            sees every status) ──▶ StatusRecorder: one transaction
                agent_status      (site, agent) PRIMARY KEY, received_at, state, document jsonb
                status_samples    (site, agent, bucket) PRIMARY KEY, at, state, connected,
                                  pending and oldest pending age per class, dead letters
        ──▶ PUBACK (after the commit, or after a failure too: a status is re-published every
            `[hub] status_interval_s`, and a retained one comes again on the next subscribe)

Invariants
----------
- `agent_status` holds the last status *received* per agent, in arrival order (never by the
  document's `at`: the will's `at` is the time the agent connected, older than the statuses
  it published after). An empty retained payload (an operator cleared the topic) deletes the
  agent's row. The site and agent are the topic's, not the document's.
- `status_samples` holds one row per agent per `sample_interval_s` bucket of the receive
  time (the latest status of the bucket wins: ON CONFLICT DO UPDATE), so several hub
  processes recording the same status write one sample, not several. Rows older than
  `keep_hours` are deleted (every ten minutes, by every process: idempotent).
- What a crash costs: nothing lasting. The broker keeps the retained statuses; a restarted
  hub subscribes and gets the latest of each agent again; samples missed while no hub ran are
  a hole in the plot, not a wrong point.

`make_status_schema` makes these tables (idempotent, under its own advisory lock,
`_STATUS_SCHEMA_LOCK`, beside `hub.store`'s) and the indexes `hub.health` reads `events` with:
a BRIN index on `received_at` (a few pages, nearly free to keep up on an append-mostly table)
and a partial index on the `record.rejected*` events. On a large existing `events` table
`CREATE INDEX` blocks writes while it builds: make them first by hand (per partition,
CONCURRENTLY) under the same names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types

from agent.link.mqtt_session import InboundMessage

__all__ = [
    "CLASSES",
    "StatusReading",
    "StatusRecorder",
    "make_status_schema",
    "read_status",
    "status_filter",
]

_log = logging.getLogger(__name__)
_STATUS_SCHEMA_LOCK = 7_270_003  # pg_advisory_xact_lock key (hub.store has 7_270_001)
_PRUNE_EVERY_S = 600.0
_MAX_DOCUMENT_BYTES = 262_144
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
CLASSES = ("telemetry", "business", "critical")  # the agent's buffer classes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agent_status (
    site text NOT NULL,
    agent text NOT NULL,
    received_at timestamptz NOT NULL,
    state text NOT NULL,
    document jsonb NOT NULL,
    PRIMARY KEY (site, agent)
);
CREATE TABLE IF NOT EXISTS status_samples (
    site text NOT NULL,
    agent text NOT NULL,
    bucket bigint NOT NULL,
    at timestamptz NOT NULL,
    state text NOT NULL,
    connected boolean NOT NULL,
    pending_telemetry bigint,
    pending_business bigint,
    pending_critical bigint,
    oldest_telemetry_s double precision,
    oldest_business_s double precision,
    oldest_critical_s double precision,
    dead_letters bigint,
    PRIMARY KEY (site, agent, bucket)
);
CREATE INDEX IF NOT EXISTS status_samples_at ON status_samples (at);
"""
# Made only when missing: even CREATE INDEX IF NOT EXISTS takes a SHARE lock on `events` (the
# other hub processes' landing waits for it) before it finds the index there.
_EVENTS_INDEXES = {
    # autosummarize: a filled block range is summarized by autovacuum soon after (an
    # unsummarized range matches every query, so the newest blocks are always read).
    "events_received_at_brin": "CREATE INDEX IF NOT EXISTS events_received_at_brin ON events "
    "USING brin (received_at) WITH (autosummarize = on)",
    "events_rejected_records": "CREATE INDEX IF NOT EXISTS events_rejected_records ON events "
    "(site, agent, received_at) WHERE type LIKE 'record.rejected%'",
}

_UPSERT_STATUS = """
INSERT INTO agent_status (site, agent, received_at, state, document)
VALUES ($1, $2, $3, $4, $5::jsonb)
ON CONFLICT (site, agent) DO UPDATE SET received_at = EXCLUDED.received_at,
    state = EXCLUDED.state, document = EXCLUDED.document
"""
_UPSERT_SAMPLE = """
INSERT INTO status_samples (site, agent, bucket, at, state, connected, pending_telemetry,
    pending_business, pending_critical, oldest_telemetry_s, oldest_business_s,
    oldest_critical_s, dead_letters)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (site, agent, bucket) DO UPDATE SET at = EXCLUDED.at, state = EXCLUDED.state,
    connected = EXCLUDED.connected, pending_telemetry = EXCLUDED.pending_telemetry,
    pending_business = EXCLUDED.pending_business, pending_critical = EXCLUDED.pending_critical,
    oldest_telemetry_s = EXCLUDED.oldest_telemetry_s,
    oldest_business_s = EXCLUDED.oldest_business_s,
    oldest_critical_s = EXCLUDED.oldest_critical_s, dead_letters = EXCLUDED.dead_letters
"""


def status_filter(topic_prefix: str) -> str:
    return f"{topic_prefix}/+/+/status"


async def make_status_schema(pool: asyncpg.Pool) -> None:
    """The tables and indexes of the module docstring (after `hub.store` made `events`)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _STATUS_SCHEMA_LOCK)
        await conn.execute(_SCHEMA)
        present = {
            row["relname"] for row in await conn.fetch(
                "SELECT relname FROM pg_class WHERE relname = ANY($1::text[]) "
                "AND relnamespace = current_schema()::regnamespace", list(_EVENTS_INDEXES),
            )
        }
        for name, ddl in _EVENTS_INDEXES.items():
            if name not in present:
                await conn.execute(ddl)


@dataclass(frozen=True, slots=True)
class StatusReading:
    """One status message, read: what the two tables take of it. `document` None: the
    retained status was cleared (empty payload)."""

    site: str
    agent: str
    state: str
    document: dict[str, Any] | None
    connected: bool
    pending: tuple[int | None, ...]  # per class of CLASSES
    oldest_s: tuple[float | None, ...]  # per class of CLASSES
    dead_letters: int | None


def read_status(topic: str, payload: bytes, topic_prefix: str) -> StatusReading | None:
    """The reading of a status message, or None if the topic is not an agent's status."""
    rest = topic[len(topic_prefix) + 1:] if topic.startswith(topic_prefix + "/") else ""
    parts = rest.split("/")
    if len(parts) != 3 or parts[2] != "status" or not all(map(_NAME.match, parts[:2])):
        return None
    site, agent = parts[0], parts[1]
    if not payload:
        return StatusReading(site, agent, "cleared", None, False, (None,) * 3, (None,) * 3, None)
    document: Any
    try:
        document = json.loads(payload) if len(payload) <= _MAX_DOCUMENT_BYTES else None
    except ValueError:
        document = None
    if not isinstance(document, dict):
        reason = "over 256 KiB" if len(payload) > _MAX_DOCUMENT_BYTES else "not a JSON object"
        document = {"state": "unreadable", "reason": reason}
    state = str(document.get("state") or "unknown")[:32]
    buffer = _dict(document.get("buffer"))
    classes = _dict(buffer.get("classes"))
    forwarder = _dict(document.get("forwarder"))
    return StatusReading(
        site, agent, state, document,
        connected=state == "online" and forwarder.get("connected") is True,
        pending=tuple(_int(_dict(classes.get(name)).get("pending")) for name in CLASSES),
        oldest_s=tuple(
            _float(_dict(classes.get(name)).get("oldest_pending_age_s")) for name in CLASSES
        ),
        dead_letters=_int(buffer.get("dead_letters")),
    )


class StatusRecorder:
    """Takes the status messages (`owns`, `offer`: the session's `on_delivery`) and records
    them (`run`); see the module docstring."""

    def __init__(
        self, pool: asyncpg.Pool, *, topic_prefix: str, sample_interval_s: float,
        keep_hours: float,
    ) -> None:
        self._pool = pool
        self._prefix = topic_prefix
        self._sample_s = sample_interval_s
        self._keep = timedelta(hours=keep_hours)
        self._queue: asyncio.Queue[InboundMessage] = asyncio.Queue()
        self._failing = False
        self.recorded_total = 0
        self.failures_total = 0

    @property
    def filter(self) -> str:
        return status_filter(self._prefix)

    def owns(self, topic: str) -> bool:
        rest = topic[len(self._prefix) + 1:] if topic.startswith(self._prefix + "/") else ""
        parts = rest.split("/")
        return len(parts) == 3 and parts[2] == "status"

    def offer(self, message: InboundMessage) -> None:
        """On the loop: O(1) (bounded by the broker's Receive Maximum, as the landing is)."""
        self._queue.put_nowait(message)

    async def run(self) -> None:
        """Record the statuses, prune the samples, for ever (cancel to stop)."""
        next_prune = time.monotonic()
        while True:
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + _PRUNE_EVERY_S
                await self.prune(datetime.now(UTC))
            try:
                async with asyncio.timeout(_PRUNE_EVERY_S):
                    message = await self._queue.get()
            except TimeoutError:
                continue
            await self._record_message(message)

    async def _record_message(self, message: InboundMessage) -> None:
        try:
            reading = read_status(message.topic, message.payload, self._prefix)
            if reading is not None:
                await self.record(reading, datetime.now(UTC))
                self.recorded_total += 1
            if self._failing:
                self._failing = False
                _log.info("recording agent statuses again")
        except _DB_ERRORS as error:
            self.failures_total += 1
            if not self._failing:
                self._failing = True
                _log.warning("recording the status of %s failed: %s (the next one is recorded "
                             "when the database is back)", message.topic, error)
        message.ack()  # a status is published again: never held for a retry

    async def record(self, reading: StatusReading, received_at: datetime) -> None:
        """One status into `agent_status` and its sample, in one transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            if reading.document is None:
                await conn.execute(
                    "DELETE FROM agent_status WHERE site = $1 AND agent = $2",
                    reading.site, reading.agent,
                )
                return
            await conn.execute(
                _UPSERT_STATUS, reading.site, reading.agent, received_at, reading.state,
                json.dumps(reading.document, default=str).replace("\\u0000", ""),
            )
            bucket = math.floor(received_at.timestamp() / self._sample_s)
            await conn.execute(
                _UPSERT_SAMPLE, reading.site, reading.agent, bucket, received_at, reading.state,
                reading.connected, *reading.pending, *reading.oldest_s, reading.dead_letters,
            )

    async def prune(self, now: datetime) -> None:
        """Delete the samples older than `keep_hours` before `now` (a failure is logged)."""
        try:
            await self._pool.execute(
                "DELETE FROM status_samples WHERE at < $1", now - self._keep
            )
        except _DB_ERRORS as error:
            _log.warning("pruning status samples failed: %s; trying again later", error)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
