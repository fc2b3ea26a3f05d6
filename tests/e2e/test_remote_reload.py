"""A signed remote `reload` of the real `edge-agent run` process takes the SIGHUP path
(`agent.service.daemon` sets `agent.reload_hook`): an invalid file is refused and the running config
kept; a valid changed one restarts the generation with the new config (new fingerprint in the
retained status, the renamed signal in the events at the hub)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from agent.demo.plant import GOOD_COUNT, FillingLinePlant
from agent.link.signing import create_key_pair
from testkit.agent_process import REPO, AgentProcess
from testkit.broker import MosquittoBroker, ReceivedMessage, Subscriber
from testkit.events import EVENTS_TOPIC, decode_events
from testkit.plant import agent_config_text
from tests.e2e.test_service import SUBSCRIBED, wait_until

STATUS_TOPIC = "mfg/plant-a/edge-01/status"


def remote_reload(broker: MosquittoBroker, key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "remote", "reload", "--hub", broker.url,
         "--site", "plant-a", "--agent", "edge-01", "--timeout", "15", "--key", str(key)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )


def online_fingerprints(messages: list[ReceivedMessage]) -> list[str]:
    statuses = [json.loads(m.payload) for m in messages]
    return [s["config_fingerprint"] for s in statuses if s.get("state") == "online"]


async def test_remote_reload_refuses_an_invalid_file_and_applies_a_valid_one_like_sighup(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    keys = tmp_path / "keys"
    create_key_pair(keys, "ops")
    config = tmp_path / "agent.toml"
    good_text = agent_config_text(
        hub_url=broker.url, opcua_port=plant.port, state_dir=tmp_path / "state",
        extra_hub="status_interval_s = 1",
    ) + f"""
[commands.keys]
ops = "{keys / 'ops.pub.pem'}"

[commands.allow]
reload = ["ops"]
"""
    config.write_text(good_text)
    private = keys / "ops.key.pem"
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        with Subscriber(broker, STATUS_TOPIC) as statuses, \
                Subscriber(broker, EVENTS_TOPIC) as events:
            agent.start()
            await asyncio.to_thread(agent.wait_log, SUBSCRIBED)
            await wait_until(lambda: bool(online_fingerprints(statuses.messages)), "online status")
            before = online_fingerprints(statuses.messages)[-1]

            # 1. An invalid file: refused with the reason, the running generation goes on.
            assert good_text.count("topic_prefix = ") == 1
            config.write_text(good_text.replace("topic_prefix = ", "topic_prefx = "))
            offset = len(agent.log_text())
            refused = await asyncio.to_thread(remote_reload, broker, private)
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert "invalid_config" in refused.stderr
            assert "hub.topic_prefx" in refused.stderr
            # 1b. Valid, but it needs a restart: refused by the command, nothing restarted.
            config.write_text(good_text.replace(str(tmp_path / "state"), str(tmp_path / "else")))
            moved = await asyncio.to_thread(remote_reload, broker, private)
            assert moved.returncode == 1, moved.stdout + moved.stderr
            assert "agent.state_dir changed" in moved.stderr
            await plant.write(GOOD_COUNT, 4242)

            def counted(signal: str, count: int) -> bool:
                return any(e["data"].get("signal") == signal and e["data"].get("count") == count
                           for e in decode_events(events.messages))

            await wait_until(lambda: counted("good_count", 4242), "an event after the refusal")
            assert "reload applied" not in agent.log_text()[offset:]
            assert "stopping" not in agent.log_text()[offset:]

            # 2. A valid change: the same path as SIGHUP (new generation, new config).
            assert good_text.count('name = "good_count"') == 1
            config.write_text(good_text.replace('name = "good_count"', 'name = "good"'))
            offset = len(agent.log_text())
            applied = await asyncio.to_thread(remote_reload, broker, private)
            assert applied.returncode == 0, applied.stdout + applied.stderr
            await asyncio.to_thread(agent.wait_log, "reload applied", after=offset)
            assert "reload requested remotely" in agent.log_text()[offset:]
            await asyncio.to_thread(agent.wait_log, SUBSCRIBED, after=offset)
            await wait_until(
                lambda: online_fingerprints(statuses.messages)[-1] != before,
                "a retained status with the new config fingerprint",
            )
            await plant.write(GOOD_COUNT, 4343)
            await wait_until(lambda: counted("good", 4343), "an event of the renamed signal")
            assert await asyncio.to_thread(agent.terminate) == 0
    finally:
        agent.ensure_stopped()
    snapshot = json.loads((tmp_path / "state" / "status.json").read_text())
    assert snapshot["last_reload"]["result"] == "applied"
    assert not (tmp_path / "else").exists()
