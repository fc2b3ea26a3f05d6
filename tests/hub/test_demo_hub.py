"""`edge-agent demo --with-hub` (`make hub-demo`) as a new user runs it: the demo plant, the
agent, a private mosquitto, a real `edge-agent hub run` child process, a real PostgreSQL
(a scratch database per test) and the hub's dashboard, all on one machine."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types

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


async def _landed_enough(database: str) -> bool:
    """The hub's table holds more than 10 telemetry events and the MES's two work orders (False
    while the demo has not made the table yet)."""
    try:
        telemetry = await fetch(database, "SELECT count(*) AS n FROM events "
                                          "WHERE type = 'telemetry.v1'")
        orders = await fetch(database, "SELECT envelope->'data'->>'order' AS order_no "
                                       "FROM events WHERE type = 'workorder.completed.v3'")
    except (OSError, asyncpg.PostgresError):
        return False
    orders_landed = sorted(row["order_no"] for row in orders) == ["WO-4711", "WO-4712"]
    return int(telemetry[0]["n"]) > 10 and orders_landed


async def _run_demo(broker: MosquittoBroker, database: str, port: int, state: Path) -> tuple[
    int, str, str | None
]:
    """The demo until its dashboard shows the agent and the hub has landed telemetry and the
    MES's two work orders, then Ctrl-C (SIGINT) as a user stops it (`--duration` only bounds
    it); the exit code, what it printed, and the dashboard's fleet page as read meanwhile."""
    log = state.parent / "demo.log"
    with log.open("w") as out:
        demo = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "demo", "--with-hub", "--database", database,
            "--dashboard-port", str(port), "--duration", "90", "--hub", broker.url,
            "--state-dir", str(state), "--rate", "20",
            cwd=REPO, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )
    page = None
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and demo.returncode is None:
            if page is None or "edge-01" not in page:
                page = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/")
            elif await _landed_enough(database):
                demo.send_signal(signal.SIGINT)
                break
            await asyncio.sleep(0.5)
        code = await asyncio.wait_for(demo.wait(), 120)
    finally:
        if demo.returncode is None:
            demo.kill()
            await demo.wait()
    return code, log.read_text(), page


async def test_the_hub_demo_lands_the_plant_in_postgresql_and_serves_its_dashboard(
    tmp_path: Path, broker: MosquittoBroker, postgres_url: str
) -> None:
    port = _free_port()
    code, output, page = await _run_demo(broker, postgres_url, port, tmp_path / "state")
    assert code == 0, output
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
