"""MES sources keep the receive time and the business time of their records apart in the
status (issue 16, item 5): a back-dated record (a late shift report, a re-export of last
week) was received now, so the source is not stale. `last_value_at` and `last_received_at` are
the receive time, which staleness monitoring watches; `last_business_time` is the record's own
time. The real agent in process, a real mosquitto, a real webhook post, a real file drop and a
real PostgreSQL interface table."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types

from agent.link.status import sources_status
from testkit.broker import MosquittoBroker
from testkit.mes_files import HEADER, write_mes_files_config
from testkit.mes_sql import CREATE_TABLE, mes_sql_agent_config
from tests.integration.test_first_path import running_agent, until
from tests.integration.test_mes_http import post, write_config

# Days before the test runs: far older than any staleness threshold.
BACK_DATED = "2026-11-26T08:00:00+01:00"


def parsed(text: str | None) -> datetime:
    assert text is not None
    return datetime.fromisoformat(text)


async def test_a_back_dated_webhook_record_is_received_now(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config, base = write_config(tmp_path, broker.url)
    async with running_agent(config) as agent:
        before = sources_status(agent)["mes-webhook"]
        posted_at = datetime.now(UTC)
        status, body, _ = await post(f"{base}/mes/completions", [{
            "orderId": "WO-1", "material": "MAT-1", "qty": {"good": 5, "scrap": 0},
            "finishedAt": BACK_DATED,
        }])
        assert status == 202, body
        shown = sources_status(agent)["mes-webhook"]
    assert before["last_received_at"] is None and before["last_business_time"] is None
    assert parsed(shown["last_business_time"]) == datetime.fromisoformat(BACK_DATED)
    received = parsed(shown["last_received_at"])
    assert received >= posted_at
    assert received > parsed(shown["last_business_time"])
    assert shown["last_value_at"] == shown["last_received_at"]


async def test_a_back_dated_file_record_is_received_now(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config, drop = write_mes_files_config(tmp_path, broker.url, stable_s=0.2)
    async with running_agent(config) as agent:
        dropped_at = datetime.now(UTC)
        (drop / "shift.csv").write_text(HEADER + "WO-7;MAT-1;40;1;26.11.2026 08:00:00\n")

        def read() -> bool:
            return agent.sources[0].connector.health.readings_total >= 1

        await until(read, "the file's record read")
        shown = sources_status(agent)["mes-drop"]
    assert parsed(shown["last_business_time"]) == datetime.fromisoformat(BACK_DATED)
    assert parsed(shown["last_received_at"]) >= dropped_at
    assert shown["last_value_at"] == shown["last_received_at"]


async def test_a_back_dated_table_row_is_received_now(
    tmp_path: Path, broker: MosquittoBroker, postgres_url: str
) -> None:
    mes = await asyncpg.connect(postgres_url)
    try:
        await mes.execute(CREATE_TABLE)
        await mes.execute(
            "INSERT INTO completions (wo, material, good, finished) VALUES ('WO-1', 'MAT-1', 5, "
            "$1)", datetime.fromisoformat(BACK_DATED),
        )
        config = tmp_path / "agent.toml"
        config.write_text(mes_sql_agent_config(
            hub_url=broker.url, state_dir=tmp_path / "state", url=postgres_url,
        ))
        started_at = datetime.now(UTC)
        async with running_agent(config) as agent:

            def read() -> bool:
                return agent.sources[0].connector.health.readings_total >= 1

            await until(read, "the table's row read")
            shown = sources_status(agent)["mes-table"]
    finally:
        await mes.close()
    assert parsed(shown["last_business_time"]) == datetime.fromisoformat(BACK_DATED)
    assert parsed(shown["last_received_at"]) >= started_at
    assert shown["last_value_at"] == shown["last_received_at"]
