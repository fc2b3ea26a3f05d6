"""The hub's PostgreSQL store (asyncpg): schema, batched exactly-once landing, seq coverage.

Schema (made by `HubStore.open`, idempotent, under an advisory lock so that hub processes
starting together do not race)::

    event_ids        id uuid PRIMARY KEY, site, agent, seq, received_at     (not partitioned)
    events           id, site, agent, seq, type, source, subject, time, received_at,
                     replayed, topic, landed_by, envelope jsonb
                                                          PARTITION BY RANGE (received_at)
      events_pYYYYMMDD   one per UTC day, made `partition_days_ahead` days ahead
    hub_agents       (site, agent) PRIMARY KEY, max_seq, first/last_received_at,
                     last_event_time, duplicates_total (events received again)
    seq_held         (site, agent, first_seq) PRIMARY KEY, last_seq: the seq ranges landed
    seq_lost         site, agent, first_seq, last_seq, reason, detail, recorded_at
    gaps             (site, agent, first_seq) PRIMARY KEY, last_seq, opened_at, requests,
                     next_request_at, state, last_outcome          (`hub.gaps`)
    replay_requests  request_id PRIMARY KEY, site, agent, first_seq, last_seq, requested_at,
                     answered_at, outcome, replayed, answer jsonb  (`hub.gaps`)
    rejected_messages  received_at, topic, reason, payload: what no event could be read from

Why `event_ids`: PostgreSQL enforces a unique constraint on a partitioned table only if it
includes the partition key, and the partition key is the receive time, which differs between a
first delivery and its redelivery. So uniqueness of `id` lives in one small table that is not
partitioned (an id, a seq and a time per event), and `events` takes a row only when its id was
new there, in the same transaction. Partitioning by receive time rather than business time
(`time`) keeps every write in the newest partitions (a backfilled or late event from last week
does not touch old ones) and makes retention a `DROP TABLE` of a day that is over. (Dropping a
day of `events` keeps its ids in `event_ids`, so a late replay of it is still a no-op.)

Invariants
----------
- Exactly once: `land` runs one transaction per batch. An event's id is inserted into
  `event_ids` with ON CONFLICT DO NOTHING; only the ids that were new get their `events` row,
  their seq merged into `seq_held`, the agent's `max_seq` raised, and (an
  `agent.buffer.overflow` event with reason `evicted`) its `seq_ranges` recorded in
  `seq_lost`: all or nothing. A redelivered or replayed event changes nothing but the agent's
  `duplicates_total`.
- One batch, few round trips: the rows in one binary COPY into the connection's temporary
  `landing_stage` (emptied by every commit or rollback), then one statement that claims the
  new ids in `event_ids` and inserts their `events` rows (`_LAND_STAGED`, returning the new
  ids); then the agents' rows locked, one merge of `seq_held` per agent and one UPDATE of
  every agent's `hub_agents` row. Ids are claimed in id order, so two batches that share ids
  (a redelivery landing beside its first delivery on another process) wait for each other in
  one order and cannot deadlock; the agents' rows are locked only after the bulk writes, so
  batches for the same agents (several in flight in one process, or other processes) overlap
  in all but the short coverage step. Measured in bench/hub_landing.py (docs/performance.md,
  "Hub landing").
- The caller acknowledges the batch's MQTT messages only after `land` returned (committed). A
  crash before that leaves the messages unacknowledged: the broker sends them again, and the
  first rule makes the second landing a no-op.
- Concurrent hub processes: the `hub_agents` rows of a batch are locked (FOR UPDATE, in
  (site, agent) order, so two batches cannot deadlock) before `seq_held` is read and written,
  so two processes never merge one agent's ranges from the same stale read.
- `seq_held` holds merged ranges: never overlapping, never adjacent.
- A hub process that stops inside a transaction (frozen, SIGSTOPped, its VM paused) holds its
  batch's row locks; the server ends such a session after `_IDLE_IN_TRANSACTION_MS` idle in
  the transaction (`idle_in_transaction_session_timeout`), so the others go on; the batch was
  not committed, so not acknowledged, and lands again.
- The coverage reads (`agents`, `held`, `lost`) take the caller's connection when it has one:
  the gap scan reads on the connection whose transaction holds the `gaps` rows it rewrites,
  so it never needs a second one. (With reads on other pooled connections, replay answers
  waiting on those rows could take every connection and the scan could never finish: a
  deadlock until `command_timeout_s`, seen with about 20 answers arriving at once.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types
import msgspec

from hub.ranges import Range, merged, runs

__all__ = ["AgentKey", "HubStore", "LandResult", "LandingRow", "StoreUnavailable"]

_log = logging.getLogger(__name__)

AgentKey = tuple[str, str]  # (site, agent)
OVERFLOW_TYPE = "agent.buffer.overflow.v1"
_SCHEMA_LOCK = 7_270_001  # pg_advisory_xact_lock key for schema and partition DDL
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS event_ids (
    id uuid PRIMARY KEY,
    site text NOT NULL,
    agent text NOT NULL,
    seq bigint NOT NULL,
    received_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id uuid NOT NULL,
    site text NOT NULL,
    agent text NOT NULL,
    seq bigint NOT NULL,
    type text NOT NULL,
    source text,
    subject text,
    time timestamptz,
    received_at timestamptz NOT NULL,
    replayed boolean NOT NULL,
    topic text NOT NULL,
    landed_by text NOT NULL,
    envelope jsonb NOT NULL
) PARTITION BY RANGE (received_at);
CREATE INDEX IF NOT EXISTS events_agent_seq ON events (site, agent, seq);
CREATE TABLE IF NOT EXISTS hub_agents (
    site text NOT NULL,
    agent text NOT NULL,
    max_seq bigint NOT NULL DEFAULT 0,
    first_received_at timestamptz NOT NULL DEFAULT now(),
    last_received_at timestamptz,
    last_event_time timestamptz,
    duplicates_total bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (site, agent)
);
CREATE TABLE IF NOT EXISTS seq_held (
    site text NOT NULL,
    agent text NOT NULL,
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    PRIMARY KEY (site, agent, first_seq),
    CHECK (first_seq <= last_seq)
);
CREATE TABLE IF NOT EXISTS seq_lost (
    site text NOT NULL,
    agent text NOT NULL,
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    reason text NOT NULL,
    detail text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site, agent, first_seq, last_seq, reason),
    CHECK (first_seq <= last_seq)
);
CREATE TABLE IF NOT EXISTS gaps (
    site text NOT NULL,
    agent text NOT NULL,
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    opened_at timestamptz NOT NULL,
    requests integer NOT NULL DEFAULT 0,
    next_request_at timestamptz,
    state text NOT NULL DEFAULT 'open',
    last_outcome text,
    PRIMARY KEY (site, agent, first_seq)
);
CREATE TABLE IF NOT EXISTS replay_requests (
    request_id uuid PRIMARY KEY,
    site text NOT NULL,
    agent text NOT NULL,
    first_seq bigint NOT NULL,
    last_seq bigint NOT NULL,
    requested_at timestamptz NOT NULL,
    answered_at timestamptz,
    outcome text NOT NULL DEFAULT 'sent',
    replayed integer,
    answer jsonb
);
CREATE TABLE IF NOT EXISTS rejected_messages (
    received_at timestamptz NOT NULL,
    topic text NOT NULL,
    reason text NOT NULL,
    payload bytea NOT NULL
);
"""

_LOCK_AGENTS = """
SELECT site, agent FROM hub_agents
WHERE (site, agent) IN (SELECT * FROM unnest($1::text[], $2::text[]))
ORDER BY site, agent FOR UPDATE
"""
# A batch is staged in a temporary table of each connection (`LandingRow`'s first fields, in
# its order), emptied by every commit or rollback, and landed from there in one statement.
_STAGE_COLUMNS = (
    "id", "site", "agent", "seq", "type", "source", "subject", "time", "replayed", "topic",
    "envelope",
)
_STAGED = len(_STAGE_COLUMNS)
_MAKE_STAGE = """
CREATE TEMPORARY TABLE IF NOT EXISTS landing_stage (
    id uuid, site text, agent text, seq bigint, type text, source text, subject text,
    time timestamptz, replayed boolean, topic text, envelope jsonb
) ON COMMIT DELETE ROWS
"""
_LAND_STAGED = """
WITH new AS (
    INSERT INTO event_ids (id, site, agent, seq, received_at)
    SELECT id, site, agent, seq, $1 FROM landing_stage ORDER BY id
    ON CONFLICT (id) DO NOTHING RETURNING id
)
INSERT INTO events (id, site, agent, seq, type, source, subject, time, received_at, replayed,
                    topic, landed_by, envelope)
SELECT s.id, s.site, s.agent, s.seq, s.type, s.source, s.subject, s.time, $1, s.replayed,
       s.topic, $2, s.envelope
FROM landing_stage s JOIN new USING (id)
RETURNING id
"""
# Per agent of a batch: the highest seq, the receive and latest business time (NULL: no new
# event of it in the batch) and the events received again.
_UPDATE_AGENTS = """
UPDATE hub_agents AS a SET
    max_seq = greatest(a.max_seq, u.max_seq),
    last_received_at = coalesce(u.received_at, a.last_received_at),
    last_event_time = greatest(a.last_event_time, u.event_time),
    duplicates_total = a.duplicates_total + u.repeats
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::timestamptz[],
            $6::bigint[]) AS u(site, agent, max_seq, received_at, event_time, repeats)
WHERE a.site = u.site AND a.agent = u.agent
"""
_MAX_REJECTED_PAYLOAD = 65_536
# A session idle inside a transaction this long belongs to a hub process that stopped mid-batch
# (frozen, SIGSTOPped, its VM paused): the server ends it, so the row locks it holds do not stop
# every other hub process (module docstring). A live hub is never idle in a transaction.
_IDLE_IN_TRANSACTION_MS = 10_000


class StoreUnavailable(Exception):
    """PostgreSQL failed an operation (unreachable, restarted, out of space): transient; the
    batch was not committed, retry it."""


class LandingRow(NamedTuple):
    """One event as it lands: the columns of `events`, read from the event map (a named
    tuple: made once per event, the cheapest immutable record Python has)."""

    id: str  # canonical (lower-case, dashed) UUID text
    site: str
    agent: str
    seq: int
    type: str
    source: str | None
    subject: str | None
    time: datetime | None
    replayed: bool
    topic: str
    envelope: str  # the event map as JSON
    evicted: tuple[Range, ...] = ()  # an overflow event's evicted seq ranges
    overflow_detail: str = ""


@dataclass(frozen=True, slots=True)
class LandResult:
    landed: int  # new events
    duplicates: int  # already held (redelivery, replay)


class HubStore:
    """One asyncpg pool on the hub's database; see the module docstring."""

    def __init__(self, pool: asyncpg.Pool, partition_days_ahead: int) -> None:
        self._pool = pool
        self._days_ahead = partition_days_ahead
        self._partitions: set[date] = set()

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        url: str,
        *,
        pool_size: int = 4,
        partition_days_ahead: int = 3,
        command_timeout_s: float = 30.0,
    ) -> AsyncIterator[HubStore]:
        """Connect, make the schema and the partitions ahead; the pool is closed on exit.
        StoreUnavailable if PostgreSQL cannot be reached."""
        settings = {
            "timezone": "UTC",
            "idle_in_transaction_session_timeout": str(_IDLE_IN_TRANSACTION_MS),
        }
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=pool_size, command_timeout=command_timeout_s,
                server_settings=settings, init=_make_stage,
            )
        except _DB_ERRORS as error:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {error}") from error
        try:
            store = cls(pool, partition_days_ahead)
            await store._make_schema()
            await store.ensure_partitions(datetime.now(UTC))
            yield store
        finally:
            await pool.close()

    async def _make_schema(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(_SCHEMA)

    async def ensure_partitions(self, now: datetime) -> None:
        """The daily partitions of `events` for `now`'s UTC day and the days ahead."""
        today = now.astimezone(UTC).date()
        wanted = [today + timedelta(days=n) for n in range(self._days_ahead + 1)]
        missing = [day for day in wanted if day not in self._partitions]
        if not missing:
            return
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            for day in missing:
                following = day + timedelta(days=1)
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS events_p{day:%Y%m%d} PARTITION OF events "
                    f"FOR VALUES FROM ('{day.isoformat()} 00:00:00+00') "
                    f"TO ('{following.isoformat()} 00:00:00+00')"
                )
        self._partitions.update(missing)

    # -- landing -----------------------------------------------------------------------------

    async def land(
        self, rows: Sequence[LandingRow], received_at: datetime, landed_by: str = ""
    ) -> LandResult:
        """Land a batch in one transaction (module docstring), `landed_by` naming the hub
        process (its client id); StoreUnavailable if it did not commit (nothing of it did)."""
        unique = list({row.id: row for row in rows}.values())
        if not unique:
            return LandResult(0, 0)
        try:
            await self.ensure_partitions(received_at)
            async with self._pool.acquire() as conn, conn.transaction():
                landed = await self._land_on(conn, unique, received_at, landed_by)
        except _DB_ERRORS as error:
            raise StoreUnavailable(f"landing {len(unique)} event(s) failed: {error}") from error
        return LandResult(landed, len(rows) - landed)

    async def _land_on(
        self,
        conn: asyncpg.Connection,
        rows: list[LandingRow],
        received_at: datetime,
        landed_by: str,
    ) -> int:
        # 1. The batch into this connection's staging table (binary COPY of the rows as they
        #    are: no per-row statement, no tuple or array per column), then, in one statement,
        #    each new id claimed in `event_ids` in id order (two batches that share ids wait
        #    for each other in one order: no deadlock) and the new ones' `events` rows.
        await conn.copy_records_to_table(
            "landing_stage", columns=_STAGE_COLUMNS, records=[row[:_STAGED] for row in rows]
        )
        new_ids = {
            str(record[0]) for record in await conn.fetch(_LAND_STAGED, received_at, landed_by)
        }
        # 3. The agents' rows locked (made first if new), then their coverage and counters.
        agents = sorted({(row.site, row.agent) for row in rows})
        await self._lock_agents(conn, agents)
        by_agent: dict[AgentKey, list[LandingRow]] = {agent: [] for agent in agents}
        repeats: dict[AgentKey, int] = dict.fromkeys(agents, 0)
        for row in rows:
            if row.id in new_ids:
                by_agent[(row.site, row.agent)].append(row)
            else:
                repeats[(row.site, row.agent)] += 1
        updates: list[tuple[str, str, int, datetime | None, datetime | None, int]] = []
        lost: list[tuple[str, str, int, int, str, datetime]] = []
        for agent in agents:
            agent_rows = by_agent[agent]
            if agent_rows:
                await self._merge_held(conn, *agent, runs(row.seq for row in agent_rows))
                times = [row.time for row in agent_rows if row.time is not None]
                updates.append((*agent, max(row.seq for row in agent_rows), received_at,
                                max(times) if times else None, repeats[agent]))
                lost.extend(
                    (*agent, first, last, row.overflow_detail, received_at)
                    for row in agent_rows for first, last in row.evicted
                )
            else:
                updates.append((*agent, 0, None, None, repeats[agent]))
        await conn.execute(
            _UPDATE_AGENTS,
            [u[0] for u in updates], [u[1] for u in updates], [u[2] for u in updates],
            [u[3] for u in updates], [u[4] for u in updates], [u[5] for u in updates],
        )
        if lost:
            await conn.executemany(
                "INSERT INTO seq_lost (site, agent, first_seq, last_seq, reason, detail, "
                "recorded_at) VALUES ($1, $2, $3, $4, 'evicted', $5, $6) "
                "ON CONFLICT DO NOTHING",
                lost,
            )
        return len(new_ids)

    @staticmethod
    async def _lock_agents(conn: asyncpg.Connection, agents: list[AgentKey]) -> None:
        """Lock the agents' `hub_agents` rows (FOR UPDATE, in (site, agent) order), making
        the rows of agents not seen before."""
        sites, names = [a[0] for a in agents], [a[1] for a in agents]
        locked = await conn.fetch(_LOCK_AGENTS, sites, names)
        if len(locked) == len(agents):
            return
        await conn.execute(
            "INSERT INTO hub_agents (site, agent) SELECT * FROM unnest($1::text[], $2::text[]) "
            "ORDER BY 1, 2 ON CONFLICT DO NOTHING",
            sites, names,
        )
        await conn.fetch(_LOCK_AGENTS, sites, names)

    @staticmethod
    async def _merge_held(
        conn: asyncpg.Connection, site: str, agent: str, new: list[Range]
    ) -> None:
        """Merge `new` runs into the agent's `seq_held` (its hub_agents row is locked)."""
        low, high = new[0][0], new[-1][1]
        touching = await conn.fetch(
            "DELETE FROM seq_held WHERE site = $1 AND agent = $2 AND last_seq >= $3 - 1 "
            "AND first_seq <= $4 + 1 RETURNING first_seq, last_seq",
            site, agent, low, high,
        )
        ranges = merged([*new, *((r["first_seq"], r["last_seq"]) for r in touching)])
        await conn.executemany(
            "INSERT INTO seq_held (site, agent, first_seq, last_seq) VALUES ($1, $2, $3, $4)",
            [(site, agent, first, last) for first, last in ranges],
        )

    async def reject(self, topic: str, reason: str, payload: bytes, received_at: datetime) -> None:
        """Keep a message no event could be read from, with the reason (a poison message: it
        is acknowledged once this committed, so it does not come back)."""
        try:
            await self._pool.execute(
                "INSERT INTO rejected_messages (received_at, topic, reason, payload) "
                "VALUES ($1, $2, $3, $4)",
                received_at, topic, reason[:1000], payload[:_MAX_REJECTED_PAYLOAD],
            )
        except _DB_ERRORS as error:
            raise StoreUnavailable(f"recording a rejected message failed: {error}") from error

    # -- coverage, read by `hub.gaps` and the operator -----------------------------------------

    async def agents(self, conn: asyncpg.Connection | None = None) -> list[tuple[AgentKey, int]]:
        """Every agent seen, with its highest seq landed (on `conn` if given: module
        docstring)."""
        rows = await (conn or self._pool).fetch(
            "SELECT site, agent, max_seq FROM hub_agents ORDER BY 1, 2"
        )
        return [((row["site"], row["agent"]), int(row["max_seq"])) for row in rows]

    async def held(
        self, site: str, agent: str, conn: asyncpg.Connection | None = None
    ) -> list[Range]:
        rows = await (conn or self._pool).fetch(
            "SELECT first_seq, last_seq FROM seq_held WHERE site = $1 AND agent = $2 "
            "ORDER BY first_seq", site, agent,
        )
        return [(int(row["first_seq"]), int(row["last_seq"])) for row in rows]

    async def lost(
        self, site: str, agent: str, conn: asyncpg.Connection | None = None
    ) -> list[tuple[int, int, str, str]]:
        """The agent's lost ranges: (first, last, reason, detail)."""
        rows = await (conn or self._pool).fetch(
            "SELECT first_seq, last_seq, reason, detail FROM seq_lost WHERE site = $1 AND "
            "agent = $2 ORDER BY first_seq", site, agent,
        )
        return [
            (int(row["first_seq"]), int(row["last_seq"]), row["reason"], row["detail"])
            for row in rows
        ]

    async def record_lost(
        self, site: str, agent: str, span: Range, reason: str, detail: str
    ) -> None:
        await self._pool.execute(
            "INSERT INTO seq_lost (site, agent, first_seq, last_seq, reason, detail) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            site, agent, span[0], span[1], reason, detail,
        )

    async def rebuild_held(self, site: str, agent: str) -> None:
        """Recompute the agent's `seq_held` from `event_ids` (after rows were deleted by hand,
        e.g. events removed to be landed again by replay)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.fetch(_LOCK_AGENTS, [site], [agent])
            await conn.execute("DELETE FROM seq_held WHERE site = $1 AND agent = $2", site, agent)
            await conn.execute(
                "INSERT INTO seq_held (site, agent, first_seq, last_seq) "
                "SELECT $1, $2, min(seq), max(seq) FROM ("
                "  SELECT seq, seq - row_number() OVER (ORDER BY seq) AS run FROM ("
                "    SELECT DISTINCT seq FROM event_ids WHERE site = $1 AND agent = $2) s"
                ") r GROUP BY run",
                site, agent,
            )

    @property
    def pool(self) -> asyncpg.Pool:
        """The pool, for `hub.gaps` (its own tables) and the operator's queries."""
        return self._pool


# msgspec's encoder: six times faster than the standard library's here (bench/hub_landing.py:
# 4.3 -> 0.65 µs per event), compact, UTF-8, and NaN/Infinity become null (jsonb refuses them:
# with json.dumps one such value made PostgreSQL refuse its whole batch, again and again). What
# it has no type for (an exotic msgpack extension) goes through the standard encoder, as text.
_JSON = msgspec.json.Encoder()
_JSON_ANY = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, default=str, allow_nan=False
)


async def _make_stage(conn: asyncpg.Connection) -> None:
    """A new pooled connection's staging table (`land`)."""
    await conn.execute(_MAKE_STAGE)


def envelope_json(event: dict[str, Any]) -> str:
    """An event map as the JSON text of `events.envelope` (NUL is the one thing jsonb refuses:
    a ValueError, so the event is rejected with that reason)."""
    try:
        text = _JSON.encode(event).decode()
    except (TypeError, msgspec.EncodeError):
        text = _JSON_ANY.encode(event)  # ValueError on NaN: the event is rejected
    if "\\u0000" in text:
        raise ValueError("the event holds a NUL character, which PostgreSQL jsonb cannot store")
    return text
