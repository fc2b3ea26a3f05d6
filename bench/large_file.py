"""A large MES file drop: the real `edge-agent run` process ingesting one 2,000,000-row CSV.

The agent (one `mes-files` source with its defaults, `rows_per_emit = 500`; hub and buffer
defaults) runs against a private mosquitto on a free loopback port, so the rows are forwarded
as they are committed. One CSV of N valid short rows (`W0000001;7`: an order and a count, the
time is the file's; 2,000,000 rows are 22 MB, under the 64 MiB `max_file_bytes`) is written
beside the drop folder and renamed in; the clock runs from the rename until the agent logs the
file processed (every row committed to the buffer, then the file moved). Figures:

- rows/s: N / that time (the file streamed through the pipeline into the buffer, including
  the checking pass over the whole file before the first row goes out);
- the agent's peak RSS: VmHWM from /proc/PID/status at the end, over the agent's whole life
  (before the streaming file drop of issue 13 it grew by about 0.9 KB per row: 1.8 GiB here);
- accepted: the buffer's last seq after the agent stopped (must equal N).

Run alone: `.venv/bin/python -m bench.large_file [--rows N] [--quick]` (`--quick`: 50,000 rows,
a smoke run); `bench.run` calls `run_large_file` for `make bench`. Printed, never asserted.
Only loopback addresses; every wait is bounded; the agent and mosquitto are always ended.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.demo_path import peak_rss_mb
from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker

RUNNING = "running: 1 source(s)"
FULL_ROWS = 2_000_000
QUICK_ROWS = 50_000
_WRITE_ROWS = 100_000  # rows generated per write: the bench's own memory stays small


def agent_config(*, hub_url: str, state_dir: Path, folder: Path) -> str:
    """One `mes-files` source (defaults but the folder, format and columns); hub and buffer
    defaults."""
    return f"""
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "{state_dir}"

[hub]
url = "{hub_url}"

[[sources]]
name = "mes-drop"
type = "mes-files"
folder = "{folder}"
pattern = "*.csv"
delimiter = ";"
event = "workorder.completed"
asset = "line1"
complete = "rename"

  [sources.columns]
  order = {{ column = "WO" }}
  good = {{ column = "GOOD", type = "int", unit = "1" }}
"""


def write_csv(path: Path, count: int) -> int:
    """A header and `count` valid short rows in `path`; its size in bytes."""
    with path.open("w", encoding="utf-8") as file:
        file.write("WO;GOOD\n")
        for start in range(0, count, _WRITE_ROWS):
            stop = min(start + _WRITE_ROWS, count)
            file.write("".join(f"W{n:07d};{n % 10}\n" for n in range(start, stop)))
    return path.stat().st_size


def wait_processed(agent: AgentProcess, offset: int, timeout_s: float) -> None:
    """Until the agent logs the file processed; an error if it rejects it or time runs out."""
    deadline = time.monotonic() + timeout_s
    while "large.csv processed" not in (log := agent.log_text()[offset:]):
        if "'large.csv' rejected" in log or time.monotonic() > deadline:
            raise RuntimeError(f"large.csv not processed in time or rejected:\n{log[-3000:]}")
        agent.wait_log("", after=offset, timeout=1)  # the agent is still alive
        time.sleep(0.1)


def last_seq(state_dir: Path) -> int:
    uri = f"file:{state_dir / 'buffer.sqlite'}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        (value,) = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
    return int(value)


def run_large_file(count: int, work: Path) -> dict[str, Any]:
    """Ingest one CSV of `count` rows with the real agent; the figures (module docstring)."""
    work.mkdir(parents=True, exist_ok=True)
    timeout_s = 120 + count / 1000  # generous: 1,000 rows/s would be far below any target
    drop = work / "drop"
    drop.mkdir()
    config = work / "agent.toml"
    with MosquittoBroker() as broker:
        config.write_text(agent_config(hub_url=broker.url, state_dir=work / "state", folder=drop))
        staged = work / "large.csv"
        size = write_csv(staged, count)
        agent = AgentProcess(config, work / "agent.log")
        try:
            agent.start()
            agent.wait_log(RUNNING, timeout=60)
            offset = len(agent.log_text())
            started = time.monotonic()
            os.replace(staged, drop / "large.csv")
            wait_processed(agent, offset, timeout_s)
            seconds = time.monotonic() - started
            rss = peak_rss_mb(agent.pid)
            code = agent.terminate()
        finally:
            agent.ensure_stopped()
    return {
        "rows": count,
        "file_bytes": size,
        "seconds": round(seconds, 2),
        "rows_per_s": round(count / seconds, 1),
        "peak_rss_mib": round(rss, 1),
        "accepted": last_seq(work / "state"),
        "exit_code": code,
    }


def print_result(result: dict[str, Any]) -> None:
    print(f"large file: {result['rows']:,} rows ({result['file_bytes'] / 2**20:.0f} MiB) in "
          f"{result['seconds']:.1f} s = {result['rows_per_s']:,.0f} rows/s committed; agent "
          f"peak RSS {result['peak_rss_mib']:.0f} MiB; {result['accepted']:,} accepted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, help=f"rows in the file (default {FULL_ROWS:,})")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows, a smoke run")
    args = parser.parse_args()
    count = args.rows or (QUICK_ROWS if args.quick else FULL_ROWS)
    with tempfile.TemporaryDirectory(prefix="bench-large-file-") as work:
        result = run_large_file(count, Path(work))
    print_result(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
