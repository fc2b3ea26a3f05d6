"""An agent config with one `mes-sql` source, and the MES interface table it polls."""

from __future__ import annotations

from pathlib import Path

from testkit.durability import agent_header

# The MES side: completions written by the MES, polled by the agent (cursor: id).
CREATE_TABLE = """
CREATE TABLE completions (
    id BIGSERIAL PRIMARY KEY,
    wo TEXT,
    material TEXT,
    good NUMERIC(12, 3),
    finished TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


def mes_sql_agent_config(
    *, hub_url: str, state_dir: Path, url: str, poll_s: float = 0.1, batch_rows: int = 200
) -> str:
    return agent_header(hub_url=hub_url, state_dir=state_dir) + f"""
[[sources]]
name = "mes-table"
type = "mes-sql"
url = "{url}"
table = "completions"
cursor = ["id"]
poll_s = {poll_s}
batch_rows = {batch_rows}
reconnect_min_s = 0.2
reconnect_max_s = 1
event = "workorder.completed"
asset = "line1"
time_column = "finished"

  [sources.columns]
  order = {{ column = "wo" }}
  product = {{ column = "material", required = false }}
  good = {{ column = "good", type = "float", unit = "kg" }}
"""
