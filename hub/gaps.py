"""Gap healing: per agent, what is missing, and a signed replay request for exactly that range.

::

    seq_held + seq_lost ──complement over 1..max_seq──▶ gaps (open since ...)
        open longer than open_after_s ──▶ signed `replay` {first_seq, last_seq}
            ──▶ {prefix}/{site}/{agent}/cmd/replay       (Response Topic: this hub's reply/)
        answer: replayed N (they land as any event, `replayed`), and of the rest:
            gone          ──▶ seq_lost (reason `gone`: beyond the agent's retention)
            dead_letters  ──▶ seq_lost (reason `dead_letter`)
            pending       ──  nothing: the agent's forwarder sends them
        no answer / refused ──▶ asked again after a backoff, at most max_requests times,
                                then the gap is `exhausted` (stays open, asked no more)

Invariants
----------
- A seq is either held, recorded lost (with a reason: `evicted` from an
  `agent.buffer.overflow` event, `gone`, `dead_letter`), or inside a row of `gaps`: the scan
  rewrites an agent's gap rows from the current coverage, so a gap shrinks as replays land and
  its row goes when it is healed. A new gap row keeps the opening time, request count and
  backoff of the rows it overlaps (a gap split by a partial replay is not new).
- One scan at a time across hub processes: a scan runs only while it holds a transaction-level
  advisory lock; a process that cannot take it skips that round (another one is scanning).
- A request names at most ``max_seqs_per_request`` seqs (the first part of a longer gap);
  an agent's gaps due together and at most ``merge_within_seqs`` held seqs apart are one
  request (the held seqs between come again as no-ops). Of an answer's `gone` and
  `dead_letters` ranges only what the hub does not hold is recorded lost. A request is
  recorded in `replay_requests` before it is published; its answer (to this process's reply
  topic, matched by the request id as Correlation Data) is recorded against it. Requests are
  signed (`agent.link.signing.RequestSigner`) with the hub's key; the agent verifies it.
- On an MQTT 3.1.1 connection (no properties; docs/hub-contract.md, "MQTT 3.1.1 hubs") the
  request's JSON carries ``response_topic`` and ``correlation_data`` (the request id, base64;
  neither is signed, as the v5 properties are not), and the answer's JSON repeats
  ``correlation_data``: an answer is matched by its Correlation Data property, else by that
  field, so answers over either version are read.
- A request not answered within ``reply_timeout_s`` is marked `no_answer`; the gap is asked
  for again when its backoff is over.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.link.mqtt_session import InboundMessage, MqttSession, MqttSessionError
from agent.link.signing import RequestSigner
from hub.config import GapsSection
from hub.ranges import Range, complement, split
from hub.store import HubStore

__all__ = ["GapHealer", "GapScan"]

_log = logging.getLogger(__name__)
_SCAN_LOCK = 7_270_002
_COMMAND_CONTENT_TYPE = "application/json"
# The MQTT 3.1.1 request/response convention (agent.link.mqtt311, which the hub does not
# import: the agent's command server reads these fields of a request without properties).
_RESPONSE_TOPIC_FIELD = "response_topic"
_CORRELATION_FIELD = "correlation_data"


@dataclass(frozen=True, slots=True)
class _GapRow:
    first: int
    last: int
    opened_at: datetime
    requests: int
    next_request_at: datetime | None
    state: str
    last_outcome: str | None


@dataclass(frozen=True, slots=True)
class GapScan:
    """What one scan did: gaps open, requests sent, whether it ran at all (the lock)."""

    ran: bool
    open_gaps: int = 0
    requested: int = 0


class GapHealer:
    """Scans coverage (`scan`, every ``check_interval_s`` from `run`), asks agents for what is
    missing and records their answers (`offer_reply`)."""

    def __init__(
        self,
        store: HubStore,
        session: MqttSession,
        settings: GapsSection,
        *,
        topic_prefix: str,
        reply_root: str,
        signer: RequestSigner,
    ) -> None:
        self._store = store
        self._session = session
        self._settings = settings
        self._prefix = topic_prefix
        self._reply_root = reply_root  # `{prefix}/_hub/{client_id}/reply`
        self._signer = signer
        self.requests_total = 0
        self.replies_total = 0

    @property
    def reply_filter(self) -> str:
        return f"{self._reply_root}/+"

    def owns(self, topic: str) -> bool:
        return topic.startswith(self._reply_root + "/")

    # -- the scan ----------------------------------------------------------------------------

    async def scan(self, now: datetime | None = None) -> GapScan:
        """One round over every agent (module docstring)."""
        now = now or datetime.now(UTC)
        due: list[tuple[str, str, Range, int]] = []
        open_gaps = 0
        async with self._store.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _SCAN_LOCK):
                return GapScan(ran=False)
            cutoff = now - timedelta(seconds=self._settings.reply_timeout_s)
            await conn.execute(
                "UPDATE replay_requests SET outcome = 'no_answer' "
                "WHERE outcome = 'sent' AND requested_at < $1", cutoff,
            )
            for (site, agent), max_seq in await self._store.agents(conn):
                rows = await self._rewrite_gaps(conn, site, agent, max_seq, now)
                open_gaps += len(rows)
                for row in rows:
                    request = await self._due(conn, site, agent, row, now)
                    if request is not None:
                        due.append((site, agent, request, row.requests + 1))
        requests = _merged_requests(
            due, self._settings.max_seqs_per_request, self._settings.merge_within_seqs
        )
        for site, agent, span, attempt in requests:
            await self._request(site, agent, span, attempt, now)
        return GapScan(ran=True, open_gaps=open_gaps, requested=len(requests))

    async def _rewrite_gaps(
        self, conn: Any, site: str, agent: str, max_seq: int, now: datetime
    ) -> list[_GapRow]:
        # On the scan's own connection (hub.store: a second one could deadlock with answers).
        held = await self._store.held(site, agent, conn)
        lost = [(first, last) for first, last, _, _ in await self._store.lost(site, agent, conn)]
        missing = complement([*held, *lost], 1, max_seq) if max_seq else []
        old = [
            _GapRow(r["first_seq"], r["last_seq"], r["opened_at"], r["requests"],
                    r["next_request_at"], r["state"], r["last_outcome"])
            for r in await conn.fetch(
                "DELETE FROM gaps WHERE site = $1 AND agent = $2 RETURNING *", site, agent
            )
        ]
        rows: list[_GapRow] = []
        for first, last in missing:
            before = [g for g in old if g.first <= last and g.last >= first]
            rows.append(_GapRow(
                first, last,
                opened_at=min((g.opened_at for g in before), default=now),
                requests=max((g.requests for g in before), default=0),
                next_request_at=max(
                    (g.next_request_at for g in before if g.next_request_at), default=None
                ),
                state="exhausted" if any(g.state == "exhausted" for g in before) else "open",
                last_outcome=next((g.last_outcome for g in before if g.last_outcome), None),
            ))
        for gap in old:
            if not any(first <= gap.last and last >= gap.first for first, last in missing):
                _log.info("gap %s/%s seq %d-%d closed", site, agent, gap.first, gap.last)
        for row in rows:
            if not any(g.first <= row.last and g.last >= row.first for g in old):
                _log.info("gap %s/%s seq %d-%d opened", site, agent, row.first, row.last)
        await conn.executemany(
            "INSERT INTO gaps (site, agent, first_seq, last_seq, opened_at, requests, "
            "next_request_at, state, last_outcome) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            [(site, agent, r.first, r.last, r.opened_at, r.requests, r.next_request_at,
              r.state, r.last_outcome) for r in rows],
        )
        return rows

    async def _due(
        self, conn: Any, site: str, agent: str, row: _GapRow, now: datetime
    ) -> Range | None:
        """The range to ask for now for this gap, if any; updates its row."""
        settings = self._settings
        if row.state == "exhausted":
            return None
        if (now - row.opened_at).total_seconds() < settings.open_after_s:
            return None
        if row.next_request_at is not None and row.next_request_at > now:
            return None
        outstanding = await conn.fetchval(
            "SELECT count(*) FROM replay_requests WHERE site = $1 AND agent = $2 AND "
            "outcome = 'sent' AND first_seq <= $4 AND last_seq >= $3",
            site, agent, row.first, row.last,
        )
        if outstanding:
            return None
        if row.requests >= settings.max_requests:
            await conn.execute(
                "UPDATE gaps SET state = 'exhausted' WHERE site = $1 AND agent = $2 AND "
                "first_seq = $3", site, agent, row.first,
            )
            _log.warning(
                "gap %s/%s seq %d-%d still open after %d replay request(s): not asking again",
                site, agent, row.first, row.last, row.requests,
            )
            return None
        wait_s = min(settings.retry_max_s, settings.retry_min_s * 2.0 ** min(row.requests, 40))
        await conn.execute(
            "UPDATE gaps SET requests = requests + 1, next_request_at = $4 "
            "WHERE site = $1 AND agent = $2 AND first_seq = $3",
            site, agent, row.first, now + timedelta(seconds=wait_s),
        )
        return split((row.first, row.last), settings.max_seqs_per_request)[0]

    async def _request(
        self, site: str, agent: str, span: Range, attempt: int, now: datetime
    ) -> None:
        request_id = uuid.uuid4()
        first, last = span
        await self._store.pool.execute(
            "INSERT INTO replay_requests (request_id, site, agent, first_seq, last_seq, "
            "requested_at) VALUES ($1, $2, $3, $4, $5, $6)",
            request_id, site, agent, first, last, now,
        )
        body = self._signer.sign(
            "replay", {"first_seq": first, "last_seq": last}, target=f"{site}/{agent}"
        )
        topic = f"{self._prefix}/{site}/{agent}/cmd/replay"
        reply_topic = f"{self._reply_root}/{request_id}"
        try:
            if self._session.mqtt311:  # no properties: the reply fields in the JSON
                body[_RESPONSE_TOPIC_FIELD] = reply_topic
                body[_CORRELATION_FIELD] = base64.b64encode(request_id.bytes).decode("ascii")
                self._session.publish(topic, _json(body), qos=1)
            else:
                self._session.publish(
                    topic, _json(body), qos=1, content_type=_COMMAND_CONTENT_TYPE,
                    response_topic=reply_topic, correlation_data=request_id.bytes,
                )
        except MqttSessionError as error:
            await self._answer(request_id, "not_sent", None, {"error": str(error)})
            return
        self.requests_total += 1
        _log.info(
            "replay of %s/%s seq %d-%d requested (request %d of the gap)",
            site, agent, first, last, attempt,
        )

    # -- answers -----------------------------------------------------------------------------

    async def offer_reply(self, message: InboundMessage) -> None:
        """An answer to one of this process's requests: record it (acked by the caller)."""
        correlation = getattr(message.properties, "CorrelationData", None)
        try:
            answer = json.loads(message.payload)
            if not isinstance(answer, dict):
                raise ValueError("not a JSON object")
            if correlation is None:  # MQTT 3.1.1: the request id in the answer's JSON
                correlation = base64.b64decode(answer.get(_CORRELATION_FIELD) or "", validate=True)
            request_id = uuid.UUID(bytes=bytes(correlation))
        except (ValueError, TypeError, binascii.Error):
            _log.warning("unreadable answer on %s ignored", message.topic)
            return
        self.replies_total += 1
        request = await self._store.pool.fetchrow(
            "SELECT site, agent FROM replay_requests WHERE request_id = $1", request_id
        )
        if request is None:
            return
        site, agent = request["site"], request["agent"]
        if not answer.get("ok"):
            error = answer.get("error") or {}
            reason = str(error.get("reason", "refused"))[:64]
            await self._answer(request_id, f"refused:{reason}", None, answer)
            _log.warning("replay request to %s/%s refused: %s: %s", site, agent, reason,
                         str(error.get("message", ""))[:300])
            return
        result = answer.get("result") or {}
        replayed = result.get("replayed") if isinstance(result.get("replayed"), int) else None
        await self._answer(request_id, "answered", replayed, answer)
        for key, reason, detail in (
            ("gone", "gone", f"beyond the agent's retention: replay request {request_id} "
             "was answered that the agent no longer holds these seqs"),
            ("dead_letters", "dead_letter", f"dead-lettered at the agent (replay request "
             f"{request_id}): `edge-agent buffer dead-letters` there says why"),
        ):
            spans = _spans(result.get(key))
            if not spans:
                continue
            # A merged request spans held seqs too, and a seq may have landed meanwhile:
            # only what the hub does not hold is lost.
            held = await self._store.held(site, agent)
            for low, high in spans:
                for span in complement(held, low, high):
                    await self._store.record_lost(site, agent, span, reason, detail)
                    _log.warning("%s/%s seq %d-%d recorded lost: %s", site, agent, *span,
                                 reason)

    async def _answer(
        self, request_id: uuid.UUID, outcome: str, replayed: int | None, answer: Any
    ) -> None:
        await self._store.pool.execute(
            "UPDATE replay_requests SET answered_at = now(), outcome = $2, replayed = $3, "
            "answer = $4::jsonb WHERE request_id = $1",
            request_id, outcome, replayed, json.dumps(answer, default=str),
        )
        await self._store.pool.execute(
            "UPDATE gaps SET last_outcome = $1 FROM replay_requests r WHERE r.request_id = $2 "
            "AND gaps.site = r.site AND gaps.agent = r.agent AND gaps.first_seq <= r.last_seq "
            "AND gaps.last_seq >= r.first_seq", outcome, request_id,
        )

    async def run(self) -> None:
        """Scan every ``check_interval_s`` for ever (cancel to stop)."""
        while True:
            started = time.monotonic()
            try:
                await self.scan()
            except Exception as error:  # the database is down: the next round tries again
                _log.warning("gap scan failed: %s", error)
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self._settings.check_interval_s - elapsed))


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def _merged_requests(
    due: list[tuple[str, str, Range, int]], max_seqs: int, within: int
) -> list[tuple[str, str, Range, int]]:
    """One request for neighbouring gaps of one agent: gaps at most `within` held seqs apart
    are asked for together while the request names at most `max_seqs` seqs (the held seqs
    between come again and are no-ops at the hub; many small requests would queue at the
    agent, which answers commands one at a time). The attempt is the highest merged."""
    merged: list[tuple[str, str, Range, int]] = []
    for site, agent, (first, last), attempt in sorted(due):
        if merged:
            m_site, m_agent, (m_first, m_last), m_attempt = merged[-1]
            if (
                (m_site, m_agent) == (site, agent)
                and first - m_last - 1 <= within
                and last - m_first + 1 <= max_seqs
            ):
                merged[-1] = (site, agent, (m_first, last), max(attempt, m_attempt))
                continue
        merged.append((site, agent, (first, last), attempt))
    return merged


def _spans(value: Any) -> list[Range]:
    if not isinstance(value, list):
        return []
    return [
        (int(item[0]), int(item[1]))
        for item in value
        if isinstance(item, list) and len(item) == 2 and all(isinstance(v, int) for v in item)
        and 1 <= item[0] <= item[1]
    ]
