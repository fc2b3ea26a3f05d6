"""The file-drop connector in the real agent (in process), a real folder and a real mosquitto:
complete files flow, a half-written file waits, bad rows go to a reject report while the good
rows arrive; a file moves to processed/ only once its rows are committed."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

from agent.link.status import sources_status
from connectors.base import Reading
from testkit.broker import MosquittoBroker, Subscriber
from testkit.events import EVENTS_TOPIC, decode_events, unique_by_id
from testkit.mes_files import HEADER, rows, write_mes_files_config
from tests.integration.test_first_path import running_agent, until
from tests.unit.completion_v3 import V3_UNSET


def orders_at_hub(subscriber: Subscriber) -> dict[str, dict[str, Any]]:
    events = unique_by_id(decode_events(subscriber.messages)).values()
    return {e["data"]["order"]: e for e in events if e["type"] == "workorder.completed.v3"}


async def test_files_flow_wait_until_complete_and_reject_bad_rows(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config, drop = write_mes_files_config(tmp_path, broker.url, stable_s=1.0)
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config) as agent:
            # A complete file.
            (drop / "a.csv").write_text(HEADER + rows(5))
            await until(lambda: (drop / "processed" / "a.csv").exists(), "a.csv processed")
            await until(lambda: len(orders_at_hub(subscriber)) == 5, "5 orders at the hub")
            event = orders_at_hub(subscriber)["WO-1"]
            assert event["data"] == {
                "signal": "record", "order": "WO-1", "product": "MAT-1", "good": 1, "scrap": 1,
                "unit": "1", **V3_UNSET, "posting_date": "2026-11-26",
            }
            assert event["time"] == "2026-11-26T07:01:00.000000Z"  # 08:01 Berlin (UTC+1)
            assert event["subject"] == "line1"
            assert event["source"] == "/plant-a/edge-01/mes-drop"

            # A half-written file: its last line is cut off; it must wait until it is stable.
            half = drop / "b.csv"
            whole = HEADER + rows(3, start=100)
            cut = len(whole) - 12
            half.write_text(whole[:cut])
            for _ in range(3):
                await asyncio.sleep(0.6)  # less than stable_s since the last write
                assert half.exists() and not (drop / "processed" / "b.csv").exists()
                with half.open("a") as file:  # the writer is still at it
                    file.write(whole[cut : cut + 4])
                cut += 4
            with half.open("a") as file:
                file.write(whole[cut:])
            await until(lambda: (drop / "processed" / "b.csv").exists(), "b.csv processed")
            await until(lambda: len(orders_at_hub(subscriber)) == 8, "8 orders at the hub")
            assert not (drop / "rejected" / "b.csv.rejects.csv").exists()

            # A file with bad rows: the good ones flow, the bad ones are reported by line.
            (drop / "c.csv").write_text(
                HEADER
                + "WO-200;M;5;0;26.11.2026 09:00:00\n"
                + "WO-201;M;-;0;26.11.2026 09:01:00\n"
                + "WO-202;M;5;0;26.11.2026 09:02:00\n"
                + ";M;5;0;26.11.2026 09:03:00\n"
                + "WO-204;M;5;0;yesterday\n"
                + "WO-205;M;-3;0;26.11.2026 09:05:00\n"  # parses; the event model refuses
                + "WO-206;M;5;0;26.11.2026 09:06:00\n"
            )
            await until(lambda: (drop / "processed" / "c.csv").exists(), "c.csv processed")
            await until(lambda: len(orders_at_hub(subscriber)) == 11, "11 orders at the hub")
            with (drop / "rejected" / "c.csv.rejects.csv").open(newline="") as file:
                report = list(csv.DictReader(file))
            assert [(r["line"], r["reason"]) for r in report] == [
                ("3", "column 'GOOD_QTY': expected a whole number"),  # never the cell itself
                ("5", "column 'WO' is empty"),
                ("6", "time column 'FINISHED': expected a time in '%d.%m.%Y %H:%M:%S'"),
            ]
            assert report[0]["row"] == "WO-201;M;-;0;26.11.2026 09:01:00"
            await asyncio.sleep(0.5)
            assert sources_status(agent)["mes-drop"]["counters"] == {
                "files_processed_total": 3, "files_rejected_total": 0, "rows_rejected_total": 3,
                "files_unreadable_total": 0, "entries_refused_total": 0,
                "files_skipped_total": 0, "disk_pauses_total": 0, "rejections_not_sent_total": 0,
            }
        expected = {f"WO-{n}" for n in [*range(5), 100, 101, 102, 200, 202, 206]}
        assert set(orders_at_hub(subscriber)) == expected
        # Each valid row once after de-duplication by id (ids unique per row).
        ids = {e["id"] for e in orders_at_hub(subscriber).values()}
        assert len(ids) == len(expected)
    # WO-205 (good = -3) is no valid event: set aside in the buffer's dead letters, not sent.
    assert sorted(p.name for p in (drop / "processed").iterdir()) == ["a.csv", "b.csv", "c.csv"]


async def test_emit_returns_a_future_that_completes_on_commit(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config, _ = write_mes_files_config(tmp_path, broker.url)
    async with running_agent(config) as agent:
        from datetime import UTC, datetime

        reading = Reading(
            "mes-drop", "record", "k:1", datetime(2026, 1, 1, tzinfo=UTC),
            attributes=(("order", "X"), ("unit", "1")),
        )
        before = agent.pipeline.counters.events_accepted_total
        committed = await agent.pipeline.emit([reading])
        assert committed is not None
        await asyncio.wait_for(committed, 5)
        assert agent.pipeline.counters.events_accepted_total == before + 1
        empty = await agent.pipeline.emit([])
        assert empty.done()


async def test_json_files_wait_for_their_marker(tmp_path: Path, broker: MosquittoBroker) -> None:
    """complete = "marker": a JSON file is taken only once FILE.done exists; the marker goes
    with it. A file that is no JSON array is rejected whole with the reason beside it."""
    config, drop = write_mes_files_config(tmp_path, broker.url)
    text = config.read_text().replace('pattern = "*.csv"', 'pattern = "*.json"\nformat = "json"')
    config.write_text(text.replace('complete = "stable"', 'complete = "marker"'))
    items = [
        {"WO": f"WO-J{n}", "MATERIAL": "M", "GOOD_QTY": n, "SCRAP_QTY": None,
         "FINISHED": f"26.11.2026 10:0{n}:00"}
        for n in range(3)
    ]
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config) as agent:
            (drop / "orders.json").write_text(json.dumps(items))
            (drop / "broken.json").write_text('{"WO": "not an array"}')
            await asyncio.sleep(1.0)  # no marker yet: nothing is taken
            assert orders_at_hub(subscriber) == {}
            assert (drop / "orders.json").exists()
            (drop / "orders.json.done").touch()
            (drop / "broken.json.done").touch()
            await until(lambda: (drop / "processed" / "orders.json").exists(), "processed")
            await until(lambda: len(orders_at_hub(subscriber)) == 3, "3 orders at the hub")
            await until(lambda: (drop / "rejected" / "broken.json.reject.txt").exists(),
                        "broken.json rejected")
            counters = sources_status(agent)["mes-drop"]["counters"]
            assert (counters["files_processed_total"], counters["files_rejected_total"]) == (1, 1)
    assert not (drop / "orders.json.done").exists()
    assert orders_at_hub(subscriber)["WO-J2"]["data"]["good"] == 2
    reason = (drop / "rejected" / "broken.json.reject.txt").read_text()
    assert "expected a JSON array of objects" in reason
