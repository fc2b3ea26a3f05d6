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

The same module holds the OPC UA side of `bench.ingest` (the whole agent process, end to end):
the server process driven by commands (`serve_commands`, "go RATE SECONDS": change its items
round robin at RATE changes/s, 0 = as fast as it can, and report which changes it made; several
of them hold disjoint items, `--first-item`), and the bare client, the reference ceiling
(`count_notifications`): a plain asyncua client process, one client per server, that
subscribes to the same items the way the connector does and only counts the notifications.
Both server modes skip asyncua's defensive copy of each written value (`_without_value_copies`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC
from pathlib import Path
from typing import Any

NAMESPACE = "urn:plant-edge-agent:bench"


def _without_value_copies() -> None:
    """Make this process's asyncua server keep each written DataValue as it is, instead of a
    deep copy per monitored item (`MonitoredItemValues.set_current_datavalue`): the copy guards
    against a writer that mutates a value after writing it, which the bench server never does
    (each `_value` is new), and it was about 70 % of the server's CPU per change (cProfile),
    which bounded what one server process could offer. What the server sends is unchanged."""
    from asyncua.server.monitored_item_service import MonitoredItemValues

    def keep(values: MonitoredItemValues, current: Any) -> None:
        values.old_dvalue = values.current_dvalue
        values.current_dvalue = current

    MonitoredItemValues.set_current_datavalue = keep  # type: ignore[method-assign, assignment]


async def _address_space(items: int, port: int, first: int = 0) -> tuple[Any, list[Any]]:
    """A server (not started) with N Double variables `V{first}`..`V{first+N-1}` (value 0.0):
    several servers of one bench hold disjoint numbers, so a variable's name says its item."""
    from asyncua import ua
    from asyncua.server.server import Server

    _without_value_copies()
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    index = await server.register_namespace(NAMESPACE)
    folder = await server.nodes.objects.add_object(
        ua.NodeId(ua.String("Bench"), ua.Int16(index)), "Bench"
    )
    node_ids = []
    for number in range(first, first + items):
        node = await folder.add_variable(
            ua.NodeId(ua.String(f"V{number}"), ua.Int16(index)),
            f"V{number}",
            ua.Variant(0.0, ua.VariantType.Double),
        )
        node_ids.append(node.nodeid)
    return server, node_ids


def _value(number: float) -> Any:
    """A value stamped now, at the source: the agent's event `time` is this instant."""
    from asyncua import ua

    now = ua.DateTime.now(UTC)
    return ua.DataValue(
        ua.Variant(number, ua.VariantType.Double), SourceTimestamp=now, ServerTimestamp=now
    )


async def serve(items: int, port: int, rate: float) -> None:
    """The server process: N variables, each changed `rate` times per second."""
    server, node_ids = await _address_space(items, port)
    async with server:
        print("ready", flush=True)
        tick = 0
        period = 1.0 / rate
        started = time.monotonic()
        while True:
            tick += 1
            for node_id in node_ids:
                await server.write_attribute_value(node_id, _value(float(tick)))
            await asyncio.sleep(max(0.0, started + tick * period - time.monotonic()))


# Changes made between two yields to the server's own tasks (publishing), and the pacing step.
_CHUNK = 200
_STEP_S = 0.01


async def serve_commands(items: int, port: int, first_item: int = 0) -> None:
    """The server process of `bench.ingest`, driven by lines on stdin.

    `go RATE SECONDS`: make changes for SECONDS, RATE per second (0: as fast as this process
    can), then print `done FIRST COUNT ELAPSED_S`. Change number g (counted from 0 over the
    server's life) sets its item `first_item + g % N` to g // N + 1, so every change is a
    distinct (item, value) pair a subscriber can check off, also across several servers
    holding disjoint items. Any other line, or end of input, stops the server.
    """
    server, node_ids = await _address_space(items, port, first_item)
    async with server:
        print("ready", flush=True)
        made = 0
        while (words := (await asyncio.to_thread(sys.stdin.readline)).split())[:1] == ["go"]:
            rate, seconds = float(words[1]), float(words[2])
            first, started = made, time.monotonic()
            while (now := time.monotonic()) < started + seconds:
                due = first + int((now - started) * rate) if rate > 0 else made + _CHUNK
                for number in range(made, min(due, made + _CHUNK)):
                    await server.write_attribute_value(
                        node_ids[number % items], _value(float(number // items + 1))
                    )
                made = max(made, min(due, made + _CHUNK))
                await asyncio.sleep(_STEP_S if rate > 0 else 0)
            print(f"done {first} {made - first} {time.monotonic() - started:.3f}", flush=True)


async def count_notifications(
    servers: Sequence[tuple[int, int, int]], publishing_interval_ms: float
) -> None:
    """The bare client process: one client per server (port, first item, items), each
    subscribing to its items the way the connector does (one subscription, async iterator,
    same publishing interval, sampling interval 0, queue 100); it counts data changes and
    nothing else. Answers each `count` line on stdin with the count over all servers so far;
    any other line, or end of input, stops it."""
    from asyncua.client.client import Client

    count = 0

    def counted() -> None:
        nonlocal count
        count += 1

    async with contextlib.AsyncExitStack() as stack:
        consumers = []
        for port, first, items in servers:
            client = await stack.enter_async_context(
                Client(f"opc.tcp://127.0.0.1:{port}/bench/", timeout=30)
            )
            subscription = await _subscribe(client, first, items, publishing_interval_ms)
            consumers.append(asyncio.create_task(_consume(subscription, counted)))
        print("subscribed", flush=True)
        while (await asyncio.to_thread(sys.stdin.readline)).strip() == "count":
            print(count, flush=True)
        for consumer in consumers:
            consumer.cancel()
        for consumer in consumers:
            with contextlib.suppress(asyncio.CancelledError):
                await consumer


async def _subscribe(client: Any, first: int, items: int, publishing_interval_ms: float) -> Any:
    """One subscription on `client` with a monitored item for each of `V{first}`.. (N)."""
    from asyncua import ua
    from asyncua.ua.attribute_ids import AttributeIds

    index = await client.get_namespace_index(NAMESPACE)
    parameters = ua.CreateSubscriptionParameters()
    parameters.RequestedPublishingInterval = publishing_interval_ms
    parameters.RequestedMaxKeepAliveCount = 50
    parameters.RequestedLifetimeCount = 200
    parameters.MaxNotificationsPerPublish = 10_000
    parameters.PublishingEnabled = True
    subscription = await client.create_subscription(parameters, queue_maxsize=50_000)
    requests = []
    for number in range(first, first + items):
        monitoring = ua.MonitoringParameters()
        monitoring.ClientHandle = number + 1
        monitoring.SamplingInterval = 0
        monitoring.QueueSize = 100
        monitoring.DiscardOldest = True
        request = ua.MonitoredItemCreateRequest()
        request.ItemToMonitor = ua.ReadValueId(
            NodeId=ua.NodeId(ua.String(f"V{number}"), ua.Int16(index)),
            AttributeId=AttributeIds.Value,
        )
        request.MonitoringMode = ua.MonitoringMode.Reporting
        request.RequestedParameters = monitoring
        requests.append(request)
    await subscription.create_monitored_items(requests)
    return subscription


async def _consume(subscription: Any, counted: Callable[[], None]) -> None:
    from asyncua.common.subscription import DataChangeEvent

    async for event in subscription:
        if isinstance(event, DataChangeEvent):
            counted()


class LineChild:
    """A process of this module spoken to in lines: commands on its stdin, answers on its
    stdout (read by a thread, so every wait is bounded). `close()` always ends it."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.opcua_subscription", *args],
            cwd=Path(__file__).resolve().parents[1],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def expect(self, timeout: float) -> str:
        """The next line it prints (bounded wait)."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.process.args!r}: no answer within {timeout} s") from None
        if line is None:
            self._lines.put(None)
            raise RuntimeError(f"{self.process.args!r} exited ({self.process.poll()})")
        return line

    def send(self, command: str) -> None:
        """One command line, not waiting for its answer (`expect` reads it)."""
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def ask(self, command: str, timeout: float) -> str:
        self.send(command)
        return self.expect(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> LineChild:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


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
    from testkit.broker import free_loopback_port

    port = free_loopback_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.opcua_subscription",
            "--serve",
            "--items",
            str(items),
            "--port",
            str(port),
            "--rate",
            str(rate),
        ],
        stdout=subprocess.PIPE,
        text=True,
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
    from agent.flow.mapping import Mapper
    from agent.flow.pipeline import Pipeline
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


def _server_of(text: str) -> tuple[int, int, int]:
    """`PORT:FIRST:ITEMS` (a `--servers` word): one server of the bare client."""
    port, first, items = (int(part) for part in text.split(":"))
    return port, first, items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--items", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rate", type=float, default=5.0, help="changes per item per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--commands", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--first-item", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--servers", nargs="+", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--bare-client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--publishing-interval-ms", type=float, default=100.0, help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    if args.serve:
        with contextlib.suppress(KeyboardInterrupt):
            if args.commands:
                asyncio.run(serve_commands(args.items[0], args.port, args.first_item))
            else:
                asyncio.run(serve(args.items[0], args.port, args.rate))
        return
    if args.bare_client:
        with contextlib.suppress(KeyboardInterrupt):
            servers = [_server_of(text) for text in args.servers] or [(args.port, 0, args.items[0])]
            asyncio.run(count_notifications(servers, args.publishing_interval_ms))
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
