"""The webhook connector: an MES posts JSON objects; each becomes one record reading.

What a post's answer promises (the HTTP layer is `connectors.mes_http.server`):
- 202: every object of the post is committed to the buffer (the connector awaits the commit
  future `emit` returns). Nothing is taken before every object is checked: one bad object
  refuses the whole post with 400 and the field errors (index, field, message), so the MES
  can fix and resend it as a whole. Each bad object still reaches the hub, as a
  `record.rejected` event (its reason, the business keys it has, its redacted copy), committed
  before the 400 is answered (bounded by `commit_timeout_s`; past it the 400 goes out anyway);
  the good objects of the post are not taken. A resend of the same bad post makes the same
  `record.rejected` ids, dropped as repeats.
- 503 (`Retry-After`): the buffer applies backpressure, or the commit took longer than
  `commit_timeout_s`; the objects may or may not be committed, and resending them is safe.
- Resending is safe because a record's key is its post's idempotency key and index (header
  `Idempotency-Key`, or the `idempotency_field` of a single object), else the SHA-256 of the
  post's body and the index: the same post gives the same event ids, which the buffer and
  the consumers drop as repeats. An answered key is also remembered in the buffer's source
  state (committed with the post's records, kept `idempotency_ttl_s`): a resend answers 202
  with `replayed` and the same ids, and the same key with another body answers 409.

Trace context: a post's `traceparent` and `tracestate` headers travel on each of its readings
(`Reading.trace`, as received); the mapping makes each event's span a child of the MES's
request when the header is valid (an invalid one is ignored, never a reason to refuse).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from connectors.base import Emit, Quality, Reading, Rejection, SourceHealth, SourceHost
from connectors.mes_http.config import MesHttpSettings, RouteSettings
from connectors.mes_http.server import (
    Accepted,
    Busy,
    Conflict,
    ItemError,
    Outcome,
    Rejected,
    TraceHeaders,
    WebhookServer,
)
from connectors.records import RowError, raw_copy, read_record, readable_keys

_log = logging.getLogger(__name__)

_HOUSEKEEPING_S = 3600.0
_RETRY_AFTER_S = 5.0


class MesHttpConnector:
    def __init__(self, name: str, settings: MesHttpSettings, host: SourceHost) -> None:
        self.name = name
        self.health = SourceHealth()
        self._settings = settings
        self._host = host
        self._emit: Emit | None = None
        self._key_locks: dict[str, _KeyLock] = {}
        self.health.counters.update(
            posts_accepted_total=0, posts_rejected_total=0, posts_busy_total=0,
            posts_replayed_total=0, records_rejected_total=0, rejections_unreported_total=0,
        )

    async def run(self, emit: Emit) -> None:
        self._emit = emit
        server = WebhookServer(
            self._settings, self._on_post, name=self.name, counters=self.health.counters
        )
        await server.start()  # SourceConfigError: port taken, TLS or tokens unusable
        self.health.connected = True
        _log.info("source=%s webhook listening on %s port %d",
                  self.name, self._settings.host, server.port)
        try:
            while True:
                await self._forget_old_keys()
                await asyncio.sleep(_HOUSEKEEPING_S)
        finally:
            self.health.connected = False
            await server.stop()

    async def _forget_old_keys(self) -> None:
        cutoff = time.time() - self._settings.idempotency_ttl_s
        dropped = await self._host.drop_source_state(f"{self.name}/idem/", cutoff)
        if dropped:
            _log.info("source=%s forgot %d idempotency key(s) older than %.0f s",
                      self.name, dropped, self._settings.idempotency_ttl_s)

    # -- one post -------------------------------------------------------------------------------

    async def _on_post(
        self,
        route: RouteSettings,
        items: list[dict[str, Any]],
        key: str | None,
        trace: TraceHeaders,
    ) -> Outcome:
        if self._host.backpressure():
            self.health.counters["posts_busy_total"] += 1
            return Busy("the agent's buffer is full; resend later", _RETRY_AFTER_S)
        digest = hashlib.sha256(
            json.dumps(items, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
        if key is None:
            return await self._take(route, items, f"body:{digest}", digest, None, trace)
        state_key = f"{self.name}/idem/{route.path}/{key}"
        async with self._one_post_per_key(state_key):  # a resend sees the first's answer
            answered = (await self._host.source_state(state_key)).get(state_key)
            if answered is not None:
                return self._replay(answered, digest, key)
            return await self._take(route, items, f"key:{key}", digest, state_key, trace)

    def _replay(self, answered: str, digest: str, key: str) -> Outcome:
        stored = json.loads(answered)
        if stored["digest"] != digest:
            self.health.counters["posts_rejected_total"] += 1
            return Conflict(f"Idempotency-Key {key!r} was used before with a different body")
        self.health.counters["posts_replayed_total"] += 1
        return Accepted(list(stored["ids"]), replayed=True)

    async def _take(
        self,
        route: RouteSettings,
        items: list[dict[str, Any]],
        record_key: str,
        digest: str,
        state_key: str | None,
        trace: TraceHeaders,
    ) -> Outcome:
        readings, ids, errors, refused = self._readings(route, items, record_key, trace)
        if errors:
            self.health.counters["posts_rejected_total"] += 1
            await self._report_refused(refused)
            return Rejected(errors)
        if state_key is not None:
            answer = json.dumps({"digest": digest, "ids": ids})
            readings[-1] = replace(readings[-1], state=((state_key, answer),))
        assert self._emit is not None
        try:
            await asyncio.wait_for(self._commit(readings), self._settings.commit_timeout_s)
        except TimeoutError:
            self.health.counters["posts_busy_total"] += 1
            return Busy(
                f"not committed within {self._settings.commit_timeout_s} s; resend (safe: "
                "the same post makes no duplicates)", _RETRY_AFTER_S,
            )
        except Exception as error:  # the agent stopped before the commit (BufferUnavailable)
            self.health.counters["posts_busy_total"] += 1
            return Busy(f"not committed: {error}; resend", _RETRY_AFTER_S)
        self.health.counters["posts_accepted_total"] += 1
        self.health.readings_total += len(readings)
        self.health.last_value_at = datetime.now(UTC)  # received: what staleness watches
        self.health.last_business_time = readings[-1].timestamp
        return Accepted(ids)

    async def _report_refused(self, refused: Sequence[Reading]) -> None:
        """Commit the refused objects' rejected readings (their `record.rejected` events),
        waiting at most `commit_timeout_s`: the 400 goes out either way."""
        if not refused:
            return
        self.health.counters["records_rejected_total"] += len(refused)
        try:
            await asyncio.wait_for(self._commit(refused), self._settings.commit_timeout_s)
        except Exception as error:  # TimeoutError, or the agent stopped (BufferUnavailable)
            self.health.counters["rejections_unreported_total"] += len(refused)
            _log.warning("source=%s %d refused object(s) not reported to the hub: %s",
                         self.name, len(refused), error or type(error).__name__)

    async def _commit(self, readings: Sequence[Reading]) -> None:
        assert self._emit is not None
        committed = await self._emit(readings)
        if committed is not None:
            await committed

    def _readings(
        self,
        route: RouteSettings,
        items: list[dict[str, Any]],
        record_key: str,
        trace: TraceHeaders,
    ) -> tuple[list[Reading], list[str], list[ItemError], list[Reading]]:
        """The post's readings and their event ids, the field errors, and a rejected
        reading per refused object (`record.rejected` at the hub)."""
        received_at = datetime.now(UTC)
        readings: list[Reading] = []
        ids: list[str] = []
        errors: list[ItemError] = []
        refused: list[Reading] = []
        for index, item in enumerate(items):
            key = f"{record_key}:{index}"
            try:
                record = read_record(item, route, received_at=received_at)
            except RowError as error:
                errors.append(ItemError(index=index, field=error.column, message=str(error)))
                refused.append(self._refused(
                    route, item, index, key, received_at, trace, str(error), error.column,
                    readable_keys(item, route), "read",
                ))
                continue
            reading = Reading(
                source=self.name,
                signal=route.path,
                value=key,
                timestamp=record.timestamp,
                quality=Quality.GOOD,
                attributes=record.fields,
                trace=trace,
            )
            event_id, problems = self._host.check_record(reading)
            for name, message in problems:
                errors.append(ItemError(index=index, field=name, message=message))
            if problems:
                reason = "; ".join(f"{name}: {message}" for name, message in problems)
                refused.append(self._refused(
                    route, item, index, key, record.timestamp, trace, reason, problems[0][0],
                    record.fields, "validate",
                ))
            readings.append(reading)
            ids.append(event_id)
        return readings, ids, errors, refused

    def _refused(
        self,
        route: RouteSettings,
        item: dict[str, Any],
        index: int,
        key: str,
        at: datetime,
        trace: TraceHeaders,
        reason: str,
        column: str,
        keys: tuple[tuple[str, Any], ...],
        stage: str,
    ) -> Reading:
        raw, cut = raw_copy(item, route.secret_columns)
        rejection = Rejection(
            interface="webhook", reason=reason, location=f"POST {route.path} item {index}",
            column=None if column == "record" else column, keys=keys, raw=raw,
            raw_truncated=cut, stage=stage, set_aside=False,
        )
        return Reading(
            source=self.name, signal=route.path, value=key, timestamp=at,
            quality=Quality.BAD, status=reason, trace=trace, rejection=rejection,
        )

    @asynccontextmanager
    async def _one_post_per_key(self, state_key: str) -> AsyncIterator[None]:
        """Hold the key's lock; the lock is forgotten when no post waits for it any more."""
        entry = self._key_locks.setdefault(state_key, _KeyLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._key_locks[state_key]


@dataclass(slots=True)
class _KeyLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
