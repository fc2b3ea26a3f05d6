"""The real `edge-agent` process with a fast simulated source, broken for real: SIGKILLed at
seeded random moments, its broker SIGKILLed and restarted, a second agent on its state dir, a
corrupt buffer file; and the `edge-agent buffer` commands around it.

Every check is the consumer's: de-duplicate by id, then every accepted event is there exactly
once, `seq` runs 1..last_seq without a gap, and within a lane one source's events of one type
come in `seq` order."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import msgpack

from buffer.base import Record
from buffer.sqlite import ID_TEXT_SQL, SqliteBuffer
from testkit.agent_process import REPO, AgentProcess
from testkit.blackhole import TcpProxy
from testkit.broker import MosquittoBroker, Subscriber
from testkit.durability import (
    EVENTS_TOPIC,
    accepted,
    arrivals,
    check_delivery,
    last_seq,
    simulated_agent_config,
)

SEED = 20261126
RUNNING = "running: 1 source(s)"


def make_agent(tmp_path: Path, hub_url: str, **options: object) -> tuple[AgentProcess, Path]:
    config = tmp_path / "agent.toml"
    config.write_text(
        # `options` are simulated_agent_config keywords (rate_hz, extra_buffer, ...).
        simulated_agent_config(hub_url=hub_url, state_dir=tmp_path / "state", **options)  # type: ignore[arg-type]
    )
    return AgentProcess(config, tmp_path / "agent.log"), tmp_path / "state" / "buffer.sqlite"


def wait_delivered(subscriber: Subscriber, buffer_file: Path, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        held = set(accepted(buffer_file))
        got = {a.event["id"] for a in arrivals(subscriber.messages)}
        if held <= got:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(held - got)} accepted event(s) never reached the hub")
        time.sleep(0.2)


def wait_acked_delivered(
    subscriber: Subscriber, buffer_file: Path, limit_s: float = 15.0
) -> None:
    """Wait until every event the buffer marked delivered (PUBACK) reached the subscriber."""
    deadline = time.monotonic() + limit_s
    while True:
        with sqlite3.connect(f"file:{buffer_file}?mode=ro", uri=True) as db:
            acked = {str(row[0]) for row in db.execute(
                f"SELECT {ID_TEXT_SQL} FROM events WHERE acked_at IS NOT NULL"
            )}
        got = {a.event["id"] for a in arrivals(subscriber.messages)}
        if acked <= got:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(acked - got)} acknowledged event(s) not at the hub")
        time.sleep(0.05)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], cwd=REPO, capture_output=True, text=True,
        timeout=60,
    )


def test_agent_sigkilled_at_20_random_moments_loses_nothing(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    rng = random.Random(SEED)
    agent, buffer_file = make_agent(tmp_path, broker.url, rate_hz=300)
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        try:
            for _kill in range(20):
                offset = len(agent.log_text())
                agent.start()
                agent.wait_log(RUNNING, after=offset, timeout=30)
                time.sleep(rng.uniform(0.0, 0.6))
                agent.kill()
            offset = len(agent.log_text())
            agent.start()
            agent.wait_log(RUNNING, after=offset, timeout=30)
            time.sleep(0.5)
            wait_delivered(subscriber, buffer_file)
            assert agent.terminate() == 0
        finally:
            agent.ensure_stopped()
        report = check_delivery(buffer_file, subscriber.messages)
    assert report.accepted > 1_000, report.describe()
    assert report.ok, report.describe()
    assert report.delivered == report.accepted == last_seq(buffer_file)


def test_broker_sigkilled_and_restarted_repeatedly_loses_nothing(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """The agent reaches the broker through a proxy, so the test can keep it out until the
    hub's subscriber is back after each restart (a broker without persistence forgets it)."""
    rng = random.Random(SEED + 1)
    with TcpProxy(broker.port) as proxy, Subscriber(broker, EVENTS_TOPIC) as subscriber:
        agent, buffer_file = make_agent(tmp_path, proxy.url, rate_hz=300)
        try:
            agent.start()
            agent.wait_log(RUNNING, timeout=30)
            for _restart in range(5):
                time.sleep(rng.uniform(0.3, 1.2))
                proxy.refuse()
                # What the broker acknowledged is the broker's to deliver: a broker SIGKILLed
                # with an acknowledged message still queued for the subscriber loses it (no
                # persistence here), which is not the agent's loss. So the kill comes once the
                # subscriber holds everything the agent saw a PUBACK for.
                wait_acked_delivered(subscriber, buffer_file)
                broker.kill()
                time.sleep(rng.uniform(0.1, 0.8))
                broker.start()
                subscriber.wait_subscribed(15)
                proxy.forward()
            time.sleep(1.0)
            wait_delivered(subscriber, buffer_file)
            assert agent.terminate() == 0
        finally:
            agent.ensure_stopped()
        report = check_delivery(buffer_file, subscriber.messages)
    assert report.ok, report.describe()
    assert report.accepted == last_seq(buffer_file) > 500
    assert any(a.backlog for a in arrivals(subscriber.messages)), "no backlog after outages"


def test_a_second_agent_is_refused_and_the_buffer_commands_work_around_a_running_one(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    agent, buffer_file = make_agent(tmp_path, broker.url)
    second = AgentProcess(agent.config, tmp_path / "second.log")
    try:
        agent.start()
        agent.wait_log(RUNNING, timeout=30)
        second.start()
        deadline = time.monotonic() + 30
        while "is in use by" not in second.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"is in use by process {agent.pid}" in second.log_text(), second.log_text()
        assert second._process is not None and second._process.wait(timeout=30) == 1
        stats = cli("buffer", "stats", "-c", str(agent.config), "--json")
        assert stats.returncode == 0, stats.stderr
        assert f"process {agent.pid}" in stats.stdout and '"last_seq"' in stats.stdout
        replay = cli("buffer", "replay", "-c", str(agent.config), "--since", "1h")
        assert replay.returncode == 1 and f"process {agent.pid}" in replay.stderr
        assert agent.terminate() == 0
    finally:
        agent.ensure_stopped()
        second.ensure_stopped()
    # Stopped: replay republishes what was delivered, same ids and seqs, marked as replays.
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        replay = cli("buffer", "replay", "-c", str(agent.config), "--since", "1h",
                     "--type", "telemetry")
        assert replay.returncode == 0, replay.stderr
        replayed = arrivals(subscriber.wait_for(1, timeout=10))
        held = accepted(buffer_file)
        assert replayed and all(a.replay for a in replayed)
        assert all(a.event["type"] == "telemetry.v1" for a in replayed)
        assert all(held[a.event["id"]][0] == a.event["seq"] for a in replayed)
    letters = cli("buffer", "dead-letters", "-c", str(agent.config))
    assert letters.returncode == 0 and "no dead letters" in letters.stdout


def test_a_corrupt_buffer_is_moved_aside_and_a_fresh_one_continues_the_seq(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    agent, buffer_file = make_agent(tmp_path, broker.url)
    try:
        agent.start()
        agent.wait_log(RUNNING, timeout=30)
        time.sleep(0.5)
        assert agent.terminate() == 0
        before = last_seq(buffer_file)
        # Damage a page in the middle of the file (the header, with last_seq's page, survives).
        with buffer_file.open("r+b") as file:
            size = file.seek(0, 2)
            file.seek(max(4096 * 3, size // 2))
            file.write(b"\xff" * 4096)
        offset = len(agent.log_text())
        agent.start()
        agent.wait_log(RUNNING, after=offset, timeout=30)
        log = agent.log_text()[offset:]
        assert "is corrupt" in log and "moved aside" in log, log
        aside = [
            path
            for path in buffer_file.parent.glob("buffer.sqlite.corrupt-*")
            if not path.name.endswith(("-wal", "-shm"))
        ]
        assert len(aside) == 1 and aside[0].stat().st_size > 0
        time.sleep(0.5)
        assert agent.terminate() == 0
    finally:
        agent.ensure_stopped()
    fresh = sorted(seq for seq, _at in accepted(buffer_file).values())
    assert fresh and fresh[0] == before + 1, (before, fresh[:3])


def test_dead_letters_are_listed_and_retry_sends_them_with_their_own_seq(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """Dead letters made in the buffer file (two given up after acceptance, one reading set
    aside before it), listed by `edge-agent buffer dead-letters`; `--retry` is refused while the
    agent runs, then queues the accepted ones again and the next agent run delivers them."""
    agent, buffer_file = make_agent(tmp_path, broker.url)

    def body(name: str) -> bytes:
        return bytes(msgpack.packb({"id": name, "type": "production.count.v1", "n": name}))

    async def prepare() -> None:
        async with SqliteBuffer.open(buffer_file) as buffer:
            await buffer.append(
                [Record(f"dl-{n}", "production.count.v1", 1, body(f"dl-{n}")) for n in range(5)]
            )
            await buffer.dead_letter([2, 4], "refused by the hub: 0x99 payload format invalid")
            await buffer.set_aside(
                [Record("bad-reading", "agent.reading.unmappable", 0, b"\x80")], "unknown code"
            )

    asyncio.run(prepare())
    listing = cli("buffer", "dead-letters", "-c", str(agent.config))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()[1:]
    assert [line.split("\t")[:2] for line in lines] == [
        ["2", "dl-1"], ["4", "dl-3"], ["-", "bad-reading"]
    ]
    assert "0x99 payload format invalid" in lines[0] and lines[2].endswith("unknown code")
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        try:
            agent.start()
            agent.wait_log(RUNNING, timeout=30)
            refused = cli("buffer", "dead-letters", "-c", str(agent.config), "--retry")
            assert refused.returncode == 1 and f"process {agent.pid}" in refused.stderr
            wait_delivered(subscriber, buffer_file)
            assert agent.terminate() == 0
            delivered = {a.event["id"] for a in arrivals(subscriber.messages)}
            assert {"dl-0", "dl-2", "dl-4"} <= delivered and not {"dl-1", "dl-3"} & delivered
            retry = cli("buffer", "dead-letters", "-c", str(agent.config), "--retry")
            assert retry.returncode == 0, retry.stderr
            assert retry.stdout.startswith("2 dead letter(s) queued again"), retry.stdout
            left = cli("buffer", "dead-letters", "-c", str(agent.config))
            assert [line.split("\t")[1] for line in left.stdout.splitlines()[1:]] == [
                "bad-reading"  # never accepted, not an event: kept for a person, not retried
            ]
            offset = len(agent.log_text())
            agent.start()
            agent.wait_log(RUNNING, after=offset, timeout=30)
            wait_delivered(subscriber, buffer_file)
            assert agent.terminate() == 0
        finally:
            agent.ensure_stopped()
        first = {a.event["id"]: a.event["seq"] for a in reversed(arrivals(subscriber.messages))}
        report = check_delivery(buffer_file, subscriber.messages)
    assert (first["dl-1"], first["dl-3"]) == (2, 4)  # their own seqs: no gap left behind
    # Nothing lost, no gap; the retried ones necessarily arrive after later seqs of their lane.
    assert not (report.lost or report.seq_gaps or report.conflicting), report.describe()
    assert {seq for _lane, _before, seq in report.out_of_order} <= {2, 4}, report.describe()
    assert report.accepted == last_seq(buffer_file)
