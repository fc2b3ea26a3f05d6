"""The fleet scenario of issue 17: three agents (three sites) and two hub processes on one
shared subscription, gap healing on; during the flow, one after the other: a blackholed link
with an eviction behind it, a broker restart, a hub SIGKILL, an agent SIGKILL. The table ends
with every event each agent accepted exactly once, every declared loss recorded as `evicted`,
and no gap left open: each healed by replay or recorded lost. Real agents, real mosquitto (no
persistence: a restart forgets every session and every message in flight), real `edge-agent
hub run` processes, real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from testkit.agent_process import AgentProcess
from testkit.blackhole import TcpProxy
from testkit.broker import MosquittoBroker
from tests.hub.fleet_harness import (
    FleetAgent,
    accepted,
    assert_fleet_exactly_once,
    declared_evicted,
    fleet_agent_config,
    held_count,
    lost,
    overflow_events_in_buffer,
    pause_all,
    wait_fleet_complete,
)
from tests.hub.harness import HubProcess, fetch, hub_config, hub_keys, wait_until


async def _landed_more(url: str, agents: list[FleetAgent], since: dict[str, int],
                       by: int) -> bool:
    """Each agent has `by` more events held at the hub than in `since` (its counts then)."""
    for agent in agents:
        if await held_count(url, agent) < since[str(agent)] + by:
            return False
    return True


async def _counts(url: str, agents: list[FleetAgent]) -> dict[str, int]:
    return {str(agent): await held_count(url, agent) for agent in agents}


async def test_three_agents_two_hubs_through_every_fault_land_each_accepted_event_once(
    tmp_path: Path, broker: MosquittoBroker, postgres_url: str
) -> None:
    url = postgres_url
    private, public = hub_keys(tmp_path / "keys")
    hub_configs = [
        hub_config(tmp_path / f"hub-{n}.toml", broker, url, client_id=f"hub-{n}",
                   key_file=private)
        for n in (1, 2)
    ]
    hubs = [HubProcess(config, tmp_path / f"hub-{n}.log") for n, config in enumerate(
        hub_configs, start=1)]
    proxy = TcpProxy(broker.port).start()
    plain = fleet_agent_config(tmp_path / "a", broker.url, public, "plant-a", "edge-01")
    killed = fleet_agent_config(tmp_path / "b", broker.url, public, "plant-b", "edge-02")
    # Behind the proxy, telemetry only, a buffer for about a hundred undelivered events.
    evicting = fleet_agent_config(tmp_path / "c", proxy.url, public, "plant-c", "edge-03",
                                  telemetry=True, max_bytes="24 KiB")
    fleet = [plain, killed, evicting]
    agents = {agent.key: AgentProcess(agent.config, tmp_path / f"{agent.site}.log")
              for agent in fleet}
    restarted: list[HubProcess | AgentProcess] = []
    try:
        for hub in hubs:
            hub.start()
        for hub in hubs:
            hub.wait_log("hub ready")
        for process in agents.values():
            process.start()
        await wait_until(lambda: _landed_more(url, fleet, dict.fromkeys(map(str, fleet), 0),
                                              30), "every agent's first events landed")

        # 1. The evicting agent's link goes silent (no FIN, no RST): it keeps accepting, its
        #    buffer fills past max_bytes and evicts the oldest telemetry, announced by an
        #    agent.buffer.overflow event. Then the link comes back.
        proxy.blackhole()
        await wait_until(lambda: _has_overflow(evicting), "an eviction at plant-c",
                         timeout=30)
        proxy.forward()
        before = await _counts(url, fleet)
        await wait_until(lambda: _landed_more(url, fleet, before, 20),
                         "every agent lands again after the blackhole")

        # 2. The broker restarts: every session and every message in flight is forgotten.
        broker.restart()
        before = await _counts(url, fleet)
        await wait_until(lambda: _landed_more(url, fleet, before, 20),
                         "every agent lands again after the broker restart", timeout=40)

        # 3. A hub is SIGKILLed holding unacknowledged messages: stopped first while the
        #    other lands every agent's events meanwhile (so the broker surely sent the stopped
        #    one its share too), then killed. Its session expires with it: what it held is
        #    gone from the broker (the agents had their PUBACKs), so only a replay heals it.
        hubs[0].pause()
        before = await _counts(url, fleet)
        await wait_until(lambda: _landed_more(url, fleet, before, 20),
                         "the other hub lands every agent's events")
        hubs[0].kill()
        offset = len(hubs[0].log_text())
        again = HubProcess(hub_configs[0], hubs[0].log)
        restarted.append(again)
        again.start()
        again.wait_log("hub ready", after=offset)

        # 4. An agent is SIGKILLed mid-flow and restarted on its buffer.
        agents[killed.key].kill()
        last_before = await accepted(killed)
        agents[killed.key] = AgentProcess(killed.config, tmp_path / f"{killed.site}.log")
        agents[killed.key].start()
        await wait_until(lambda: _accepted_beyond(killed, last_before + 30),
                         "the restarted agent accepts again")

        # The flow stops; everything accepted must be accounted for.
        await pause_all(broker, private, fleet)
        last_seqs = await wait_fleet_complete(url, fleet, timeout=60)
        await assert_fleet_exactly_once(url, fleet, last_seqs)
        evicted, count = await declared_evicted(url, evicting)
        assert evicted and count > 0, "plant-c declared no eviction"
        assert {reason for _, _, reason in await lost(url, evicting)} <= {"evicted", "gone"}
        for agent in (plain, killed):
            assert await lost(url, agent) == [], f"{agent}: something recorded lost"
            assert await held_count(url, agent) == last_seqs[agent.key]
        # The killed hub's share came back by signed replay, landed as replayed.
        replays = await fetch(url, "SELECT count(*) AS n FROM replay_requests WHERE "
                                   "outcome = 'answered' AND replayed > 0")
        assert replays[0]["n"] > 0, "no gap was healed by replay"
        replayed = await fetch(url, "SELECT count(*) AS n FROM events WHERE replayed")
        assert replayed[0]["n"] > 0
        # Both hub processes landed events (the shared subscription shared them).
        landers = await fetch(url, "SELECT DISTINCT landed_by FROM events ORDER BY 1")
        assert [row["landed_by"] for row in landers] == ["hub-1", "hub-2"]
    finally:
        for process in [*agents.values(), *hubs, *restarted]:
            process.ensure_stopped()
        proxy.close()


async def _has_overflow(agent: FleetAgent) -> bool:
    return overflow_events_in_buffer(agent) > 0


async def _accepted_beyond(agent: FleetAgent, seq: int) -> bool:
    return await accepted(agent) > seq
