"""Remote commands against a real broker: the agent runs in the test's loop with a real asyncua
plant; an independent paho client at the "hub" sends requests (good ones and garbage)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from agent import store
from agent.cli import remote as remote_cli
from agent.demo.plant import FILLER_TEMPERATURE, FillingLinePlant
from agent.link.signing import RequestSigner, create_key_pair
from agent.runtime import Agent
from buffer.base import Record
from buffer.sqlite import SqliteBuffer
from config.loader import load_config
from events.kinds import Priority
from testkit.broker import MosquittoBroker, Subscriber
from testkit.commands import Requester
from testkit.events import EVENTS_TOPIC, decode_events
from testkit.plant import agent_config_text

TARGET = "plant-a/edge-01"


def commands_section(keys: Path, *, extra: str = "") -> str:
    return f"""
[commands]
max_skew_s = 30
rate_per_s = 50
burst = 50
queue_size = 16
{extra}

[commands.keys]
ops = "{keys / 'ops.pub.pem'}"
viewer = "{keys / 'viewer.pub.pem'}"

[commands.allow]
replay = ["ops"]
reload = ["ops"]
pause = ["ops"]
resume = ["ops"]
"""


def write_config(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant, extra: str = ""
) -> Path:
    keys = tmp_path / "keys"
    if not keys.exists():
        for name in ("ops", "viewer", "stranger"):
            create_key_pair(keys, name)
    path = tmp_path / "agent.toml"
    path.write_text(
        agent_config_text(hub_url=broker.url, opcua_port=plant.port, state_dir=tmp_path / "state")
        + commands_section(keys, extra=extra)
    )
    return path


def signer(tmp_path: Path, name: str = "ops", key_id: str | None = None) -> RequestSigner:
    return RequestSigner.from_file(tmp_path / "keys" / f"{name}.key.pem", key_id)


@asynccontextmanager
async def running_agent(config_file: Path) -> AsyncIterator[Agent]:
    config = load_config(config_file)
    stop = asyncio.Event()
    async with Agent.open(config, config_file) as agent:
        task = asyncio.create_task(agent.run(stop))
        try:
            await until(lambda: agent.sources[0].connector.health.connected, "source connected")
            await until(lambda: agent.session.connected, "hub connected")
            yield agent
        finally:
            stop.set()
            await asyncio.wait_for(task, timeout=30)


async def until(condition: Callable[[], bool], what: str, limit_s: float = 15.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for: {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def producing(plant: FillingLinePlant) -> AsyncIterator[None]:
    """The line keeps writing temperatures, so events keep flowing."""

    async def produce() -> None:
        value = 60.0
        while True:
            value += 0.01
            await plant.write(FILLER_TEMPERATURE, value)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(produce())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def still_forwarding(subscriber: Subscriber, after_seq: int) -> int:
    """Wait until an event with a seq above `after_seq` reached the hub; return the max seq."""
    def newest() -> int:
        return max((event["seq"] for event in decode_events(subscriber.messages)), default=0)

    await until(lambda: newest() > after_seq, f"an event after seq {after_seq}")
    return newest()


async def test_read_only_commands_answer_on_the_response_topic(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    with Requester(broker) as hub:
        async with running_agent(write_config(tmp_path, broker, plant)):
            correlation = hub.send("ping")
            ping = await asyncio.to_thread(hub.answer, correlation)
            status = await hub.ask_async("status")
            sources = await hub.ask_async("sources", {"args": {}})
            buffer = await hub.ask_async("buffer")
            config = await hub.ask_async("config")

    assert ping["ok"] is True and ping["command"] == "ping" and ping["agent"] == TARGET
    assert ping["result"]["pong"] is True
    assert hub.content_types[correlation] == "application/json"

    result = status["result"]
    assert result["state"] == "online" and result["site"] == "plant-a"
    assert len(result["config_fingerprint"]) == 16
    assert result["sources"]["line1"]["connected"] is True
    assert set(result["buffer"]["classes"]) == {"telemetry", "business", "critical"}
    assert {"connected", "last_puback_at", "events_per_s"} <= set(result["forwarder"])
    assert sources["result"]["line1"]["state"] == "running"
    assert buffer["result"]["last_seq"] >= 1
    assert config["result"]["agent"]["site"] == "plant-a"
    assert config["result"]["commands"]["allow"]["pause"] == ["ops"]


async def test_buffer_and_status_show_each_class_backlog_and_its_oldest_age(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    # A backlog from before this connection (paced to a trickle, so it stays pending) in two
    # classes, accepted at known times; live events keep flowing beside it.
    config_file = write_config(tmp_path, broker, plant)
    text = config_file.read_text()
    assert text.count("retention_s = 3600\n") == 1
    config_file.write_text(text.replace(
        "retention_s = 3600\n",
        "retention_s = 3600\nbacklog_max_rate = 0.0001\nbacklog_jitter = 0\n"
        "backlog_start_delay_max_s = 0\n",
    ))
    now = time.time()
    for priority, count, age in ((Priority.TELEMETRY, 3, 100.0), (Priority.BUSINESS, 2, 10.0)):

        def accepted_clock(age: float = age) -> float:
            return now - age

        async with SqliteBuffer.open(
            store.buffer_file(load_config(config_file)), clock=accepted_clock
        ) as seeded:
            await seeded.append([
                Record(f"seeded-{priority}-{n}", "telemetry.v1", priority, b"\x80")
                for n in range(count)
            ])
    with Requester(broker) as hub, Subscriber(broker, EVENTS_TOPIC) as events:
        async with running_agent(config_file), producing(plant):
            await still_forwarding(events, after_seq=5)  # live events, after the backlog
            buffer = await hub.ask_async("buffer")
            status = await hub.ask_async("status")

    assert buffer["ok"] is True, buffer
    for answer in (buffer["result"], status["result"]["buffer"]):
        classes = answer["classes"]
        assert set(classes) == {"telemetry", "business", "critical"}
        # The seeded backlog, and perhaps a live event not acked yet.
        assert classes["telemetry"]["pending"] >= 3 and classes["business"]["pending"] >= 2
        telemetry_age = classes["telemetry"]["oldest_pending_age_s"]
        business_age = classes["business"]["oldest_pending_age_s"]
        assert telemetry_age >= 100.0 and 10.0 <= business_age < telemetry_age
        assert classes["critical"]["oldest_pending_age_s"] is None
        assert classes["critical"]["pending"] == classes["critical"]["evictions"] == 0
        assert answer["oldest_pending_age_s"] == telemetry_age  # the oldest of all classes
    table = remote_cli._render_buffer(buffer["result"])
    assert "OLDEST PENDING" in table.splitlines()[0]
    assert [line.split()[0] for line in table.splitlines()[1:4]] == [
        "telemetry", "business", "critical"
    ]


async def test_bad_requests_are_refused_with_a_reason_while_events_keep_flowing(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    config = write_config(tmp_path, broker, plant)
    ops, stranger = signer(tmp_path), signer(tmp_path, "stranger")
    with Subscriber(broker, EVENTS_TOPIC) as subscriber, Requester(broker) as hub:
        async with producing(plant), running_agent(config) as agent:
            seq = await still_forwarding(subscriber, 0)
            good = ops.sign("resume", {"source": "line1"}, target=TARGET)
            cases: list[tuple[str, Any, str]] = [
                ("resume", {"args": {"source": "line1"}}, "unsigned"),
                ("resume", stranger.sign("resume", {"source": "line1"}, target=TARGET),
                 "unknown_key"),
                ("resume", signer(tmp_path, "viewer").sign("resume", {"source": "line1"},
                                                           target=TARGET), "key_not_allowed"),
                ("resume", signer(tmp_path, "stranger", "ops").sign(
                    "resume", {"source": "line1"}, target=TARGET), "bad_signature"),
                ("resume", ops.sign("resume", {"source": "line1"}, target="plant-a/edge-02"),
                 "bad_signature"),
                ("resume", ops.sign("resume", {"source": "line1"}, target=TARGET,
                                    now=time.time() - 3600), "stale"),
                ("resume", {**good, "args": {"source": "line2"}}, "bad_signature"),
                ("resume", good, "ok"),
                ("resume", good, "replayed"),
                ("status", os.urandom(512), "malformed"),
                ("status", b"\xff\xfe garbage", "malformed"),
                ("status", b"[" * 10_000, "malformed"),
                ("status", b"x" * 1_000_000, "too_large"),
                ("status", [1, 2, 3], "malformed"),
                ("status", {"args": 5}, "malformed"),
                ("status", {"verb": "status"}, "malformed"),
                ("status", {"args": {"verbose": True}}, "bad_args"),
                ("pause", ops.sign("pause", {"source": 5}, target=TARGET), "bad_args"),
                ("pause", ops.sign("pause", {"source": "nope"}, target=TARGET), "bad_args"),
                ("pause", {**ops.sign("pause", {"source": "line1"}, target=TARGET), "ts": "now"},
                 "malformed"),
                ("explode", b"", "unknown_command"),
            ]
            answers = []
            for command, payload, _expected in cases:
                answers.append(await hub.ask_async(command, payload))
            # No response topic: nothing can be answered; counted.
            hub.send("ping", response_topic=None)
            # The agent forwarded all along and still answers.
            seq = await still_forwarding(subscriber, seq)
            status = (await hub.ask_async("status"))["result"]
            assert agent.sources[0].state == "running"

    for (command, _payload, expected), answer in zip(cases, answers, strict=True):
        if expected == "ok":
            assert answer["ok"] is True, answer
            continue
        assert answer["ok"] is False, (command, expected, answer)
        assert answer["error"]["reason"] == expected, (expected, answer)
        assert answer["error"]["message"], answer
    refused = status["commands"]["refused_total"]
    for reason in {expected for *_, expected in cases} - {"ok"}:
        assert refused.get(reason, 0) >= 1, (reason, refused)
    assert refused["no_response_topic"] == 1
    messages = {answer["error"]["message"] for answer in answers if not answer["ok"]}
    assert any("1000000 bytes" in message for message in messages)
    assert any("args.source" in message for message in messages)


async def test_a_flood_of_requests_does_not_starve_forwarding(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    extra = "max_request_bytes = 4096"
    with Subscriber(broker, EVENTS_TOPIC) as subscriber, Requester(broker) as hub:
        async with producing(plant), running_agent(write_config(tmp_path, broker, plant, extra)):
            seq = await still_forwarding(subscriber, 0)
            for _ in range(2000):
                hub.send("status", os.urandom(64))
            seq = await still_forwarding(subscriber, seq)
            await still_forwarding(subscriber, seq)
            # Once the flood is worked off, the agent answers again.
            deadline = time.monotonic() + 20
            while True:
                try:
                    status = (await hub.ask_async("status", timeout=2.0))["result"]
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, "no answer after the flood"
    refused = status["commands"]["refused_total"]
    assert refused.get("overloaded", 0) > 0, refused
    assert refused.get("malformed", 0) > 0, refused


async def test_signed_pause_resume_and_status_on_change(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    config = write_config(tmp_path, broker, plant)
    ops = signer(tmp_path)
    with Subscriber(broker, "mfg/plant-a/edge-01/status") as statuses, Requester(broker) as hub:
        async with producing(plant), running_agent(config) as agent:
            paused = await hub.ask_async("pause", ops.sign("pause", {"source": "line1"},
                                                           target=TARGET))
            assert paused["ok"] is True and paused["result"]["state"] == "paused", paused
            await until(lambda: not agent.sources[0].connector.health.connected, "disconnected")
            # The retained status tells the hub at once (not at the 30 s interval).
            def paused_status() -> bool:
                return any(
                    json.loads(m.payload).get("sources", {}).get("line1", {}).get("state")
                    == "paused"
                    for m in statuses.messages
                )
            await until(paused_status, "a status saying paused")
            readings = agent.sources[0].connector.health.readings_total
            await asyncio.sleep(0.5)  # the line writes ten values meanwhile
            assert agent.sources[0].connector.health.readings_total == readings
            again = await hub.ask_async("pause", ops.sign("pause", {"source": "line1"},
                                                          target=TARGET))
            assert again["result"]["changed"] is False
            resumed = await hub.ask_async("resume", ops.sign("resume", {"source": "line1"},
                                                             target=TARGET))
            assert resumed["ok"] is True and resumed["result"]["changed"] is True
            await until(lambda: agent.sources[0].connector.health.readings_total > readings,
                        "readings after resume")
            assert agent.sources[0].state == "running"


async def test_signed_reload_refuses_an_invalid_file_and_applies_a_valid_one(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    config_file = write_config(tmp_path, broker, plant)
    ops = signer(tmp_path)
    good_text = config_file.read_text()
    with Requester(broker) as hub:
        async with running_agent(config_file) as agent:
            fingerprint = agent.config_fingerprint
            config_file.write_text(good_text.replace("max_skew_s = 30", "max_skew_s = -1"))
            refused = await hub.ask_async("reload", ops.sign("reload", {}, target=TARGET))
            assert refused["ok"] is False
            assert refused["error"]["reason"] == "invalid_config"
            assert "commands.max_skew_s" in refused["error"]["message"]
            assert agent.config_fingerprint == fingerprint  # running config kept
            # Allow the viewer key to pause: applied at once, no restart.
            config_file.write_text(good_text.replace('pause = ["ops"]', 'pause = ["viewer"]'))
            applied = await hub.ask_async("reload", ops.sign("reload", {}, target=TARGET))
            assert applied["ok"] is True, applied
            assert "applied: commands" in applied["result"]["message"]
            assert applied["result"]["config_fingerprint"] != fingerprint
            viewer = signer(tmp_path, "viewer")
            paused = await hub.ask_async("pause", viewer.sign("pause", {"source": "line1"},
                                                              target=TARGET))
            assert paused["ok"] is True, paused
            by_ops = await hub.ask_async("resume", ops.sign("resume", {"source": "line1"},
                                                            target=TARGET))
            assert by_ops["ok"] is True


async def test_signed_replay_sends_delivered_events_again(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    config = write_config(tmp_path, broker, plant)
    ops = signer(tmp_path)
    since = time.time() - 5
    with Subscriber(broker, EVENTS_TOPIC) as subscriber, Requester(broker) as hub:
        async with running_agent(config) as agent:
            for value in (61.0, 62.0, 63.0):
                await plant.write(FILLER_TEMPERATURE, value)
                await asyncio.sleep(0.1)
            await until(lambda: agent.forwarder.counters.events_forwarded_total >= 6, "delivered")
            await until(lambda: len(decode_events(subscriber.messages)) >= 6, "at the hub")
            first = decode_events(subscriber.messages)
            subscriber.clear()
            from datetime import UTC, datetime
            args = {"since": datetime.fromtimestamp(since, UTC).isoformat(),
                    "types": ["telemetry"]}
            answer = await hub.ask_async("replay", ops.sign("replay", args, target=TARGET))
            assert answer["ok"] is True, answer
            telemetry = [e for e in first if e["type"] == "telemetry.v1"]
            assert answer["result"]["replayed"] == len(telemetry)
            await until(lambda: len(decode_events(subscriber.messages)) >= len(telemetry),
                        "replayed events at the hub")
            replayed = decode_events(subscriber.messages)
            marked = [("replay", "true") in (getattr(m.properties, "UserProperty", None) or [])
                      for m in subscriber.messages]
            bad = await hub.ask_async("replay", ops.sign(
                "replay", {"since": "yesterday"}, target=TARGET))
    assert {(e["id"], e["seq"]) for e in replayed} == {(e["id"], e["seq"]) for e in telemetry}
    assert marked and all(marked)
    assert bad["ok"] is False and bad["error"]["reason"] == "bad_args"
    assert "args.since" in bad["error"]["message"]
