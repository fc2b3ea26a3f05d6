"""Exactly-once landing, end to end: a real `edge-agent run` with a simulated source, a real
mosquitto, real `edge-agent hub run` processes SIGKILLed mid-flow, a real PostgreSQL (one
database per test). The table ends with every accepted event exactly once, none missing."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker
from testkit.commands import Requester
from tests.hub.harness import (
    AGENT,
    SITE,
    HubProcess,
    agent_config,
    assert_exactly_once,
    buffer_state,
    fetch,
    held,
    hub_config,
    hub_keys,
    pause_source,
    signed,
    wait_complete,
    wait_until,
)


async def count_events(url: str, landed_by: str | None = None) -> int:
    if landed_by is None:
        rows = await fetch(url, "SELECT count(*) AS n FROM events")
    else:
        rows = await fetch(url, "SELECT count(*) AS n FROM events WHERE landed_by = $1", landed_by)
    return int(rows[0]["n"])


async def test_a_hub_killed_mid_flow_and_restarted_lands_every_event_exactly_once(
    tmp_path: Path, broker: MosquittoBroker, postgres_url: str
) -> None:
    private, public = hub_keys(tmp_path / "keys")
    # Gap healing off: completeness here comes from the broker's redelivery alone.
    config = hub_config(tmp_path / "hub.toml", broker, postgres_url, session_expiry_s=120)
    hub = HubProcess(config, tmp_path / "hub.log")
    agent = AgentProcess(agent_config(tmp_path / "agent", broker, public), tmp_path / "agent.log")
    restarted = HubProcess(config, tmp_path / "hub.log")
    try:
        hub.start()
        hub.wait_log("hub ready")
        agent.start()
        await wait_until(lambda: count_events(postgres_url), "first events landed")
        # Stopped first, so that it surely holds messages it has not acknowledged; then killed.
        hub.pause()
        hub.kill()
        before = await count_events(postgres_url)
        await wait_until(lambda: _grew(agent.config, before), "the agent accepted more meanwhile")
        offset = len(hub.log_text())
        restarted.start()
        restarted.wait_log("hub ready", after=offset)
        await pause_source(broker, private)
        last_seq = await wait_complete(postgres_url, agent.config)
        await assert_exactly_once(postgres_url, last_seq)
        # A replay of everything is a no-op at the hub: nothing doubled, nothing new.
        duplicates_before = await _duplicates(postgres_url, 0)
        with Requester(broker, f"mfg/{SITE}/{AGENT}") as requester:
            answer = await requester.ask_async("replay", signed(
                private, "replay", {"first_seq": 1, "last_seq": last_seq}
            ), timeout=30)
        assert answer["ok"], answer
        assert answer["result"]["replayed"] == last_seq
        assert answer["result"]["retained"] == [[1, last_seq]]
        await wait_until(
            lambda: _duplicates(postgres_url, (duplicates_before or 0) + last_seq),
            "the replayed events reached the hub",
        )
        await assert_exactly_once(postgres_url, last_seq)
        assert await held(postgres_url) == [(1, last_seq)]
        replayed = await fetch(postgres_url, "SELECT count(*) AS n FROM events WHERE replayed")
        assert replayed[0]["n"] == 0  # every row came by first delivery or redelivery
    finally:
        agent.ensure_stopped()
        hub.ensure_stopped()
        restarted.ensure_stopped()


async def _grew(agent_toml: Path, landed: int) -> bool:
    last_seq, _ = buffer_state(agent_toml)
    return last_seq > landed + 20


async def _duplicates(url: str, at_least: int) -> int | None:
    """The agent's events received again at the hub (redelivered or replayed), if at least
    `at_least` (0 counts as found when `at_least` is 0)."""
    rows = await fetch(url, "SELECT duplicates_total AS n FROM hub_agents")
    total = int(rows[0]["n"]) if rows else 0
    return (total or -1) if total >= at_least else None


async def test_two_hubs_share_the_load_and_the_survivor_of_a_sigkill_lands_the_rest(
    tmp_path: Path, broker: MosquittoBroker, postgres_url: str
) -> None:
    private, public = hub_keys(tmp_path / "keys")
    hubs = [
        HubProcess(
            hub_config(tmp_path / f"hub-{n}.toml", broker, postgres_url, client_id=f"hub-{n}",
                       key_file=private),
            tmp_path / f"hub-{n}.log",
        )
        for n in (1, 2)
    ]
    agent = AgentProcess(agent_config(tmp_path / "agent", broker, public), tmp_path / "agent.log")
    try:
        for hub in hubs:
            hub.start()
        for hub in hubs:
            hub.wait_log("hub ready")
        agent.start()
        for name in ("hub-1", "hub-2"):  # the broker gives each member of the group its share
            await wait_until(partial(_more, postgres_url, name, 1), f"{name} landed events")
        hubs[0].pause()
        hubs[0].kill()
        by_first = await count_events(postgres_url, "hub-1")
        survivor_before = await count_events(postgres_url, "hub-2")
        await wait_until(
            partial(_more, postgres_url, "hub-2", survivor_before + 50),
            "the survivor lands the flow alone",
        )
        await pause_source(broker, private)
        # Whatever was in flight to the killed process died with its session (expiry 0): the
        # survivor sees such gaps and heals them by replay.
        last_seq = await wait_complete(postgres_url, agent.config, timeout=45)
        await assert_exactly_once(postgres_url, last_seq)
        assert await count_events(postgres_url, "hub-1") == by_first
        await wait_until(partial(_no_gaps, postgres_url), "the gap rows are gone")
    finally:
        agent.ensure_stopped()
        for hub in hubs:
            hub.ensure_stopped()


async def _more(url: str, landed_by: str, at_least: int) -> bool:
    return await count_events(url, landed_by) >= at_least


async def _no_gaps(url: str) -> bool:
    rows = await fetch(url, "SELECT count(*) AS n FROM gaps")
    return bool(rows[0]["n"] == 0)
