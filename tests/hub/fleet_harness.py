"""What the fleet scenario adds to tests/hub/harness.py: agents of other sites and ids (one
behind a blackhole proxy, one with a buffer too small for an outage, so it evicts), signed
pauses to any of them, and the per-agent checks generalised: coverage, completeness and
exactly-once, with evicted seqs taken from the agent's own `agent.buffer.overflow` events.
Every wait is on a condition, bounded."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.link.signing import RequestSigner
from hub.ranges import Range, complement, merged, runs
from testkit.broker import MosquittoBroker
from testkit.commands import Requester
from tests.hub.harness import buffer_state, fetch, wait_until

OVERFLOW_TYPE = "agent.buffer.overflow.v1"


@dataclass(frozen=True)
class FleetAgent:
    """One agent of the fleet: its identity and its config file."""

    site: str
    agent: str
    config: Path

    @property
    def key(self) -> tuple[str, str]:
        return self.site, self.agent

    def __str__(self) -> str:
        return f"{self.site}/{self.agent}"


def fleet_agent_config(
    home: Path,
    broker_url: str,
    public_key: Path,
    site: str,
    agent: str,
    *,
    telemetry: bool = False,
    max_bytes: str | None = None,
    rate_hz: int = 100,
) -> FleetAgent:
    """An agent with one simulated signal at `rate_hz` (a production count, or with
    `telemetry` a sine as `telemetry` events, the class a full buffer evicts), publishing to
    `broker_url` (the broker or a proxy in front of it), allowing the hub's key for `replay`
    and `pause`. `max_bytes`: the buffer's cap on undelivered events (`[buffer] max_bytes`)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "agent.toml"
    cap = "" if max_bytes is None else f'max_bytes = "{max_bytes}"\n'
    signal = (
        'node = "temperature"\n  waveform = "sine"\n  event = "telemetry"\n  unit = "Cel"'
        if telemetry else 'node = "counter"\n  event = "production.count"'
    )
    path.write_text(f"""
[agent]
site = "{site}"
id = "{agent}"
state_dir = "{home / 'state'}"
shutdown_grace_s = 5

[hub]
url = "{broker_url}"
topic_prefix = "mfg"
reconnect_min_s = 0.2
reconnect_max_s = 1.0
batch_max_events = 10
batch_max_wait_ms = 10
# Statuses (and status.json snapshots) every few seconds, evictions and all: an evicting
# agent once died at its snapshot (tests/e2e/test_status_after_eviction.py).
status_interval_s = 3

[buffer]
retention_s = 3600
{cap}
[commands.keys]
hub = "{public_key}"

[commands.allow]
replay = ["hub"]
pause = ["hub"]

[[sources]]
name = "sim"
type = "simulated"
rate_hz = {rate_hz}

  [[sources.signals]]
  {signal}
  asset = "line1/filler"
  name = "good"
""")
    return FleetAgent(site, agent, path)


async def pause(broker: MosquittoBroker, private_key: Path, agent: FleetAgent) -> None:
    """The signed `pause` of the agent's simulated source: it accepts nothing more and
    forwards what it accepted. The agent answers its commands one at a time, so after a
    fault that left many small gaps the pause waits behind the hub's replay requests."""
    body = RequestSigner.from_file(private_key).sign(
        "pause", {"source": "sim"}, target=f"{agent.site}/{agent.agent}"
    )
    with Requester(broker, f"mfg/{agent.site}/{agent.agent}") as requester:
        answer = await requester.ask_async("pause", body, timeout=45)
    assert answer["ok"], f"{agent}: pause refused: {answer}"


async def pause_all(broker: MosquittoBroker, private_key: Path, agents: list[FleetAgent]) -> None:
    await asyncio.gather(*(pause(broker, private_key, agent) for agent in agents))


def overflow_events_in_buffer(agent: FleetAgent) -> int:
    """How many `agent.buffer.overflow` events the agent's buffer holds (read-only)."""
    path = agent.config.parent / "state" / "buffer.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        (count,) = db.execute(
            "SELECT count(*) FROM events WHERE kind LIKE 'agent.buffer.overflow%'"
        ).fetchone()
    finally:
        db.close()
    return int(count)


async def accepted(agent: FleetAgent) -> int:
    """The agent's last seq (0 before its buffer exists)."""
    path = agent.config.parent / "state" / "buffer.sqlite"
    if not path.exists():
        return 0
    return (await asyncio.to_thread(buffer_state, agent.config))[0]


async def held(url: str, agent: FleetAgent) -> list[Range]:
    rows = await fetch(
        url, "SELECT first_seq, last_seq FROM seq_held WHERE site = $1 AND agent = $2 "
        "ORDER BY first_seq", agent.site, agent.agent,
    )
    return [(row["first_seq"], row["last_seq"]) for row in rows]


async def held_count(url: str, agent: FleetAgent) -> int:
    return sum(last - first + 1 for first, last in await held(url, agent))


async def lost(url: str, agent: FleetAgent) -> list[tuple[int, int, str]]:
    rows = await fetch(
        url, "SELECT first_seq, last_seq, reason FROM seq_lost WHERE site = $1 AND agent = $2 "
        "ORDER BY first_seq, reason", agent.site, agent.agent,
    )
    return [(row["first_seq"], row["last_seq"], row["reason"]) for row in rows]


async def open_gaps(url: str) -> list[Any]:
    return await fetch(url, "SELECT site, agent, first_seq, last_seq, state FROM gaps")


async def declared_evicted(url: str, agent: FleetAgent) -> tuple[list[Range], int]:
    """The seq ranges the agent's landed `agent.buffer.overflow` events declare evicted, and
    the number of events they say were evicted."""
    rows = await fetch(
        url, "SELECT envelope FROM events WHERE site = $1 AND agent = $2 AND type = $3",
        agent.site, agent.agent, OVERFLOW_TYPE,
    )
    ranges: list[Range] = []
    count = 0
    for row in rows:
        data = json.loads(row["envelope"])["data"]
        if data["reason"] == "evicted":
            ranges.extend((first, last) for first, last in data["seq_ranges"])
            count += int(data["count"])
    return merged(ranges), count


async def wait_fleet_complete(
    url: str, agents: list[FleetAgent], timeout: float = 60.0
) -> dict[tuple[str, str], int]:
    """Wait until every agent has nothing pending and the hub accounts for every seq it
    accepted (held or recorded lost) with no gap row left; returns each one's last seq."""
    seen: dict[str, str] = {}

    async def probe() -> dict[tuple[str, str], int] | None:
        result = {}
        done = True
        for agent in agents:
            last_seq, pending = await asyncio.to_thread(buffer_state, agent.config)
            coverage = merged([*await held(url, agent),
                               *((f, t) for f, t, _ in await lost(url, agent))])
            seen[str(agent)] = f"last_seq {last_seq}, pending {pending}, covered {coverage}"
            result[agent.key] = last_seq
            if pending or not last_seq or coverage != [(1, last_seq)]:
                done = False
        gaps = await open_gaps(url)
        seen["gaps"] = str([dict(row) for row in gaps])
        return result if done and not gaps else None

    try:
        return await wait_until(probe, "every agent's accepted events accounted for", timeout)
    except AssertionError as error:
        raise AssertionError(f"{error}: {seen}") from None


async def assert_fleet_exactly_once(url: str, agents: list[FleetAgent],
                                    last_seqs: dict[tuple[str, str], int]) -> None:
    """Per agent: every seq it accepted is in `events` exactly once, except the seqs its own
    overflow events declare evicted; those (and only those) are in `seq_lost` as `evicted`,
    and nothing else is lost (a `gone` answer is allowed only for an evicted seq)."""
    total = 0
    for agent in agents:
        last_seq = last_seqs[agent.key]
        rows = await fetch(
            url, "SELECT seq, id FROM events WHERE site = $1 AND agent = $2 ORDER BY seq",
            agent.site, agent.agent,
        )
        seqs = [row["seq"] for row in rows]
        assert len(seqs) == len(set(seqs)), f"{agent}: a seq landed twice"
        assert len({row["id"] for row in rows}) == len(rows), f"{agent}: an id landed twice"
        evicted, count = await declared_evicted(url, agent)
        assert sum(last - first + 1 for first, last in evicted) == count, (
            f"{agent}: overflow events' seq ranges {evicted} do not add up to their count {count}"
        )
        missing = complement(runs(seqs), 1, last_seq)
        assert all(complement(evicted, first, last) == [] for first, last in missing), (
            f"{agent}: seqs {missing} neither landed nor declared evicted ({evicted})"
        )
        assert not seqs or seqs[-1] <= last_seq, f"{agent}: seq {seqs[-1]} > last {last_seq}"
        recorded = await lost(url, agent)
        assert merged((f, t) for f, t, reason in recorded if reason == "evicted") == evicted, (
            f"{agent}: seq_lost {recorded}, declared evicted {evicted}"
        )
        other = [(f, t, reason) for f, t, reason in recorded if reason != "evicted"]
        assert all(
            reason == "gone" and complement(evicted, f, t) == [] for f, t, reason in other
        ), f"{agent}: lost beyond the declared evictions: {other} (evicted {evicted})"
        total += len(rows)
    (ids,) = await fetch(url, "SELECT count(*) AS n FROM event_ids")
    (events,) = await fetch(url, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM events")
    assert ids["n"] == events["n"] == events["d"] == total
