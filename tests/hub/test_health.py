"""`hub.health` against a real PostgreSQL with rows put in directly: the flags of a fixed `now`
(stale, behind, gapped, offline; expired statuses), flagged agents first, and the figures
(landed, per minute, losses, replays, rejects, duplicates) read from the hub's tables; and
`hub.status`'s reading of every form an agent publishes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types
import pytest

from agent.link.status import REDUCED_FORMS, offline_payload, reduced_status
from hub.health import Thresholds, fleet_json, read_agent, read_fleet
from hub.status import StatusRecorder, make_status_schema, read_status
from hub.store import HubStore
from hub.web import render_agent

THRESHOLDS = Thresholds(stale_after_s=60, behind_s=300, history_hours=1, rate_window_s=300)


@pytest.fixture
async def pool(postgres_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with HubStore.open(postgres_url, pool_size=2) as store:
        await store.ensure_partitions(datetime.now(UTC) - timedelta(days=1))
        await make_status_schema(store.pool)
        await make_status_schema(store.pool)  # idempotent
        yield store.pool


def status_document(
    site: str, agent: str, *, oldest: dict[str, float | None] | None = None,
    pending: int = 0, interval_s: float = 30.0,
) -> dict[str, Any]:
    """A full status document, shaped as `agent.link.status.snapshot` makes it."""
    oldest = oldest or {}
    return {
        "state": "online", "site": site, "agent": agent, "version": "0.1.0",
        "at": datetime.now(UTC).isoformat(), "interval_s": interval_s,
        "sources": {"sim": {"state": "running", "connected": True}},
        "buffer": {
            "pending": pending, "oldest_pending_age_s": max(
                [v for v in oldest.values() if v is not None], default=None),
            "classes": {
                name: {"pending": pending, "oldest_pending_age_s": oldest.get(name),
                       "evictions": 0}
                for name in ("telemetry", "business", "critical")
            },
            "last_seq": 10, "dead_letters": 2, "file_bytes": 4096,
        },
        "forwarder": {"connected": True, "format": "json", "last_puback_at": None},
    }


async def put_agent(
    pool: asyncpg.Pool, site: str, agent: str, *, last_received_at: datetime | None,
    status: dict[str, Any] | None, status_at: datetime | None = None, held: int = 0,
) -> None:
    await pool.execute(
        "INSERT INTO hub_agents (site, agent, max_seq, last_received_at, last_event_time, "
        "duplicates_total) VALUES ($1, $2, $3, $4, $4, 0)",
        site, agent, held, last_received_at,
    )
    if held:
        await pool.execute(
            "INSERT INTO seq_held (site, agent, first_seq, last_seq) VALUES ($1, $2, 1, $3)",
            site, agent, held,
        )
    if status is not None:
        await pool.execute(
            "INSERT INTO agent_status (site, agent, received_at, state, document) "
            "VALUES ($1, $2, $3, $4, $5::jsonb)",
            site, agent, status_at or last_received_at, status["state"], json.dumps(status),
        )


async def test_flags_with_a_fixed_now_and_flagged_agents_first(pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    recent = now - timedelta(seconds=5)
    await put_agent(pool, "p1", "ok", last_received_at=recent,
                    status=status_document("p1", "ok", oldest={"telemetry": 12.0}))
    await put_agent(pool, "p1", "stale", last_received_at=now - timedelta(seconds=61),
                    status=status_document("p1", "stale"), status_at=recent)
    await put_agent(pool, "p2", "behind", last_received_at=recent,
                    status=status_document("p2", "behind", oldest={"business": 301.0}))
    await put_agent(pool, "p2", "gapped", last_received_at=recent,
                    status=status_document("p2", "gapped"))
    await pool.execute(
        "INSERT INTO gaps (site, agent, first_seq, last_seq, opened_at) VALUES "
        "('p2', 'gapped', 5, 9, $1), ('p2', 'gapped', 20, 20, $2)",
        now - timedelta(seconds=40), now - timedelta(seconds=10),
    )
    offline = json.loads(offline_payload("p3", "dead", "connection lost"))
    await put_agent(pool, "p3", "dead", last_received_at=recent, status=offline)
    await put_agent(pool, "p3", "silent", last_received_at=recent, status=None)
    # An online status received 3 intervals and 5 s ago, and a bit more: expired.
    await put_agent(pool, "p3", "expired", last_received_at=recent,
                    status=status_document("p3", "expired", interval_s=10.0),
                    status_at=now - timedelta(seconds=36))
    # A status and no event ever: stale (nothing landed), not offline.
    await pool.execute(
        "INSERT INTO agent_status (site, agent, received_at, state, document) "
        "VALUES ('p0', 'new', $1, 'online', $2::jsonb)",
        recent, json.dumps(status_document("p0", "new")),
    )

    fleet = await read_fleet(pool, now, THRESHOLDS)
    flags = {a.key: a.flags for a in fleet.agents}
    assert flags == {
        "p1/ok": (), "p1/stale": ("stale",), "p2/behind": ("behind",),
        "p2/gapped": ("gapped",), "p3/dead": ("offline",), "p3/silent": ("offline",),
        "p3/expired": ("offline",), "p0/new": ("stale",),
    }
    assert [a.key for a in fleet.agents] == [
        "p0/new", "p1/stale", "p2/behind", "p2/gapped", "p3/dead", "p3/expired", "p3/silent",
        "p1/ok",
    ]
    gapped = next(a for a in fleet.agents if a.key == "p2/gapped")
    assert (gapped.open_gaps, gapped.missing_seqs) == (2, 6)
    assert gapped.gap_ranges == ((5, 9), (20, 20))
    assert gapped.oldest_gap_age_s == 40.0
    dead = next(a for a in fleet.agents if a.key == "p3/dead")
    assert (dead.state, dead.status_reason) == ("offline", "connection lost")

    # The same rows two minutes later: `now` decides, not the clock.
    later = await read_fleet(pool, now + timedelta(seconds=120), THRESHOLDS)
    ok = next(a for a in later.agents if a.key == "p1/ok")
    assert ok.flags == ("stale", "offline")  # no event for 125 s; status past 3 x 30 s + 5 s
    assert later.agents[-1].flags  # every agent is flagged now
    earlier = await read_fleet(pool, now - timedelta(seconds=50), THRESHOLDS)
    assert next(a for a in earlier.agents if a.key == "p1/stale").flags == ()


async def test_the_figures_come_from_the_hubs_tables(pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    site, agent = "plant-a", "edge-01"
    await put_agent(pool, site, agent, last_received_at=now - timedelta(seconds=2),
                    status=status_document(site, agent, pending=7), held=0)
    # 30 events: 10 three minutes ago, 20 a minute ago (seqs 1..30), two of them rejected
    # business records (one with an order number in its data, one in the workorder context).
    rows = []
    for seq in range(1, 31):
        received = now - timedelta(minutes=3 if seq <= 10 else 1)
        kind = "production.count.v1"
        data: dict[str, Any] = {"value": seq}
        envelope: dict[str, Any] = {"id": str(uuid.uuid4()), "data": data}
        if seq == 29:
            kind, data["order"], data["reason"] = "record.rejected.v1", "WO-1001", "unknown SKU"
            data["record_type"], data["location"] = "workorder.completed.v2", "done.csv:7"
        if seq == 30:
            kind, envelope["workorder"] = "record.rejected.v1", "WO-1002"
        rows.append((uuid.uuid4(), site, agent, seq, kind, "opcua://line1", received,
                     json.dumps(envelope)))
    await pool.executemany(
        "INSERT INTO events (id, site, agent, seq, type, source, subject, time, received_at, "
        "replayed, topic, landed_by, envelope) VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $7, "
        "false, 'mfg/plant-a/edge-01/events/x', 'hub-1', $8::jsonb)", rows,
    )
    await pool.execute("UPDATE hub_agents SET duplicates_total = 4, max_seq = 45 "
                       "WHERE site = $1", site)
    await pool.executemany(
        "INSERT INTO seq_held (site, agent, first_seq, last_seq) VALUES ($1, $2, $3, $4)",
        [(site, agent, 1, 30), (site, agent, 41, 45)],
    )
    await pool.executemany(
        "INSERT INTO seq_lost (site, agent, first_seq, last_seq, reason, detail) "
        "VALUES ($1, $2, $3, $4, $5, '')",
        [(site, agent, 31, 35, "evicted"), (site, agent, 36, 36, "gone"),
         (site, agent, 37, 38, "gone")],
    )
    await pool.executemany(
        "INSERT INTO replay_requests (request_id, site, agent, first_seq, last_seq, "
        "requested_at, outcome) VALUES ($1, $2, $3, 36, 40, $4, $5)",
        [(uuid.uuid4(), site, agent, now, outcome)
         for outcome in ("answered", "answered", "no_answer", "refused:not_allowed")],
    )
    await pool.executemany(
        "INSERT INTO rejected_messages (received_at, topic, reason, payload) "
        "VALUES ($1, $2, 'bad', '\\x00')",
        [(now, f"mfg/{site}/{agent}/events/x"), (now, "mfg/plant-b/edge-09/events/y"),
         (now, "elsewhere/a/b/events")],
    )

    fleet = await read_fleet(pool, now, THRESHOLDS)
    (health,) = [a for a in fleet.agents if a.key == f"{site}/{agent}"]
    assert health.landed_total == 35  # seqs held: 1..30 and 41..45
    assert health.landed_per_min == 6.0  # 30 events in the last 5 minutes
    assert health.max_seq == 45 and health.duplicates_total == 4
    assert health.lost == {"evicted": 5, "gone": 3}
    assert health.replays == {"answered": 2, "no_answer": 1, "refused": 1}
    assert health.rejected_messages == 1 and health.rejected_records == 2
    assert fleet.rejected_messages_total == 3
    assert health.backlog == {"telemetry": 7, "business": 7, "critical": 7}
    assert health.dead_letters == 2
    row = fleet_json(fleet)[[a.key for a in fleet.agents].index(f"{site}/{agent}")]
    assert json.loads(json.dumps(row))["lost"] == {"evicted": 5, "gone": 3}

    detail = await read_agent(pool, site, agent, now, THRESHOLDS)
    assert detail is not None
    assert [n for _, n in detail.delivered] == [10, 20]
    assert [m for m, _ in detail.delivered] == [
        (now - timedelta(minutes=m)).replace(second=0) for m in (3, 1)
    ]
    streams = {(s.source, s.type): s.events for s in detail.streams}
    assert streams == {("opcua://line1", "production.count.v1"): 28,
                       ("opcua://line1", "record.rejected.v1"): 2}
    orders = sorted(r["order_number"] for r in detail.rejected_records)
    assert orders == ["WO-1001", "WO-1002"]
    (with_data,) = [r for r in detail.rejected_records if r["order_number"] == "WO-1001"]
    assert (with_data["reason"], with_data["record_type"], with_data["location"]) == (
        "unknown SKU", "workorder.completed.v2", "done.csv:7")
    page = render_agent(detail, 10)
    assert "WO-1001" in page and "unknown SKU" in page and "<svg id='delivered'" in page
    assert page.count("class='bar'") == 2  # two minutes with deliveries
    assert [r["topic"] for r in detail.rejected_messages] == [f"mfg/{site}/{agent}/events/x"]
    assert await read_agent(pool, site, "nobody", now, THRESHOLDS) is None


async def test_statuses_are_kept_latest_first_sampled_once_per_interval(
    pool: asyncpg.Pool,
) -> None:
    recorder = StatusRecorder(pool, topic_prefix="mfg", sample_interval_s=10, keep_hours=1)
    topic = "mfg/plant-a/edge-01/status"
    full = status_document("plant-a", "edge-01", pending=3, oldest={"critical": 4.5})
    base = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
    for form_index, payload in enumerate([
        json.dumps(full).encode(),
        *(json.dumps(reduced_status(full, form, details="x")).encode()
          for form in REDUCED_FORMS),
    ]):
        reading = read_status(topic, payload, "mfg")
        assert reading is not None
        await recorder.record(reading, base + timedelta(seconds=10 * form_index))
    samples = await pool.fetch("SELECT * FROM status_samples ORDER BY at")
    # full, compact, summary carry the backlog per class; minimal does not.
    assert [s["pending_critical"] for s in samples] == [3, 3, 3, None]
    assert [s["oldest_critical_s"] for s in samples] == [4.5, 4.5, 4.5, None]
    assert [s["connected"] for s in samples] == [True, True, True, True]
    # Two statuses in one 10 s bucket: one sample, the later one's values.
    offline = read_status(topic, offline_payload("plant-a", "edge-01", "stopped"), "mfg")
    assert offline is not None
    await recorder.record(offline, base + timedelta(seconds=35))
    samples = await pool.fetch("SELECT state, connected FROM status_samples ORDER BY at")
    assert [tuple(s) for s in samples] == [
        ("online", True), ("online", True), ("online", True), ("offline", False),
    ]
    (state,) = await pool.fetch("SELECT state, document FROM agent_status")
    assert state["state"] == "offline"
    # A cleared retained status removes the agent's row; other topics are not statuses.
    assert read_status("mfg/plant-a/edge-01/events/x", b"{}", "mfg") is None
    assert read_status("other/plant-a/edge-01/status", b"{}", "mfg") is None
    unreadable = read_status(topic, b"not json", "mfg")
    assert unreadable is not None and unreadable.state == "unreadable"
    # Samples past the window are pruned (at 0, 10, 20 s); the one within it stays (35 s).
    await recorder.prune(base + timedelta(hours=1, seconds=25))
    kept = await pool.fetch("SELECT at FROM status_samples ORDER BY at")
    assert [s["at"] for s in kept] == [base + timedelta(seconds=35)]
    indexes = {r["indexname"] for r in await pool.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'events'")}
    assert {"events_received_at_brin", "events_rejected_records"} <= indexes
    cleared = read_status(topic, b"", "mfg")
    assert cleared is not None
    await recorder.record(cleared, base + timedelta(seconds=50))
    assert await pool.fetch("SELECT * FROM agent_status") == []
