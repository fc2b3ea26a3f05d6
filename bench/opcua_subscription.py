"""Benchmark: OPC UA subscription throughput into the buffer, with 1,000 and 10,000 items.

A local asyncua server runs in its own process (`--serve`) with N Double variables and changes
every one of them `--rate` times per second. The agent side, in this process, is the real
path without MQTT: `OpcUaConnector` (one subscription, N monitored items) → `Pipeline`
(mapping to telemetry events) → `SqliteBuffer` (synchronous = normal). After a warm-up it
measures, over `--seconds`:

- data changes per second the agent turned into buffered events (accepted by the buffer);
- CPU time of this process per notification (connector + mapping + buffer), in µs;
- the changes the server offered per second (so a server-bound figure is seen as such).

    .venv/bin/python -m bench.opcua_subscription [--items 1000 10000] [--rate 5] [--seconds 10]

Prints figures; never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NAMESPACE = "urn:plant-edge-agent:bench"


async def serve(items: int, port: int, rate: float) -> None:
    """The server process: N variables, each changed `rate` times per second."""
    from asyncua import ua
    from asyncua.server.server import Server

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    index = await server.register_namespace(NAMESPACE)
    folder = await server.nodes.objects.add_object(ua.NodeId("Bench", index), "Bench")
    node_ids = []
    for number in range(items):
        node = await folder.add_variable(
            ua.NodeId(f"V{number}", index), f"V{number}", ua.Variant(0.0, ua.VariantType.Double)
        )
        node_ids.append(node.nodeid)
    async with server:
        print("ready", flush=True)
        tick = 0
        period = 1.0 / rate
        started = time.monotonic()
        while True:
            tick += 1
            for node_id in node_ids:
                await server.write_attribute_value(
                    node_id, ua.DataValue(ua.Variant(float(tick), ua.VariantType.Double))
                )
            await asyncio.sleep(max(0.0, started + tick * period - time.monotonic()))


def _config(items: int, port: int, state_dir: Path) -> Any:
    from config.schema import AgentConfig

    signals = [
        {"node": f"nsu={NAMESPACE};s=V{number}", "event": "telemetry", "asset": "bench/line"}
        for number in range(items)
    ]
    return AgentConfig.model_validate(
        {
            "agent": {"site": "bench", "id": "edge-01", "state_dir": str(state_dir)},
            "hub": {"url": "mqtt://127.0.0.1:1883"},
            "sources": [
                {
                    "name": "bench",
                    "type": "opcua",
                    "endpoint": f"opc.tcp://127.0.0.1:{port}/bench/",
                    "publishing_interval_ms": 100,
                    "request_timeout_s": 30,
                    "watchdog_interval_s": 10,
                    "signals": signals,
                }
            ],
        }
    )


def measure(items: int, rate: float, seconds: float, warmup: float) -> dict[str, float]:
    """Start the server process, measure against it, stop it."""
    from tests.support.broker import free_loopback_port

    port = free_loopback_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.opcua_subscription", "--serve", "--items", str(items),
         "--port", str(port), "--rate", str(rate)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the bench server did not start")
        return asyncio.run(_measure(items, port, rate, seconds, warmup))
    finally:
        server.terminate()
        server.wait(timeout=30)


async def _measure(
    items: int, port: int, rate: float, seconds: float, warmup: float
) -> dict[str, float]:
    from agent.mapping import Mapper
    from agent.pipeline import Pipeline
    from buffer.sqlite import SqliteBuffer
    from connectors.opcua import OpcUaConnector

    with tempfile.TemporaryDirectory() as state:
        config = _config(items, port, Path(state))
        source = config.sources[0]
        path = Path(state) / "buffer.sqlite"
        async with SqliteBuffer.open(path, synchronous="normal") as buf:
            pipeline = Pipeline(Mapper.from_config(config), buf, site="bench", agent="edge-01")
            connector = OpcUaConnector(source.name, source, source.signals)
            async with asyncio.TaskGroup() as group:
                pipe = group.create_task(pipeline.run())
                reader = group.create_task(connector.run(pipeline.emit))
                deadline = time.monotonic() + 120
                while not connector.health.connected or connector.health.readings_total < items:
                    if time.monotonic() > deadline or reader.done():
                        raise RuntimeError(f"not subscribed: {connector.health}")
                    await asyncio.sleep(0.1)
                await asyncio.sleep(warmup)
                accepted0 = pipeline.counters.events_accepted_total
                notified0 = connector.health.readings_total
                cpu0, wall0 = time.process_time(), time.monotonic()
                await asyncio.sleep(seconds)
                accepted1 = pipeline.counters.events_accepted_total
                notified1 = connector.health.readings_total
                cpu1, wall1 = time.process_time(), time.monotonic()
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                await pipeline.stop(pipe, 10.0)
    wall = wall1 - wall0
    notifications = notified1 - notified0
    return {
        "items": items,
        "offered_per_s": items * rate,
        "notifications_per_s": notifications / wall,
        "buffered_events_per_s": (accepted1 - accepted0) / wall,
        "cpu_us_per_notification": (cpu1 - cpu0) / max(notifications, 1) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rate", type=float, default=5.0, help="changes per item per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.items[0], args.port, args.rate))
        return
    print("items  offered/s  notifications/s  buffered events/s  CPU µs/notification")
    for items in args.items:
        result = measure(items, args.rate, args.seconds, args.warmup)
        print(
            f"{result['items']:>5}  {result['offered_per_s']:>9.0f}  "
            f"{result['notifications_per_s']:>15.0f}  {result['buffered_events_per_s']:>17.0f}  "
            f"{result['cpu_us_per_notification']:>19.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
