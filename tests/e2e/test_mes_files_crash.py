"""The real `edge-agent` process SIGKILLed in the middle of an MES file: after a restart every
valid row arrives once after de-duplication by id (same file content and line, same id), and
the file moves to processed/ only after the restart has committed all of it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker, Subscriber
from testkit.events import EVENTS_TOPIC, decode_events, unique_by_id
from testkit.mes_files import HEADER, rows, write_mes_files_config

ROWS = 30_000
RUNNING = "running: 1 source(s)"


def orders(subscriber: Subscriber) -> tuple[set[str], int]:
    """Distinct orders and distinct event ids at the hub."""
    events = unique_by_id(decode_events(subscriber.messages)).values()
    found = [e["data"]["order"] for e in events if e["type"] == "workorder.completed.v3"]
    return set(found), len(found)


def test_sigkill_mid_file_then_restart_delivers_every_row_once(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config, drop = write_mes_files_config(tmp_path, broker.url, stable_s=0.2, rows_per_emit=100)
    agent = AgentProcess(config, tmp_path / "agent.log")
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        try:
            agent.start()
            agent.wait_log(RUNNING, timeout=30)
            staged = drop / "big.csv.tmp"  # not matched by the pattern until renamed
            staged.write_text(HEADER + rows(ROWS))
            os.replace(staged, drop / "big.csv")
            deadline = time.monotonic() + 30
            while not orders(subscriber)[0]:  # the first rows reached the hub
                assert time.monotonic() < deadline, agent.log_text()[-3000:]
                time.sleep(0.01)
            agent.kill()
            before, _ = orders(subscriber)
            # Killed mid-file: the file was not moved, some rows are not delivered yet.
            assert (drop / "big.csv").exists()
            assert not (drop / "processed" / "big.csv").exists()
            assert 0 < len(before) < ROWS

            offset = len(agent.log_text())
            agent.start()
            agent.wait_log("big.csv processed", after=offset, timeout=60)
            deadline = time.monotonic() + 60
            while len(orders(subscriber)[0]) < ROWS:
                assert time.monotonic() < deadline, f"{len(orders(subscriber)[0])} of {ROWS}"
                time.sleep(0.2)
            time.sleep(0.5)
            assert agent.terminate() == 0
        finally:
            agent.ensure_stopped()
        found, distinct_ids = orders(subscriber)
    assert found == {f"WO-{n}" for n in range(ROWS)}
    assert distinct_ids == ROWS  # a row re-read after the crash kept its id
    assert (drop / "processed" / "big.csv").exists() and not (drop / "big.csv").exists()
