"""The real `edge-agent` process SIGKILLed in the middle of a file far larger than one chunk
(issue 13, item 9): the restart resumes after the last committed chunk. Every row reaches the
hub, and no row committed before the kill is emitted again: the restarted source emits exactly
the rows the buffer did not hold, and the buffer sees no duplicate."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker, Subscriber
from testkit.events import EVENTS_TOPIC
from testkit.mes_files import HEADER, rows, write_mes_files_config
from tests.e2e.test_mes_files_crash import RUNNING, orders

ROWS = 20_000
CHUNK = 100  # rows_per_emit: the file is 200 chunks


def committed_rows(state_dir: Path) -> int:
    """Events the (stopped) agent's buffer accepted: its last seq, read-only."""
    uri = f"file:{state_dir / 'buffer.sqlite'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        (value,) = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
    return int(value)


def test_sigkill_mid_file_resumes_after_the_last_committed_chunk(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config, drop = write_mes_files_config(tmp_path, broker.url, stable_s=0.2, rows_per_emit=CHUNK)
    state_dir = tmp_path / "state"
    agent = AgentProcess(config, tmp_path / "agent.log")
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        try:
            agent.start()
            agent.wait_log(RUNNING, timeout=30)
            staged = drop / "big.csv.tmp"  # not matched by the pattern until renamed
            staged.write_text(HEADER + rows(ROWS))
            os.replace(staged, drop / "big.csv")
            deadline = time.monotonic() + 30
            while not orders(subscriber)[0]:  # the first chunks are committed and sent
                assert time.monotonic() < deadline, agent.log_text()[-3000:]
                time.sleep(0.01)
            agent.kill()
            before = committed_rows(state_dir)
            assert (drop / "big.csv").exists()
            assert 0 < before < ROWS, before  # killed mid-file

            offset = len(agent.log_text())
            agent.start()
            agent.wait_log("big.csv processed", after=offset, timeout=60)
            deadline = time.monotonic() + 60
            while len(orders(subscriber)[0]) < ROWS:
                assert time.monotonic() < deadline, f"{len(orders(subscriber)[0])} of {ROWS}"
                time.sleep(0.2)
            assert agent.terminate() == 0
        finally:
            agent.ensure_stopped()
        found, distinct_ids = orders(subscriber)
    assert found == {f"WO-{n}" for n in range(ROWS)} and distinct_ids == ROWS
    assert committed_rows(state_dir) == ROWS  # each row accepted once
    status = json.loads((state_dir / "status.json").read_text())
    assert status["pipeline"]["events_duplicate_total"] == 0  # nothing committed came again
    assert status["sources"]["mes-drop"]["readings_total"] == ROWS - before
    assert (drop / "processed" / "big.csv").exists() and not (drop / "big.csv").exists()
