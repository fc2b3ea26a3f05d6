"""The webhook in the real `edge-agent` process: it answers once the agent runs, keeps its port
across a SIGHUP reload (the old generation lets it go before the new one binds it), and a
resend after the reload is a replay of the committed answer."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker, free_loopback_port
from testkit.mes_http import TOKEN, completion, mes_http_agent_config
from tests.e2e.test_service import status_command

RUNNING = "running: 1 source(s)"


def post(url: str, body: Any, key: str, limit_s: float = 10.0) -> tuple[int, dict[str, Any]]:
    """POST until the endpoint answers (bounded: it may be between generations)."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}",
                 "Idempotency-Key": key},
    )
    deadline = time.monotonic() + limit_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_webhook_in_the_agent_process_survives_a_reload(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    port = free_loopback_port()
    config = tmp_path / "agent.toml"
    config.write_text(mes_http_agent_config(
        hub_url=broker.url, state_dir=tmp_path / "state", port=port, tokens_file=tokens,
    ))
    url = f"http://127.0.0.1:{port}/mes/completions"
    agent = AgentProcess(config, tmp_path / "agent.log")
    try:
        agent.start()
        agent.wait_log(RUNNING, timeout=30)
        status, first = post(url, [completion("WO-1")], key="k-1")
        assert (status, first["accepted"]) == (202, 1)

        offset = len(agent.log_text())
        agent.hup()
        agent.wait_log("reload applied", after=offset, timeout=30)
        agent.wait_log(RUNNING, after=offset, timeout=30)
        status, again = post(url, [completion("WO-1")], key="k-1")
        assert (status, again["ids"], again["replayed"]) == (202, first["ids"], True)
        status, second = post(url, [completion("WO-2", minute=1)], key="k-2")
        assert (status, second["replayed"]) == (202, False)
        assert agent.terminate() == 0
    finally:
        agent.ensure_stopped()
    assert "Address already in use" not in agent.log_text()
    # The last generation's webhook counters, in the status file and in `edge-agent status`.
    snapshot = json.loads((tmp_path / "state" / "status.json").read_text())
    counters = snapshot["sources"]["mes-webhook"]["counters"]
    assert (counters["posts_accepted_total"], counters["posts_replayed_total"]) == (1, 1)
    shown = status_command(config)
    assert "source mes-webhook: " in shown.stdout, shown.stdout + shown.stderr
    assert "(posts_accepted 1, posts_replayed 1)" in shown.stdout, shown.stdout
