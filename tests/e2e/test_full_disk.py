"""The real `edge-agent` process on a really short disk: its state dir is a small tmpfs that a
filler file takes to the last byte while events flow, one that is already full when the agent
starts, and one that is read-only when it starts.

The agent must stay up, lose nothing it accepted, and carry on by itself once the space (or
write access) comes back: the sources resume, every accepted event reaches a real subscriber,
`seq` runs 1..last_seq without a gap, and the buffer is never moved aside.

Mounting needs root (tests run as root in CI); each test skips with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.agent_process import AgentProcess
from testkit.blackhole import TcpProxy
from testkit.broker import MosquittoBroker, Subscriber
from testkit.durability import (
    EVENTS_TOPIC,
    accepted,
    agent_header,
    arrivals,
    check_delivery,
    last_seq,
)
from testkit.short_disk import Filler, free_bytes, remount, small_tmpfs

pytestmark = pytest.mark.e2e

RUNNING = "running: 1 source(s)"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted at tmp_path/state, unmounted at the end."""
    with small_tmpfs(tmp_path / "state") as mount_point:
        yield mount_point


def counter_config(tmp_path: Path, state_dir: Path, hub_url: str) -> Path:
    """A simulated counter (business events: never evicted, so no seq may go missing) at
    200 Hz; no disk reserve, so the buffer meets the real ENOSPC."""
    config = tmp_path / "agent.toml"
    config.write_text(
        agent_header(hub_url=hub_url, state_dir=state_dir, buffer="disk_free_reserve = 0")
        + """
[[sources]]
name = "sim"
type = "simulated"
rate_hz = 200

  [[sources.signals]]
  node = "count"
  waveform = "counter"
  event = "production.count"
  asset = "line1/sim"
"""
    )
    return config


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def read_last_seq(buffer_file: Path) -> int:
    """last_seq as committed, 0 while the file is not there yet."""
    return last_seq(buffer_file) if buffer_file.exists() else 0


def wait_last_seq_above(buffer_file: Path, seq: int, agent: AgentProcess, limit_s: float) -> int:
    deadline = time.monotonic() + limit_s
    while True:
        current = read_last_seq(buffer_file)
        if current > seq:
            return current
        assert alive(agent.pid), f"agent exited:\n{agent.log_text()[-4000:]}"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"last_seq stayed at {current} (wanted > {seq}) for {limit_s} s:\n"
                f"{agent.log_text()[-4000:]}"
            )
        time.sleep(0.1)


def stay_up(agent: AgentProcess, seconds: float, filler: Filler | None = None) -> None:
    """Poll the pid for `seconds` (keeping the disk full with `filler`)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert alive(agent.pid), f"agent exited on a short disk:\n{agent.log_text()[-4000:]}"
        if filler is not None:
            filler.top_up()
        time.sleep(0.1)


# What the agent says when a short disk pauses it: the counters file or the buffer.
PAUSE_LINES = ("DISK SHORT", "BUFFER FULL", "disk full (", "could not record")


def wait_paused(agent: AgentProcess, offset: int, filler: Filler, limit_s: float = 20.0) -> None:
    """Until the log says the agent paused for the disk (keeping it full meanwhile)."""
    deadline = time.monotonic() + limit_s
    while not any(line in agent.log_text()[offset:] for line in PAUSE_LINES):
        assert alive(agent.pid), f"agent exited on a full disk:\n{agent.log_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no pause said:\n{agent.log_text()[-4000:]}"
        filler.top_up()
        time.sleep(0.05)


def wait_delivered(
    subscriber: Subscriber, buffer_file: Path, agent: AgentProcess, limit_s: float = 30.0
) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        held = accepted(buffer_file)  # first: what is accepted after this may be on its way
        got = {arrival.event["id"] for arrival in arrivals(subscriber.messages)}
        missing = sorted(seq for event_id, (seq, _at) in held.items() if event_id not in got)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(missing)} accepted event(s) never reached the hub (seqs {missing[:20]}):"
                f"\n{agent.log_text()[-4000:]}"
            )
        time.sleep(0.2)


def assert_never_moved_aside(state_dir: Path, log: str) -> None:
    assert not list(state_dir.glob("*.corrupt-*")), list(state_dir.iterdir())
    assert "corrupt" not in log, log[-4000:]


def test_a_disk_filled_to_the_last_byte_while_events_flow_pauses_and_resumes(
    tmp_path: Path, small_fs: Path, broker: MosquittoBroker
) -> None:
    buffer_file = small_fs / "buffer.sqlite"
    with TcpProxy(broker.port) as proxy, Subscriber(broker, EVENTS_TOPIC) as subscriber:
        proxy.refuse()  # the hub is down: events pile up in the buffer on the small disk
        agent = AgentProcess(counter_config(tmp_path, small_fs, proxy.url), tmp_path / "agent.log")
        try:
            agent.start()
            agent.wait_log(RUNNING, timeout=30)
            wait_last_seq_above(buffer_file, 200, agent, limit_s=30)
            offset = len(agent.log_text())
            filler = Filler(small_fs)
            filler.top_up()
            assert free_bytes(small_fs) == 0
            wait_paused(agent, offset, filler)
            before_free = read_last_seq(buffer_file)
            stay_up(agent, 4.0, filler)
            said = agent.log_text()[offset:]
            for line in PAUSE_LINES:  # a state change: said once, however long it lasts
                assert said.count(line) <= 1, said[-4000:]
            filler.remove()
            # The sources resume by themselves: new events are accepted again.
            wait_last_seq_above(buffer_file, before_free, agent, limit_s=30)
            agent.wait_log("sources resumed", timeout=20)
            proxy.forward()  # the hub is back: everything accepted goes out
            wait_delivered(subscriber, buffer_file, agent)
            assert agent.terminate() == 0
        finally:
            agent.ensure_stopped()
        report = check_delivery(buffer_file, subscriber.messages)
    assert report.accepted > before_free, report.describe()
    assert report.ok, report.describe()
    assert report.delivered == report.accepted == last_seq(buffer_file)
    assert_never_moved_aside(small_fs, agent.log_text())


def test_an_agent_started_on_a_full_disk_waits_and_starts_when_space_comes_back(
    tmp_path: Path, small_fs: Path, broker: MosquittoBroker
) -> None:
    buffer_file = small_fs / "buffer.sqlite"
    filler = Filler(small_fs)
    filler.top_up()
    assert free_bytes(small_fs) == 0
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        agent = AgentProcess(counter_config(tmp_path, small_fs, broker.url), tmp_path / "agent.log")
        try:
            agent.start()
            agent.wait_log("STATE DIR UNUSABLE", timeout=30)
            stay_up(agent, 3.0, filler)
            assert RUNNING not in agent.log_text()
            filler.remove()
            agent.wait_log(RUNNING, timeout=30)
            wait_last_seq_above(buffer_file, 100, agent, limit_s=30)
            wait_delivered(subscriber, buffer_file, agent)
            assert agent.terminate() == 0
        finally:
            agent.ensure_stopped()
        report = check_delivery(buffer_file, subscriber.messages)
    assert report.ok, report.describe()
    assert_never_moved_aside(small_fs, agent.log_text())


def test_an_agent_on_a_read_only_state_dir_waits_and_resumes_when_it_is_writable(
    tmp_path: Path, small_fs: Path, broker: MosquittoBroker
) -> None:
    """A buffer that holds events already, its file system remounted read-only (Linux refuses
    `remount,ro` while a process has files there open for writing, so the agent is stopped
    for the remount; a running agent sees EROFS only from the kernel's errors=remount-ro).
    Started on it, the agent waits; after `remount,rw` it goes on with the same buffer."""
    buffer_file = small_fs / "buffer.sqlite"
    config = counter_config(tmp_path, small_fs, broker.url)
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        agent = AgentProcess(config, tmp_path / "agent.log")
        try:
            agent.start()
            agent.wait_log(RUNNING, timeout=30)
            wait_last_seq_above(buffer_file, 100, agent, limit_s=30)
            assert agent.terminate() == 0
            before = last_seq(buffer_file)
            remount(small_fs, "ro")
            offset = len(agent.log_text())
            agent.start()
            agent.wait_log("STATE DIR UNUSABLE", after=offset, timeout=30)
            stay_up(agent, 3.0)
            assert RUNNING not in agent.log_text()[offset:]
            remount(small_fs, "rw")
            agent.wait_log(RUNNING, after=offset, timeout=30)
            wait_last_seq_above(buffer_file, before, agent, limit_s=30)
            wait_delivered(subscriber, buffer_file, agent)
            assert agent.terminate() == 0
        finally:
            agent.ensure_stopped()
            with contextlib.suppress(AssertionError):
                remount(small_fs, "rw")
        report = check_delivery(buffer_file, subscriber.messages)
    assert report.ok, report.describe()
    assert report.delivered == report.accepted == last_seq(buffer_file)
    assert_never_moved_aside(small_fs, agent.log_text())
