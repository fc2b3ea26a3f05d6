"""Corrections (issue 16): a file-drop source with `business_key = ["order"]`, the real agent
(in process), a real folder and a real mosquitto. A corrected re-export of WO-5001 (470/30
instead of 480/20) arrives as an event that `supersedes` the first, with the reason
`correction`, never as a silent second fact; the same content in another file is a repeat and
is dropped; what the agent remembers per key survives a restart (it is in the buffer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.link.status import snapshot
from testkit.broker import MosquittoBroker, Subscriber
from testkit.events import EVENTS_TOPIC, decode_events, unique_by_id
from testkit.mes_files import HEADER, write_mes_files_config
from tests.integration.test_first_path import running_agent, until


def completions(subscriber: Subscriber) -> list[dict[str, Any]]:
    events = unique_by_id(decode_events(subscriber.messages)).values()
    return sorted((e for e in events if e["type"] == "workorder.completed.v3"),
                  key=lambda e: e["seq"])


def drop_file(folder: Path, name: str, *rows: str) -> None:
    (folder / name).write_text(HEADER + "".join(f"{row}\n" for row in rows))


async def test_a_corrected_re_export_supersedes_the_first_completion(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config, drop = write_mes_files_config(tmp_path, broker.url, stable_s=0.2)
    text = config.read_text()
    config.write_text(text.replace('time_zone = "Europe/Berlin"',
                                   'time_zone = "Europe/Berlin"\nbusiness_key = ["order"]'))
    processed = drop / "processed"
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config) as agent:
            drop_file(drop, "a.csv", "WO-5001;MAT-1;480;20;26.11.2026 09:00:00")
            await until(lambda: len(completions(subscriber)) == 1, "the first completion")
            # The corrected re-export (another file: another event id) and a new order.
            drop_file(drop, "b.csv", "WO-5001;MAT-1;470;30;26.11.2026 09:00:00",
                      "WO-5002;MAT-1;100;0;26.11.2026 09:05:00")
            await until(lambda: len(completions(subscriber)) == 3, "the correction and WO-5002")
            # The same content once more, in a third file: a repeat, dropped.
            drop_file(drop, "c.csv", "WO-5002;MAT-1;100;0;26.11.2026 09:05:00")
            await until(lambda: (processed / "c.csv").exists(), "c.csv processed")
            status = await snapshot(agent)
        assert status["pipeline"]["records_corrected_total"] == 1
        assert status["pipeline"]["records_repeated_total"] == 1
        first, correction, other = completions(subscriber)
        assert (first["data"]["good"], first["data"]["scrap"]) == (480, 20)
        assert "supersedes" not in first
        assert (correction["data"]["good"], correction["data"]["scrap"]) == (470, 30)
        assert correction["data"]["order"] == "WO-5001"
        assert correction["id"] != first["id"]
        assert correction["supersedes"] == first["id"]
        assert correction["supersedesreason"] == "correction"
        assert other["data"]["order"] == "WO-5002" and "supersedes" not in other

        # After a restart the agent still knows each key's latest event (in the buffer).
        async with running_agent(config) as agent:
            drop_file(drop, "d.csv", "WO-5001;MAT-1;470;30;26.11.2026 09:00:00")  # a repeat
            drop_file(drop, "e.csv", "WO-5001;MAT-1;460;40;26.11.2026 09:00:00")  # corrected
            await until(lambda: len(completions(subscriber)) == 4, "the second correction")
            await until(lambda: (processed / "d.csv").exists(), "d.csv processed")
            status = await snapshot(agent)
        assert status["pipeline"]["records_repeated_total"] == 1
        assert status["pipeline"]["records_corrected_total"] == 1
    second = completions(subscriber)[-1]
    assert (second["data"]["good"], second["data"]["scrap"]) == (460, 40)
    assert second["supersedes"] == correction["id"]
    assert len(completions(subscriber)) == 4
