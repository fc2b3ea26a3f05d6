"""An agent config with one `mes-files` source, and MES CSV files to drop into its folder."""

from __future__ import annotations

from pathlib import Path

from testkit.durability import agent_header

HEADER = "WO;MATERIAL;GOOD_QTY;SCRAP_QTY;FINISHED\n"


def write_mes_files_config(
    tmp_path: Path, hub_url: str, *, stable_s: float = 0.5, rows_per_emit: int = 500
) -> tuple[Path, Path]:
    """`tmp_path/agent.toml` (`mes_files_agent_config`) and its drop folder, made:
    (config file, folder)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    config = tmp_path / "agent.toml"
    config.write_text(mes_files_agent_config(
        hub_url=hub_url, state_dir=tmp_path / "state", folder=drop, stable_s=stable_s,
        rows_per_emit=rows_per_emit,
    ))
    return config, drop


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
