"""An agent config with one `mes-files` source, and MES CSV files to drop into its folder."""

from __future__ import annotations

from pathlib import Path

HEADER = "WO;MATERIAL;GOOD_QTY;SCRAP_QTY;FINISHED\n"


def agent_header(*, hub_url: str, state_dir: Path, buffer: str = "") -> str:
    """The [agent], [hub] and [buffer] sections the MES tests share: quick reconnects and
    batches, no periodic status; `buffer` adds lines to [buffer]."""
    return f"""
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "{state_dir}"
shutdown_grace_s = 5

[hub]
url = "{hub_url}"
keepalive_s = 5
connect_timeout_s = 2
reconnect_min_s = 0.1
reconnect_max_s = 0.5
batch_max_wait_ms = 10
status_interval_s = 3600

[buffer]
retention_s = 3600
backlog_max_rate = 50000
backlog_start_delay_max_s = 0.2
{buffer}
"""


def mes_files_agent_config(
    *, hub_url: str, state_dir: Path, folder: Path, stable_s: float = 0.5,
    rows_per_emit: int = 500,
) -> str:
    return agent_header(hub_url=hub_url, state_dir=state_dir) + f"""
[[sources]]
name = "mes-drop"
type = "mes-files"
folder = "{folder}"
pattern = "*.csv"
delimiter = ";"
event = "workorder.completed"
asset = "line1"
complete = "stable"
stable_s = {stable_s}
poll_s = 0.1
rows_per_emit = {rows_per_emit}
time_column = "FINISHED"
time_format = "%d.%m.%Y %H:%M:%S"
time_zone = "Europe/Berlin"

  [sources.columns]
  order = {{ column = "WO" }}
  product = {{ column = "MATERIAL", required = false }}
  good = {{ column = "GOOD_QTY", type = "int", unit = "1" }}
  scrap = {{ column = "SCRAP_QTY", type = "int", required = false }}
"""


def rows(count: int, start: int = 0) -> str:
    """`count` valid rows, work orders WO-{start}..; one per minute from 26.11.2026 08:00."""
    lines = []
    for n in range(start, start + count):
        hours, minutes = divmod(n, 60)
        finished = f"26.11.2026 {8 + hours % 12:02d}:{minutes:02d}:00"
        lines.append(f"WO-{n};MAT-{n % 7};{n % 500};{n % 3};{finished}\n")
    return "".join(lines)
