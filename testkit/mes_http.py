"""An agent config with one `mes-http` source (two routes), a one-route webhook source to add
beside others, and posts to it."""

from __future__ import annotations

import http.client
import json
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


def completions_webhook_source(port: int, tokens_file: Path) -> str:
    """A `[[sources]]` block: a webhook on `port` with one route, completions of work orders
    (`orderId`, `good` in kg), idle connections closed after 2 s; `tokens_file` gets `TOKEN`."""
    tokens_file.write_text(f"{TOKEN}\n")
    return f"""
[[sources]]
name = "mes-webhook"
type = "mes-http"
listen = "127.0.0.1:{port}"
tokens_file = "{tokens_file}"
header_timeout_s = 2.0

  [[sources.routes]]
  path = "/mes/completions"
  event = "workorder.completed"
  asset = "line1"
    [sources.routes.columns]
    order = {{ column = "orderId" }}
    good = {{ column = "good", type = "float", unit = "kg" }}
"""


def post_completion(port: int, order: str) -> int:
    """One authenticated POST to `completions_webhook_source` on a fresh connection: its HTTP
    status, 0 when no answer came."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "POST", "/mes/completions", body=json.dumps({"orderId": order, "good": 5}),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        connection.close()
