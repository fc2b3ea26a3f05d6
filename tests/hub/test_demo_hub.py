"""`edge-agent demo --with-hub` (`make hub-demo`) as a new user runs it: the demo plant, the
agent, a private mosquitto, a real `edge-agent hub run` child process, a real PostgreSQL
(a scratch database per test) and the hub's dashboard, all on one machine."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from testkit.agent_process import REPO
from testkit.broker import MosquittoBroker
from tests.hub.harness import fetch


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def _run_demo(broker: MosquittoBroker, database: str, port: int, state: Path) -> tuple[
    subprocess.Popen[str], str, str | None
]:
    """The demo for 25 s; the dashboard's fleet page as read while it ran."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "agent", "demo", "--with-hub", "--database", database,
         "--dashboard-port", str(port), "--duration", "25", "--hub", broker.url,
         "--state-dir", str(state), "--rate", "20"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    page = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and demo.poll() is None:
            page = _get(f"http://127.0.0.1:{port}/")
            if page is not None and "edge-01" in page:
                break
            time.sleep(0.5)
        output, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    return demo, output, page


async def test_the_hub_demo_lands_the_plant_in_postgresql_and_serves_its_dashboard(
    tmp_path: Path, broker: MosquittoBroker, postgres_url: str
) -> None:
    port = _free_port()
    demo, output, page = await asyncio.to_thread(
        _run_demo, broker, postgres_url, port, tmp_path / "state"
    )
    assert demo.returncode == 0, output
    assert f"dashboard http://127.0.0.1:{port}/" in output
    assert page is not None and "plant-a" in page and "edge-01" in page, page
    landed_line = [line for line in output.splitlines() if line.startswith("landed in Postgre")]
    assert landed_line, output
    rows = await fetch(postgres_url, "SELECT type, count(*) AS n FROM events GROUP BY type")
    by_type = {row["type"]: int(row["n"]) for row in rows}
    assert by_type.get("telemetry.v1", 0) > 10, by_type
    orders = await fetch(
        postgres_url,
        "SELECT envelope->'data'->>'order' AS order_no FROM events "
        "WHERE type = 'workorder.completed.v3' ORDER BY 1",
    )
    assert [row["order_no"] for row in orders] == ["WO-4711", "WO-4712"]
    # Each event once; the demo's last line waited until every forwarded event had landed
    # (a fresh state dir: the table holds this run's events only).
    [total] = await fetch(postgres_url, "SELECT count(*) AS n, count(DISTINCT id) AS ids "
                                        "FROM events")
    assert total["n"] == total["ids"]
    assert landed_line[-1].endswith(f": {total['n']}"), (landed_line, total["n"])
    forwarded = int(output.split(" forwarded (")[0].rsplit(", ", 1)[1].split()[0])
    assert forwarded == total["n"], output
