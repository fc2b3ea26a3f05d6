"""Every format of the wire contract lands exactly once, and a gap in it is healed by a signed
replay in that format: a real agent publishing msgpack batches, JSON batches, CloudEvents
structured or binary mode (`[hub] format`), a real mosquitto, a real `edge-agent hub run`, a
real PostgreSQL (one database per test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from events.formats import FORMATS
from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker
from tests.hub.harness import (
    AGENT,
    SITE,
    HubProcess,
    agent_config,
    assert_exactly_once,
    fetch,
    held,
    hub_config,
    hub_keys,
    pause_source,
    wait_complete,
    wait_until,
)
from tests.hub.test_gaps import forget_at_the_hub


async def _landed_at_least(url: str, count: int) -> bool:
    return bool(await held(url)) and (await held(url))[-1][1] >= count


@pytest.mark.parametrize("wire_format", sorted(FORMATS))
async def test_each_format_lands_exactly_once_and_heals_by_replay(
    tmp_path: Path, broker: MosquittoBroker, postgres_url: str, wire_format: str
) -> None:
    private, public = hub_keys(tmp_path / "keys")
    hub = HubProcess(
        hub_config(tmp_path / "hub.toml", broker, postgres_url, key_file=private),
        tmp_path / "hub.log",
    )
    agent = AgentProcess(
        agent_config(tmp_path / "agent", broker, public, extra_hub=f'format = "{wire_format}"'),
        tmp_path / "agent.log",
    )
    try:
        hub.start()
        hub.wait_log("hub ready")
        agent.start()
        await wait_until(lambda: _landed_at_least(postgres_url, 40), "40 events landed")
        await pause_source(broker, private)
        last_seq = await wait_complete(postgres_url, agent.config)
        await assert_exactly_once(postgres_url, last_seq)
        rows = await fetch(
            postgres_url, "SELECT seq, type, envelope FROM events ORDER BY seq LIMIT 1"
        )
        first = json.loads(rows[0]["envelope"])
        # The envelope as the agent sent it, whatever the format carried it as.
        assert first["specversion"] == "1.0" and first["site"] == SITE
        assert first["agent"] == AGENT and first["seq"] == rows[0]["seq"] == 1
        assert first["type"] == rows[0]["type"] == "production.count.v1"
        assert first["data"]["signal"] == "good" and isinstance(first["data"]["count"], int), first

        await forget_at_the_hub(postgres_url, 5, 9)
        await wait_until(lambda: _healed(postgres_url, last_seq), "the gap 5-9 healed")
        await assert_exactly_once(postgres_url, last_seq)
        replayed = await fetch(postgres_url, "SELECT seq FROM events WHERE replayed AND seq "
                                             "BETWEEN 5 AND 9 ORDER BY seq")
        assert [row["seq"] for row in replayed] == [5, 6, 7, 8, 9]
        rejected = await fetch(postgres_url, "SELECT count(*) AS n FROM rejected_messages")
        assert rejected[0]["n"] == 0
    finally:
        agent.ensure_stopped()
        hub.ensure_stopped()


async def _healed(url: str, last_seq: int) -> bool:
    return await held(url) == [(1, last_seq)]
