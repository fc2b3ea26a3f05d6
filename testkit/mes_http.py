"""An agent config with one `mes-http` source (two routes), and posts to it."""

from __future__ import annotations

from pathlib import Path

from testkit.durability import agent_header

TOKEN = "s3cret-token-for-tests"


def mes_http_agent_config(
    *, hub_url: str, state_dir: Path, port: int, tokens_file: Path, max_bytes: str = "64MiB",
    commit_timeout_s: float = 10.0,
) -> str:
    return agent_header(
        hub_url=hub_url, state_dir=state_dir, buffer=f'max_bytes = "{max_bytes}"'
    ) + f"""
[[sources]]
name = "mes-webhook"
type = "mes-http"
listen = "127.0.0.1:{port}"
tokens_file = "{tokens_file}"
max_body_bytes = 4096
idempotency_field = "messageId"
commit_timeout_s = {commit_timeout_s}

  [[sources.routes]]
  path = "/mes/completions"
  event = "workorder.completed"
  asset = "line1"
  time_column = "finishedAt"
    [sources.routes.columns]
    order = {{ column = "orderId" }}
    product = {{ column = "material", required = false }}
    good = {{ column = "qty.good", type = "float", unit = "kg" }}
    scrap = {{ column = "qty.scrap", type = "float", required = false }}

  [[sources.routes]]
  path = "/mes/inventory"
  event = "inventory.adjusted"
  asset = "warehouse"
  time_column = "at"
  time_format = "%d.%m.%Y %H:%M"
  time_zone = "Europe/Berlin"
    [sources.routes.columns]
    material = {{ column = "material" }}
    lot = {{ column = "lot", required = false }}
    location = {{ column = "bin" }}
    delta = {{ column = "delta", type = "float" }}
    unit = {{ column = "uom" }}
    reason = {{ value = "MES-ADJ" }}
"""


def completion(order: str, good: float = 10.0, minute: int = 0) -> dict[str, object]:
    return {
        "orderId": order, "material": "MAT-1", "qty": {"good": good, "scrap": 1},
        "finishedAt": f"2026-11-26T08:{minute:02d}:00+01:00",
    }
