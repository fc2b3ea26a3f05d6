"""Benchmark: OPC UA start-up, signals by browse path vs by NodeId, 1,000 and 10,000 items.

A real asyncua server runs in its own process (`--serve`, testkit `serve_tree`):
Objects/Tree/F0..F{folders-1}/V0..V{n/folders-1}, Double variables. For each item count the
real `OpcUaConnector` (in this process) starts one session with every variable as a signal,
once addressed by browse path (`Objects/Tree/F0/V17`) and once by NodeId with namespace URI
(`nsu=...;s=F0.V17`), and the time is taken from `run()` until every signal has delivered its
first value (resolved, monitored, first notification). Also printed: the Browse requests the
session made (counted by wrapping asyncua's `UaSession.browse`).

    .venv/bin/python -m bench.browse_paths [--items 1000 10000] [--folders 1]

`--folders 1` (the default) puts every variable in one folder: the worst case for resolving
paths one segment at a time (each path browses the whole folder). Prints figures; never
asserted in tests. `bench.run` calls `measure` with one size (10,000 items, 1,000 in its quick
run) for issue 18's start-up target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import subprocess
import sys
import time
from typing import Any

LIMIT_S = 300.0


async def _serve(port: int, folders: int, per_folder: int) -> None:
    from testkit.opcua_servers import serve_tree

    async with serve_tree(port, folders, per_folder):
        print("ready", flush=True)
        await asyncio.Event().wait()


async def _start_up(endpoint: str, nodes: list[str]) -> tuple[float, int]:
    """Seconds from `run()` until every node delivered a value; Browse requests made."""
    from asyncua.client.ua_session import UaSession

    from connectors.opcua import OpcUaConnector, OpcUaSettings, OpcUaSignalSettings

    browses = 0
    real_browse = UaSession.browse

    async def browse(self: UaSession, parameters: Any) -> Any:
        nonlocal browses
        browses += 1
        return await real_browse(self, parameters)

    settings = OpcUaSettings.model_validate(
        {"endpoint": endpoint, "publishing_interval_ms": 100, "request_timeout_s": 60}
    )
    connector = OpcUaConnector(
        "bench", settings, [OpcUaSignalSettings(node=node) for node in nodes]
    )
    seen: set[str] = set()
    everything = asyncio.Event()

    async def emit(batch: Any) -> None:
        seen.update(reading.signal for reading in batch)
        if len(seen) >= len(nodes):
            everything.set()

    UaSession.browse = browse  # type: ignore[method-assign]
    try:
        started = time.monotonic()
        task = asyncio.create_task(connector.run(emit))
        waiter = asyncio.create_task(everything.wait())
        await asyncio.wait({task, waiter}, timeout=LIMIT_S, return_when=asyncio.FIRST_COMPLETED)
        elapsed = time.monotonic() - started
        if task.done() and not task.cancelled() and task.exception() is not None:
            print(f"the session failed: {task.exception()!r}", file=sys.stderr)
        for pending in (task, waiter):
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
    finally:
        UaSession.browse = real_browse  # type: ignore[method-assign]
    if not everything.is_set():
        health = connector.health
        print(
            f"not every signal delivered: {len(seen)} of {len(nodes)} after {elapsed:.1f} s; "
            f"last error {health.last_error!r}, {len(health.signal_errors)} signal errors "
            f"{list(health.signal_errors.items())[:3]}",
            file=sys.stderr,
        )
        return float("inf"), browses
    return elapsed, browses


def measure(items: int, folders: int) -> dict[str, float]:
    from testkit.broker import free_loopback_port
    from testkit.opcua_servers import TREE_NAMESPACE

    per_folder = items // folders
    port = free_loopback_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.browse_paths",
            "--serve",
            "--port",
            str(port),
            "--folders",
            str(folders),
            "--per-folder",
            str(per_folder),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the bench server did not start")
        endpoint = f"opc.tcp://127.0.0.1:{port}/tree/"
        numbered = [(f, v) for f in range(folders) for v in range(per_folder)]
        by_id, _ = asyncio.run(
            _start_up(endpoint, [f"nsu={TREE_NAMESPACE};s=F{f}.V{v}" for f, v in numbered])
        )
        by_path, browses = asyncio.run(
            _start_up(endpoint, [f"Objects/Tree/F{f}/V{v}" for f, v in numbered])
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "items": len(numbered),
        "by_nodeid_s": by_id,
        "by_path_s": by_path,
        "path_browses": browses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--per-folder", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--folders", type=int, default=1, help="folders the items are split in")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args.port, args.folders, args.per_folder))
        return
    print(
        f"start-up until every signal delivered a value (limit {LIMIT_S:.0f} s), "
        f"{args.folders} folder(s)"
    )
    print("items  by NodeId s  by path s  Browse requests (by path)")
    for items in args.items:
        result = measure(items, args.folders)
        print(
            f"{result['items']:>5.0f}  {result['by_nodeid_s']:>11.2f}  "
            f"{result['by_path_s']:>9.2f}  {result['path_browses']:>25.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
