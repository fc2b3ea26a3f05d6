"""Unmappable readings go to the buffer's dead-letter table (issue 5): a real asyncua plant (the
batch reactor, its material lookup set to `unmapped = "dead-letter"`) → the agent → a real
SQLite file, then `edge-agent buffer dead-letters` lists them with the mapping error."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgpack

from agent.demo.plant import REACTOR_MATERIAL, REACTOR_TEMPERATURE, FillingLinePlant
from agent.flow.pipeline import UNMAPPABLE_READING_KIND
from agent.link.status import snapshot
from buffer.sqlite import ID_TEXT_SQL
from testkit.agent_process import REPO
from testkit.broker import MosquittoBroker, Subscriber
from tests.integration.test_first_path import events_at_hub, running_agent, until
from tests.integration.test_mapping_path import reactor_config

EVENTS_TOPIC = "mfg/plant-b/edge-01/events/#"
REASON = "code 'RX-???' is not in lookup 'materials' (unmapped = \"dead-letter\")"


def dead_letter_rows(buffer_file: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(f"file:{buffer_file}?mode=ro", uri=True) as db:
        return db.execute(
            f"SELECT seq, {ID_TEXT_SQL}, kind, priority, body, accepted_at, reason"
            " FROM dead_letters"
            " ORDER BY number"
        ).fetchall()


async def test_a_dead_lettered_code_is_set_aside_in_the_buffer_with_the_reason(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant
) -> None:
    config = reactor_config(tmp_path, broker, plant)
    text = config.read_text()
    assert text.count('unmapped = "flag"') == 1
    config.write_text(text.replace('unmapped = "flag"', 'unmapped = "dead-letter"'))
    buffer_file = tmp_path / "state" / "buffer.sqlite"
    t0 = datetime.now(UTC).replace(microsecond=0)
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config) as agent:
            # The initial values: a temperature event, and an empty material code (unknown too).
            await events_at_hub(subscriber, 1)
            await until(lambda: agent.pipeline.counters.readings_set_aside_total >= 1,
                        "the initial (empty) material set aside")
            await plant.write(REACTOR_MATERIAL, "RX-???", timestamp=t0 + timedelta(seconds=1))
            await until(lambda: agent.pipeline.counters.readings_set_aside_total >= 2,
                        "the unknown material set aside")
            # The agent goes on: a later reading still becomes an event at the hub.
            await plant.write(REACTOR_TEMPERATURE, 212.0, timestamp=t0 + timedelta(seconds=2))
            await events_at_hub(subscriber, 2)
            status = await snapshot(agent)

    assert status["pipeline"]["readings_unmappable_total"] == 2
    assert status["pipeline"]["readings_set_aside_total"] == 2
    assert status["mapping"]["codes_dead_lettered_total"] == {"materials": 2}
    assert status["buffer"]["dead_letters"] == 2

    initial, unknown = dead_letter_rows(buffer_file)
    assert isinstance(initial[4], bytes)
    assert msgpack.unpackb(initial[4])["value"] == ""
    assert isinstance(initial[6], str) and "code '' is not in lookup 'materials'" in initial[6]
    seq, _id, kind, _priority, body, accepted_at, reason = unknown
    assert (seq, accepted_at, kind) == (None, None, UNMAPPABLE_READING_KIND)
    assert isinstance(reason, str) and reason.endswith(REASON)
    assert isinstance(body, bytes)
    described = msgpack.unpackb(body)
    assert described["source"] == "reactors"
    assert described["signal"] == "ns=2;s=Reactor1.Material"
    assert described["value"] == "RX-???"
    assert described["quality"] == "good"
    assert datetime.fromisoformat(described["timestamp"]) == t0 + timedelta(seconds=1)

    listed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "agent", "buffer", "dead-letters", "-c", str(config)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert listed.returncode == 0, listed.stderr
    rows = [line for line in listed.stdout.splitlines() if UNMAPPABLE_READING_KIND in line]
    assert len(rows) == 2 and REASON in rows[1], listed.stdout
