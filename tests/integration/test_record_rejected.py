"""Every business record an MES interface cannot take reaches the hub as `record.rejected.v1`
(issue 16), with its order number: the real agent (in process) with a real folder, a real HTTP
post to its webhook, a real SQLite file and a real PostgreSQL interface table, and a real
mosquitto subscriber standing in for the hub.

Per interface: the reason and where (file:line and column, route and item, table and cursor),
the business keys that could be read, a redacted copy of the record; a set-aside MES record
keeps its business class in the dead letters (it was listed as telemetry)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types

from agent.flow.pipeline import UNMAPPABLE_READING_KIND
from events.kinds import Priority
from testkit.broker import MosquittoBroker, Subscriber
from testkit.events import EVENTS_TOPIC, decode_events, unique_by_id
from testkit.mes_files import HEADER, write_mes_files_config
from testkit.mes_sql import CREATE_TABLE, mes_sql_agent_config
from tests.integration.test_first_path import running_agent, until
from tests.integration.test_mes_http import post
from tests.integration.test_mes_http import write_config as write_webhook_config

REJECTED = "record.rejected.v1"


def rejected_at_hub(subscriber: Subscriber) -> dict[str, dict[str, Any]]:
    """The record.rejected events that arrived, by the order they name."""
    events = unique_by_id(decode_events(subscriber.messages)).values()
    return {e["data"]["order"]: e for e in events if e["type"] == REJECTED}


def dead_letters(buffer_file: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(f"file:{buffer_file}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT kind, priority, reason FROM dead_letters ORDER BY number")
        found = [(str(k), int(p), str(r)) for k, p, r in rows.fetchall()]
    db.close()
    return found


async def test_file_rows_that_cannot_be_read_or_validated_reach_the_hub(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config, drop = write_mes_files_config(tmp_path, broker.url)
    text = config.read_text()
    config.write_text(text.replace('time_zone = "Europe/Berlin"',
                                   'time_zone = "Europe/Berlin"\nsecret_columns = ["SCRAP_QTY"]'))
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config):
            (drop / "c.csv").write_text(
                HEADER
                + "WO-200;M-1;5;0;26.11.2026 09:00:00\n"
                + "WO-201;M-2;lots;7;26.11.2026 09:01:00\n"  # cannot be read: line 3
                + "WO-202;M-3;-3;0;26.11.2026 09:02:00\n"  # read; the event model refuses it
                + "WO-203;M-4;5;0;26.11.2026 09:03:00\n"
            )
            await until(lambda: (drop / "processed" / "c.csv").exists(), "c.csv processed")
            await until(lambda: {"WO-201", "WO-202"} <= set(rejected_at_hub(subscriber)),
                        "both rejected rows at the hub")
    unreadable = rejected_at_hub(subscriber)["WO-201"]
    assert unreadable["source"] == "/plant-a/edge-01/mes-drop"
    assert unreadable["subject"] == "line1"
    assert unreadable["correlationid"] == "order:WO-201"
    data = unreadable["data"]
    assert {key: data[key] for key in (
        "signal", "record_type", "interface", "stage", "reason", "location", "column",
        "set_aside", "order", "material", "quantity", "unit",
    )} == {
        "signal": "record", "record_type": "workorder.completed.v3", "interface": "file",
        "stage": "read", "reason": "column 'GOOD_QTY': expected a whole number",
        "location": "c.csv:3", "column": "GOOD_QTY", "set_aside": False, "order": "WO-201",
        "material": "M-2", "quantity": None, "unit": None,
    }
    assert json.loads(data["raw"]) == {
        "WO": "WO-201", "MATERIAL": "M-2", "GOOD_QTY": "lots", "SCRAP_QTY": "[redacted]",
        "FINISHED": "26.11.2026 09:01:00",
    }
    refused = rejected_at_hub(subscriber)["WO-202"]["data"]
    assert (refused["stage"], refused["set_aside"], refused["quantity"], refused["unit"]) == (
        "validate", True, -3.0, "1"
    )
    assert refused["column"] == "good"
    assert "greater than or equal to 0" in refused["reason"]
    # The report on the plant disk is still written; the refused row is also a dead letter, of
    # the class its event would have had (business), not telemetry.
    assert (drop / "rejected" / "c.csv.rejects.csv").exists()
    [(kind, priority, reason)] = dead_letters(tmp_path / "state" / "buffer.sqlite")
    assert (kind, priority) == (UNMAPPABLE_READING_KIND, int(Priority.BUSINESS))
    assert "greater than or equal to 0" in reason
    # The good rows flowed as before.
    orders = {
        e["data"]["order"] for e in unique_by_id(decode_events(subscriber.messages)).values()
        if e["type"] == "workorder.completed.v3"
    }
    assert orders == {"WO-200", "WO-203"}


async def test_a_webhook_400_reaches_the_hub_with_the_order_and_a_redacted_copy(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config, base = write_webhook_config(tmp_path, broker.url)
    completions = f"{base}/mes/completions"
    bad = {
        "orderId": "WO-8", "material": "MAT-8", "qty": {"good": "lots", "scrap": 1},
        "finishedAt": "2026-11-26T08:00:00+01:00", "api_token": "do-not-leak",
        "note": "Bearer abcdefghijklmnop",
    }
    good = {"orderId": "WO-7", "material": "MAT-7", "qty": {"good": 3, "scrap": 0},
            "finishedAt": "2026-11-26T08:00:00+01:00"}
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config) as agent:
            status, body, _ = await post(completions, [good, bad],
                                         headers={"Idempotency-Key": "bad-1"})
            assert status == 400
            assert body["errors"][0]["index"] == 1
            await until(lambda: "WO-8" in rejected_at_hub(subscriber), "WO-8 rejected at hub")
            # The same bad post again: the same record.rejected id, dropped as a repeat.
            status, _, _ = await post(completions, [good, bad],
                                      headers={"Idempotency-Key": "bad-1"})
            assert status == 400
            await until(lambda: agent.pipeline.counters.events_duplicate_total >= 1,
                        "the resent rejection dropped as a duplicate")
            counters = agent.sources[0].connector.health.counters
            assert counters["records_rejected_total"] == 2
            assert counters["rejections_unreported_total"] == 0
    events = decode_events(subscriber.messages)
    # Nothing of the refused post was taken as a business fact: only its rejection arrived.
    assert {e["type"] for e in events} == {REJECTED}
    assert len(unique_by_id(events)) == 1
    data = rejected_at_hub(subscriber)["WO-8"]["data"]
    assert {key: data[key] for key in (
        "signal", "interface", "stage", "location", "column", "set_aside", "order", "material",
    )} == {
        "signal": "/mes/completions", "interface": "webhook", "stage": "read",
        "location": "POST /mes/completions item 1", "column": "qty.good", "set_aside": False,
        "order": "WO-8", "material": "MAT-8",
    }
    assert data["reason"] == "column 'qty.good': 'lots' is not a number"
    raw = json.loads(data["raw"])
    assert raw["api_token"] == "[redacted]" and raw["note"] == "[redacted]"
    assert raw["orderId"] == "WO-8" and raw["qty"] == {"good": "lots", "scrap": 1}
    assert "do-not-leak" not in json.dumps(events)


async def test_a_webhook_object_the_model_refuses_reaches_the_hub(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config, base = write_webhook_config(tmp_path, broker.url)
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config):
            status, _, _ = await post(f"{base}/mes/completions", {
                "orderId": "WO-9", "qty": {"good": -2}, "finishedAt": "2026-11-26T08:00Z",
            })
            assert status == 400
            await until(lambda: "WO-9" in rejected_at_hub(subscriber), "WO-9 rejected at hub")
    data = rejected_at_hub(subscriber)["WO-9"]["data"]
    assert (data["stage"], data["column"], data["quantity"], data["unit"]) == (
        "validate", "good", -2.0, "kg"
    )


async def test_an_sqlite_row_that_cannot_be_read_reaches_the_hub(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    mes_file = tmp_path / "mes.db"
    with sqlite3.connect(mes_file) as mes:
        mes.execute("CREATE TABLE completions (id INTEGER PRIMARY KEY, wo TEXT, material TEXT,"
                    " good REAL, finished TEXT NOT NULL)")
        mes.executemany(
            "INSERT INTO completions (wo, material, good, finished) VALUES (?, 'M', ?, ?)",
            [("WO-1", 1.5, "2026-11-26T08:00:00+01:00"),
             ("WO-2", "a lot", "2026-11-26T08:01:00+01:00"),
             ("WO-3", 2.5, "2026-11-26T08:02:00+01:00")],
        )
    mes.close()
    config = tmp_path / "agent.toml"
    config.write_text(mes_sql_agent_config(
        hub_url=broker.url, state_dir=tmp_path / "state", url=f"sqlite:///{mes_file}",
    ))
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config):
            await until(lambda: "WO-2" in rejected_at_hub(subscriber), "WO-2 rejected at hub")
    data = rejected_at_hub(subscriber)["WO-2"]["data"]
    assert {key: data[key] for key in (
        "interface", "stage", "location", "column", "set_aside", "order", "material", "record",
    )} == {
        "interface": "table", "stage": "read", "location": 'completions row [["int",2]]',
        "column": "good", "set_aside": True, "order": "WO-2", "material": "M",
        "record": '[["int",2]]',
    }
    assert json.loads(data["raw"])["good"] == "a lot"
    [(kind, priority, _)] = dead_letters(tmp_path / "state" / "buffer.sqlite")
    assert (kind, priority) == (UNMAPPABLE_READING_KIND, int(Priority.BUSINESS))


async def test_a_postgresql_row_that_cannot_be_read_reaches_the_hub(
    tmp_path: Path, broker: MosquittoBroker, postgres_url: str
) -> None:
    mes = await asyncpg.connect(postgres_url)
    try:
        await mes.execute(CREATE_TABLE)
        await mes.execute(
            "INSERT INTO completions (wo, material, good) VALUES"
            " ('WO-1', 'MAT-1', 4), ('WO-2', 'MAT-2', NULL), ('WO-3', 'MAT-3', 5)"
        )
    finally:
        await mes.close()
    config = tmp_path / "agent.toml"
    config.write_text(mes_sql_agent_config(
        hub_url=broker.url, state_dir=tmp_path / "state", url=postgres_url,
    ))
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config):
            await until(lambda: "WO-2" in rejected_at_hub(subscriber), "WO-2 rejected at hub")
    event = rejected_at_hub(subscriber)["WO-2"]
    assert event["correlationid"] == "order:WO-2"
    assert event["source"] == "/plant-a/edge-01/mes-table"
    data = event["data"]
    assert (data["reason"], data["column"], data["material"]) == (
        "column 'good' is empty", "good", "MAT-2"
    )
    assert json.loads(data["raw"])["wo"] == "WO-2"


async def test_a_file_sends_at_most_its_allowance_of_rejections(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """A misconfigured column rejects every row: the hub gets `max_rejections_per_file` of
    them as critical events, the report on the plant disk has them all."""
    config, drop = write_mes_files_config(tmp_path, broker.url, rows_per_emit=2)
    text = config.read_text()
    config.write_text(text.replace('time_zone = "Europe/Berlin"',
                                   'time_zone = "Europe/Berlin"\nmax_rejections_per_file = 3'))
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config) as agent:
            (drop / "bad.csv").write_text(HEADER + "".join(
                f"WO-{n};M;x;0;26.11.2026 09:00:00\n" for n in range(7)
            ))
            await until(lambda: (drop / "processed" / "bad.csv").exists(), "bad.csv processed")
            await until(lambda: len(rejected_at_hub(subscriber)) == 3, "three rejections")
            counters = agent.sources[0].connector.health.counters
            assert (counters["rows_rejected_total"], counters["rejections_not_sent_total"]) == (
                7, 4
            )
    assert sorted(rejected_at_hub(subscriber)) == ["WO-0", "WO-1", "WO-2"]
    report = (drop / "rejected" / "bad.csv.rejects.csv").read_text().splitlines()
    assert len(report) == 1 + 7
