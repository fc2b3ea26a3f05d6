"""The hub process on a broker that speaks only MQTT 3.1.1 (docs/hub-guide.md, "On an MQTT 3.1.1
broker"): a real `edge-agent hub run` (`[broker] protocol = "auto"`, which falls back to 3.1.1)
and a real agent (`[hub] protocol = "3.1.1"`) on a private nats-server's MQTT gateway
(testkit/nats_mqtt.py), real PostgreSQL. Events land exactly once, a gap made on purpose is
healed by the hub's signed replay with the reply fields in the request's JSON, the fleet view
(`/api/fleet`) shows the agent, and `edge-agent tail` reads messages that have no Content Type.
The config refuses a shared subscription on 3.1.1, located in the file."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from config.loader import ConfigError
from events.formats import decode_message, sniff_content_type
from hub.config import load_hub_config
from testkit.agent_process import REPO, AgentProcess
from testkit.commands import Requester
from testkit.nats_mqtt import NatsMqttBroker
from tests.hub.dashboard_harness import dashboard_url, get
from tests.hub.harness import (
    AGENT,
    SITE,
    HubProcess,
    agent_config,
    assert_exactly_once,
    buffer_state,
    fetch,
    held,
    hub_keys,
    signed,
    wait_complete,
    wait_until,
)
from tests.hub.test_gaps import forget_at_the_hub, replay_request

ROOT = f"mfg/{SITE}/{AGENT}"


def hub_toml(path: Path, broker: NatsMqttBroker, database_url: str, key_file: Path) -> Path:
    """A hub on "auto" (v5 refused by NATS: 3.1.1), subscribing alone, gaps and the dashboard
    on."""
    path.write_text(f"""
[broker]
url = "{broker.url}"
client_id = "hub-1"
protocol = "auto"
shared_subscription = false
dots_as_levels = true
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[database]
url = "{database_url}"
pool_size = 2

[landing]
batch_max_messages = 50
batch_max_wait_ms = 20

[gaps]
check_interval_s = 0.3
open_after_s = 1
retry_min_s = 1
retry_max_s = 2
reply_timeout_s = 15
key_file = "{key_file}"

[status]
sample_interval_s = 1

[dashboard]
port = 0
""")
    return path


def agent_toml(home: Path, broker: NatsMqttBroker, public_key: Path) -> Path:
    """The hub tests' agent (one simulated counter at 100 events a second, the hub's key
    allowed for replay and pause) on 3.1.1, sending JSON batches (told at the hub by their
    first byte)."""
    return agent_config(home, broker, public_key, extra_hub="""
protocol = "3.1.1"
dots_as_levels = true
max_packet_size = 1048576
format = "cloudevents-batch-json"
status_interval_s = 2
""")


async def _held_beyond(url: str, count: int) -> bool:
    ranges = await held(url)
    return bool(ranges) and ranges[-1][1] > count


async def _held_is(url: str, expected: list[tuple[int, int]]) -> bool:
    return await held(url) == expected


def _tail(broker: NatsMqttBroker, count: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "agent", "tail", "--hub", broker.url, "--protocol", "3.1.1",
            "--site", SITE, "--agent", AGENT, "--count", str(count), "--duration", "30",
            "--json",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_the_hub_process_lands_heals_and_shows_an_agent_on_a_311_broker(
    tmp_path: Path, nats: NatsMqttBroker, postgres_url: str
) -> None:
    private, public = hub_keys(tmp_path / "keys")
    hub = HubProcess(
        hub_toml(tmp_path / "hub.toml", nats, postgres_url, private), tmp_path / "hub.log"
    )
    agent = AgentProcess(agent_toml(tmp_path / "agent", nats, public), tmp_path / "agent.log")
    try:
        hub.start()
        await asyncio.to_thread(hub.wait_log, "hub ready: subscribed to mfg/+/+/events/#")
        base = await asyncio.to_thread(dashboard_url, hub)
        agent.start()
        tailed = await asyncio.to_thread(_tail, nats, 5)
        assert tailed.returncode == 0, tailed.stderr
        lines = [json.loads(line) for line in tailed.stdout.splitlines()]
        assert len(lines) == 5 and {e["type"] for e in lines} == {"production.count.v1"}, lines
        await wait_until(lambda: _held_beyond(postgres_url, 30), "30 events landed")
        with Requester(nats, ROOT, protocol="3.1.1") as requester:
            paused = await requester.ask_async(
                "pause", signed(private, "pause", {"source": "sim"}), timeout=30
            )
        assert paused["ok"], paused
        last_seq = await wait_complete(postgres_url, agent.config, timeout=60)

        await forget_at_the_hub(postgres_url, 10, 19)
        assert await held(postgres_url) == [(1, 9), (20, last_seq)]
        request = await wait_until(
            lambda: replay_request(postgres_url, 10, 19), "the replay of 10-19 answered", 40
        )
        assert request["replayed"] == 10, request
        # The agent answered the 3.1.1 way: the correlation (the request id) in the JSON.
        assert "correlation_data" in json.loads(str(request["answer"])), request
        await wait_until(lambda: _held_is(postgres_url, [(1, last_seq)]), "the gap healed")
        await assert_exactly_once(postgres_url, last_seq)
        replayed = await fetch(
            postgres_url, "SELECT seq FROM events WHERE replayed AND seq BETWEEN 10 AND 19"
        )
        assert sorted(row["seq"] for row in replayed) == list(range(10, 20))
        topics = await fetch(postgres_url, "SELECT DISTINCT topic FROM events")
        assert {row["topic"] for row in topics} == {f"{ROOT}/events/production/count/v1"}

        async def fleet_shows_it() -> dict[str, Any] | None:
            status, _type, body = await get(f"{base}api/fleet")
            assert status == 200, body
            rows = {f"{r['site']}/{r['agent']}": r for r in json.loads(body)["agents"]}
            row = rows.get(f"{SITE}/{AGENT}")
            healed = row is not None and row["max_seq"] == last_seq and not row["open_gaps"]
            return row if healed and row is not None and row["state"] == "online" else None

        row = await wait_until(fleet_shows_it, "the fleet view: online, every seq, no gap")
        assert row["replays"].get("answered", 0) >= 1, row
        assert row["backlog"], row  # from the agent's retained status, read over 3.1.1
        assert agent.terminate() == 0
        assert hub.terminate() == 0
    finally:
        agent.ensure_stopped()
        hub.ensure_stopped()
    hub_log, agent_log = hub.log_text(), agent.log_text()
    assert "hub protocol: MQTT 3.1.1" in hub_log, hub_log[-2000:]
    assert "command replay accepted, signed by key 'hub'" in agent_log
    assert (await asyncio.to_thread(buffer_state, agent.config))[1] == 0


@pytest.mark.parametrize("protocol", ["3.1.1", "auto"])
def test_a_shared_subscription_on_311_is_refused_on_its_line(tmp_path: Path, protocol: str) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(f"""[broker]
url = "mqtt://127.0.0.1:1883"
client_id = "hub-1"
protocol = "{protocol}"

[database]
url = "postgresql://127.0.0.1/hub"
""")
    with pytest.raises(ConfigError) as raised:
        load_hub_config(path)
    text = str(raised.value)
    assert f"{path}:4: broker.protocol:" in text, text
    assert "no shared subscriptions" in text and "shared_subscription = false" in text, text
    path.write_text(path.read_text().replace("[database]", "shared_subscription = false\n\n"
                                             "[database]"))  # fmt: skip
    assert load_hub_config(path).broker.events_filter == "mfg/+/+/events/#"


def test_a_message_without_content_type_is_told_by_its_first_byte() -> None:
    event = {"specversion": "1.0", "id": "x", "type": "t.v1", "seq": 1}
    structured = json.dumps(event).encode()
    batch = json.dumps([event, event]).encode()
    assert sniff_content_type(b" " + structured) == "application/cloudevents+json"
    assert decode_message(structured, None) == [event]
    assert decode_message(batch, None) == [event, event]
    assert sniff_content_type(b"\x91\x80") == "application/cloudevents-batch+msgpack"
