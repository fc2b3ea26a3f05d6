"""The interface-table connector in the real agent (in process) against a real PostgreSQL table
and a real SQLite file, with a real mosquitto: rows become events once each, unreadable rows
are set aside with the reason, and the cursor committed with the events makes a restart read
on from the next row."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types

from buffer.sqlite import SqliteBuffer
from connectors.mes_sql.drivers import decode_cursor
from testkit.broker import MosquittoBroker, Subscriber
from testkit.events import EVENTS_TOPIC, decode_events, unique_by_id
from testkit.mes_sql import CREATE_TABLE, mes_sql_agent_config
from tests.integration.test_first_path import running_agent, until
from tests.unit.completion_v3 import V3_UNSET


def completions_at_hub(subscriber: Subscriber) -> dict[str, dict[str, Any]]:
    events = unique_by_id(decode_events(subscriber.messages)).values()
    return {e["data"]["order"]: e for e in events if e["type"] == "workorder.completed.v3"}


async def insert(db: asyncpg.Connection, orders: range, good: object = 12.5) -> None:
    await db.executemany(
        "INSERT INTO completions (wo, material, good) VALUES ($1, 'MAT-1', $2)",
        [(f"WO-{n}", good) for n in orders],
    )


async def test_table_rows_become_events_once_and_a_restart_reads_on(
    tmp_path: Path, broker: MosquittoBroker, postgres_url: str
) -> None:
    mes = await asyncpg.connect(postgres_url)
    try:
        await mes.execute(CREATE_TABLE)
        await insert(mes, range(0, 50))
        # Unreadable rows: no order (a required field), and a good of -1 (no valid event).
        await mes.execute("INSERT INTO completions (wo, good) VALUES (NULL, 1), ('WO-BAD', -1)")
        config = tmp_path / "agent.toml"
        config.write_text(mes_sql_agent_config(
            hub_url=broker.url, state_dir=tmp_path / "state", url=postgres_url, batch_rows=20,
        ))
        with Subscriber(broker, EVENTS_TOPIC) as subscriber:
            async with running_agent(config) as agent:
                await until(lambda: len(completions_at_hub(subscriber)) == 50, "50 rows")
                await insert(mes, range(50, 120))  # written while the agent polls
                await until(lambda: len(completions_at_hub(subscriber)) == 120, "120 rows")
                assert agent.pipeline.counters.readings_set_aside_total == 2
            event = completions_at_hub(subscriber)["WO-7"]
            assert event["data"] == {"signal": "record", "order": "WO-7", "product": "MAT-1",
                                     "good": 12.5, "scrap": None, "unit": "kg", **V3_UNSET,
                                     # the row's time (now) in the source's zone (UTC)
                                     "posting_date": event["time"][:10]}
            assert event["source"] == "/plant-a/edge-01/mes-table"

            # Stopped: the cursor in the buffer is the last row read. Restarted: only new rows.
            last_id = await mes.fetchval("SELECT max(id) FROM completions")
            async with SqliteBuffer.open(tmp_path / "state" / "buffer.sqlite") as buffer:
                stored = await buffer.source_state("mes-table/")
            assert decode_cursor(stored["mes-table/cursor"]) == (last_id,)
            await insert(mes, range(120, 130))
            async with running_agent(config) as agent:
                await until(lambda: len(completions_at_hub(subscriber)) == 130, "130 rows")
                assert agent.pipeline.counters.readings_total == 10  # none read again
        ids = {e["id"] for e in completions_at_hub(subscriber).values()}
        assert len(ids) == 130
        with sqlite3.connect(tmp_path / "state" / "buffer.sqlite") as db:
            reasons = [row[0] for row in db.execute("SELECT reason FROM dead_letters")]
        db.close()
        assert len(reasons) == 2
        assert any("column 'wo' is empty" in reason for reason in reasons), reasons
        assert any("good: Input should be greater than or equal to 0" in r for r in reasons)
    finally:
        await mes.close()


async def test_an_sqlite_interface_table(tmp_path: Path, broker: MosquittoBroker) -> None:
    mes_file = tmp_path / "mes.db"
    with sqlite3.connect(mes_file) as mes:
        mes.execute("CREATE TABLE completions (id INTEGER PRIMARY KEY, wo TEXT, material TEXT,"
                    " good REAL, finished TEXT NOT NULL)")
        mes.executemany(
            "INSERT INTO completions (wo, material, good, finished) VALUES (?, 'M', ?, ?)",
            [(f"WO-{n}", n, f"2026-11-26T08:{n:02d}:00+01:00") for n in range(30)],
        )
    mes.close()
    config = tmp_path / "agent.toml"
    config.write_text(mes_sql_agent_config(
        hub_url=broker.url, state_dir=tmp_path / "state", url=f"sqlite:///{mes_file}",
    ))
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config):
            await until(lambda: len(completions_at_hub(subscriber)) == 30, "30 rows")
    event = completions_at_hub(subscriber)["WO-5"]
    assert event["time"] == "2026-11-26T07:05:00.000000Z"
    assert event["data"]["good"] == 5.0
