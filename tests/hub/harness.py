"""What the hub tests share: a real `edge-agent hub run` process, a real `edge-agent run`
agent with a simulated source, signed commands to it, and reads of the hub's database and the
agent's buffer file. Every wait is on a condition, bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types

from agent.link.signing import RequestSigner, create_key_pair
from testkit.agent_process import REPO, AgentProcess
from testkit.broker import MosquittoBroker
from testkit.commands import Requester
from testkit.nats_mqtt import NatsMqttBroker

T = TypeVar("T")
SITE, AGENT = "plant-a", "edge-01"


class HubProcess(AgentProcess):
    """`python -m agent hub run -c CONFIG` (the agent's process wrapper, another command)."""

    def start(self) -> HubProcess:
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "agent", "hub", "run", "-c", str(self.config)],
                cwd=REPO, stdout=log, stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        return self

    def pause(self) -> None:
        """SIGSTOP: the process holds what it received and acknowledges nothing."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)


def hub_keys(directory: Path) -> tuple[Path, Path]:
    """The hub's key pair (private, public), as `edge-agent keys create --name hub` makes."""
    private, public, _ = create_key_pair(directory, "hub")
    return private, public


def hub_config(
    path: Path,
    broker: MosquittoBroker,
    database_url: str,
    *,
    client_id: str = "hub-1",
    session_expiry_s: int = 0,
    key_file: Path | None = None,
) -> Path:
    gaps = "" if key_file is None else f"""
[gaps]
check_interval_s = 0.3
open_after_s = 1
retry_min_s = 1
retry_max_s = 2
reply_timeout_s = 15
key_file = "{key_file}"
"""
    path.write_text(f"""
[broker]
url = "{broker.url}"
client_id = "{client_id}"
session_expiry_s = {session_expiry_s}
reconnect_min_s = 0.2
reconnect_max_s = 1.0
receive_maximum = 20

[database]
url = "{database_url}"
pool_size = 2

[landing]
batch_max_messages = 50
batch_max_wait_ms = 20
{gaps}""")
    return path


def agent_config(
    home: Path, broker: MosquittoBroker | NatsMqttBroker, public_key: Path, *,
    extra_hub: str = "",
) -> Path:
    """An agent with one simulated counter (one production.count event per reading, 100 a
    second), which allows the hub's key for `replay` and `pause`; `extra_hub`: more lines of
    its `[hub]` section (e.g. its wire `format`)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "agent.toml"
    path.write_text(f"""
[agent]
site = "{SITE}"
id = "{AGENT}"
state_dir = "{home / 'state'}"
shutdown_grace_s = 5

[hub]
url = "{broker.url}"
topic_prefix = "mfg"
reconnect_min_s = 0.2
reconnect_max_s = 1.0
batch_max_events = 10
batch_max_wait_ms = 10
{extra_hub}

[buffer]
retention_s = 3600

[commands.keys]
hub = "{public_key}"

[commands.allow]
replay = ["hub"]
pause = ["hub"]

[[sources]]
name = "sim"
type = "simulated"
rate_hz = 100

  [[sources.signals]]
  node = "counter"
  event = "production.count"
  asset = "line1/filler"
  name = "good"
""")
    return path


def buffer_state(agent_toml: Path) -> tuple[int, int]:
    """(last_seq, pending) of the agent's buffer file, read-only beside the running agent."""
    path = agent_toml.parent / "state" / "buffer.sqlite"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        (last_seq,) = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        (pending,) = db.execute("SELECT count(*) FROM events WHERE acked_at IS NULL").fetchone()
    finally:
        db.close()
    return int(last_seq), int(pending)


async def wait_until(
    probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30.0
) -> T:
    """Poll `probe` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        found = await probe()
        if found:
            return found
        last = found
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what} (last: {last!r})")


async def fetch(url: str, query: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def landed_seqs(url: str) -> list[int]:
    rows = await fetch(url, "SELECT seq FROM events WHERE site = $1 AND agent = $2 ORDER BY seq",
                       SITE, AGENT)
    return [row["seq"] for row in rows]


async def held(url: str) -> list[tuple[int, int]]:
    rows = await fetch(
        url, "SELECT first_seq, last_seq FROM seq_held WHERE site = $1 AND agent = $2 "
        "ORDER BY first_seq", SITE, AGENT,
    )
    return [(row["first_seq"], row["last_seq"]) for row in rows]


def signed(private_key: Path, command: str, args: dict[str, Any]) -> dict[str, Any]:
    return RequestSigner.from_file(private_key).sign(command, args, target=f"{SITE}/{AGENT}")


async def pause_source(broker: MosquittoBroker, private_key: Path) -> dict[str, Any]:
    """Stop the flow: the signed `pause` of the simulated source (the agent keeps running and
    forwards everything it accepted)."""
    with Requester(broker, f"mfg/{SITE}/{AGENT}") as requester:
        answer = await requester.ask_async(
            "pause", signed(private_key, "pause", {"source": "sim"})
        )
    assert answer["ok"], answer
    return answer


async def wait_complete(url: str, agent_toml: Path, timeout: float = 40.0) -> int:
    """Wait until the agent has nothing pending and the hub holds every seq it accepted;
    returns last_seq."""
    seen: list[str] = []

    async def probe() -> int | None:
        last_seq, pending = await asyncio.to_thread(buffer_state, agent_toml)
        ranges = await held(url)
        seen[:] = [f"agent last_seq {last_seq}, pending {pending}; hub holds {ranges}"]
        if pending or not last_seq:
            return None
        return last_seq if ranges == [(1, last_seq)] else None

    try:
        return await wait_until(probe, "every accepted event landed", timeout)
    except AssertionError as error:
        raise AssertionError(f"{error}: {seen[0] if seen else ''}") from None


async def assert_exactly_once(url: str, last_seq: int) -> None:
    assert await landed_seqs(url) == list(range(1, last_seq + 1))
    (ids,) = await fetch(url, "SELECT count(*) AS n, count(DISTINCT id) AS d FROM events")
    assert ids["n"] == ids["d"] == last_seq
    (unique,) = await fetch(url, "SELECT count(*) AS n FROM event_ids")
    assert unique["n"] == last_seq
