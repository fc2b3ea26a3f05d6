"""The real `edge-agent` process polling a real PostgreSQL table while the MES keeps inserting,
SIGKILLed at seeded random moments and restarted: every row reaches the hub once after
de-duplication by id, and the buffer accepted each row once (the cursor commits with the
events, so a restart neither skips nor repeats a row)."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types

from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker, Subscriber
from testkit.events import EVENTS_TOPIC, decode_events, unique_by_id
from testkit.mes_sql import CREATE_TABLE, mes_sql_agent_config

SEED = 20261127
RUNNING = "running: 1 source(s)"


class MesWriter:
    """The MES: inserts small batches of rows into the table from its own thread until
    stopped (bounded: at most `limit` rows)."""

    def __init__(self, url: str, limit: int = 20_000) -> None:
        self.url = url
        self.limit = limit
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        db = await asyncpg.connect(self.url)
        try:
            while not self._stop.is_set() and self.written < self.limit:
                rows = [(f"WO-{self.written + n}",) for n in range(25)]
                await db.executemany(
                    "INSERT INTO completions (wo, material, good) VALUES ($1, 'M', 1)", rows
                )
                self.written += len(rows)
                await asyncio.sleep(0.01)
        finally:
            await db.close()

    def __enter__(self) -> MesWriter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def delivered(subscriber: Subscriber) -> set[str]:
    events = unique_by_id(decode_events(subscriber.messages)).values()
    return {e["data"]["order"] for e in events if e["type"] == "workorder.completed.v3"}


def test_agent_sigkilled_while_the_mes_inserts_loses_and_repeats_no_row(
    tmp_path: Path, broker: MosquittoBroker, postgres_url: str
) -> None:
    async def create() -> None:
        db = await asyncpg.connect(postgres_url)
        try:
            await db.execute(CREATE_TABLE)
        finally:
            await db.close()

    asyncio.run(create())
    config = tmp_path / "agent.toml"
    config.write_text(mes_sql_agent_config(
        hub_url=broker.url, state_dir=tmp_path / "state", url=postgres_url, batch_rows=50,
        poll_s=0.05,
    ))
    rng = random.Random(SEED)
    agent = AgentProcess(config, tmp_path / "agent.log")
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        try:
            with MesWriter(postgres_url) as mes:
                for _kill in range(6):
                    offset = len(agent.log_text())
                    agent.start()
                    agent.wait_log(RUNNING, after=offset, timeout=30)
                    time.sleep(rng.uniform(0.2, 1.0))
                    agent.kill()
            written = mes.written
            offset = len(agent.log_text())
            agent.start()
            agent.wait_log(RUNNING, after=offset, timeout=30)
            deadline = time.monotonic() + 60
            while len(delivered(subscriber)) < written:
                assert time.monotonic() < deadline, f"{len(delivered(subscriber))} of {written}"
                time.sleep(0.2)
            assert agent.terminate() == 0
        finally:
            agent.ensure_stopped()
    assert delivered(subscriber) == {f"WO-{n}" for n in range(written)}
    assert written > 500
    with sqlite3.connect(tmp_path / "state" / "buffer.sqlite") as db:
        (accepted,) = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        (held,) = db.execute("SELECT count(*) FROM events").fetchone()
    db.close()
    assert accepted == held == written  # each row accepted once: no seq spent on a repeat
