"""A simulated filling line served over OPC UA (asyncua), for the demo, tests and benchmarks.

Nodes (namespace `urn:plant-edge-agent:demo-plant`, index 2, string NodeIds):

    Line1.Filler.GoodCount    Int64   good parts, counts up while running
    Line1.Filler.RejectCount  Int64   rejected parts, now and then
    Line1.Filler.State        Int32   0 idle, 1 running, 2 down, 3 fault (cycles)
    Line1.Filler.Temperature  Double  Cel, random walk around 65
    Line1.Tank.Temperature    Double  Cel, random walk around 20

`python -m agent.demo.plant --port 4840` serves it until SIGINT/SIGTERM. Tests drive values
themselves with `simulate=False` and `write()`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes

NAMESPACE = "urn:plant-edge-agent:demo-plant"
GOOD_COUNT = "ns=2;s=Line1.Filler.GoodCount"
REJECT_COUNT = "ns=2;s=Line1.Filler.RejectCount"
STATE = "ns=2;s=Line1.Filler.State"
FILLER_TEMPERATURE = "ns=2;s=Line1.Filler.Temperature"
TANK_TEMPERATURE = "ns=2;s=Line1.Tank.Temperature"

_NODES: list[tuple[str, str, object, ua.VariantType]] = [
    ("Line1.Filler.GoodCount", "GoodCount", 0, ua.VariantType.Int64),
    ("Line1.Filler.RejectCount", "RejectCount", 0, ua.VariantType.Int64),
    ("Line1.Filler.State", "State", 0, ua.VariantType.Int32),
    ("Line1.Filler.Temperature", "Temperature", 65.0, ua.VariantType.Double),
    ("Line1.Tank.Temperature", "TankTemperature", 20.0, ua.VariantType.Double),
]

# A batch reactor next to the line (object Reactor1), in plant units, for the mapping examples:
# temperature in degF, a material code and a batch id as text, a done bit, a stop bit and its
# reason code. Only tests write these; the simulation leaves them alone.
REACTOR_TEMPERATURE = "ns=2;s=Reactor1.Temperature"
REACTOR_MATERIAL = "ns=2;s=Reactor1.Material"
REACTOR_BATCH = "ns=2;s=Reactor1.BatchId"
REACTOR_DONE = "ns=2;s=Reactor1.BatchDone"
REACTOR_STOPPED = "ns=2;s=Reactor1.Stopped"
REACTOR_STOP_REASON = "ns=2;s=Reactor1.StopReason"

_REACTOR_NODES: list[tuple[str, str, object, ua.VariantType]] = [
    ("Reactor1.Temperature", "Temperature", 68.0, ua.VariantType.Double),
    ("Reactor1.Material", "Material", "", ua.VariantType.String),
    ("Reactor1.BatchId", "BatchId", "", ua.VariantType.String),
    ("Reactor1.BatchDone", "BatchDone", False, ua.VariantType.Boolean),
    ("Reactor1.Stopped", "Stopped", False, ua.VariantType.Boolean),
    ("Reactor1.StopReason", "StopReason", 0, ua.VariantType.Int32),
]


@dataclass
class PlantState:
    good: int = 0
    reject: int = 0
    state: int = 1
    state_ticks: int = 0
    filler_temp: float = 65.0
    tank_temp: float = 20.0


class FillingLinePlant:
    """The OPC UA server with its nodes; `write` sets a value with a source timestamp."""

    def __init__(self, server: Server, variables: dict[str, object], port: int) -> None:
        self.server = server
        self.port = port
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/plant/"
        self._variables = variables

    async def write(
        self,
        node: str,
        value: object,
        *,
        timestamp: datetime | None = None,
        status: int = StatusCodes.Good,
    ) -> None:
        """Set `node` to `value` with a source timestamp (default now) and a status code."""
        variable = self._variables[node]
        variant_type = next(
            t for n, _, _, t in [*_NODES, *_REACTOR_NODES] if f"ns=2;s={n}" == node
        )
        data_value = ua.DataValue(
            ua.Variant(value, variant_type),
            StatusCode=ua.StatusCode(status),
            SourceTimestamp=timestamp or datetime.now(UTC),
            ServerTimestamp=datetime.now(UTC),
        )
        await variable.write_value(data_value)  # type: ignore[attr-defined]

    async def simulate(self, ticks_per_second: float = 10.0, seed: int | None = None) -> None:
        """Run the line until cancelled: counts, state cycle and temperatures change."""
        rng = random.Random(seed)
        plant = PlantState()
        period = 1.0 / ticks_per_second
        # A fixed cycle: running 60 ticks, idle 15, running 60, fault 10, down 10.
        cycle = [(1, 60), (0, 15), (1, 60), (3, 10), (2, 10)]
        phase = 0
        await self.write(STATE, plant.state)
        while True:
            await asyncio.sleep(period)
            plant.state_ticks += 1
            if plant.state_ticks >= cycle[phase][1]:
                phase = (phase + 1) % len(cycle)
                plant.state, plant.state_ticks = cycle[phase][0], 0
                await self.write(STATE, plant.state)
            if plant.state == 1:
                plant.good += rng.randint(1, 3)
                await self.write(GOOD_COUNT, plant.good)
                if rng.random() < 0.05:
                    plant.reject += 1
                    await self.write(REJECT_COUNT, plant.reject)
            plant.filler_temp += rng.uniform(-0.2, 0.2) + (65.0 - plant.filler_temp) * 0.05
            plant.tank_temp += rng.uniform(-0.05, 0.05) + (20.0 - plant.tank_temp) * 0.05
            await self.write(FILLER_TEMPERATURE, round(plant.filler_temp, 3))
            await self.write(TANK_TEMPERATURE, round(plant.tank_temp, 3))


@asynccontextmanager
async def serve_plant(port: int, host: str = "127.0.0.1") -> AsyncIterator[FillingLinePlant]:
    """Start the OPC UA server on host:port and yield the plant; stop it on exit."""
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://{host}:{port}/plant/")
    server.set_server_name("plant-edge-agent demo filling line")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    index = await server.register_namespace(NAMESPACE)
    if index != 2:
        raise RuntimeError(f"demo namespace got index {index}, expected 2")
    objects = server.nodes.objects
    line = await objects.add_object(ua.NodeId("Line1", index), "Line1")
    variables: dict[str, object] = {}
    for identifier, browse_name, initial, variant_type in _NODES:
        variable = await line.add_variable(
            ua.NodeId(identifier, index), browse_name, ua.Variant(initial, variant_type)
        )
        variables[f"ns=2;s={identifier}"] = variable
    reactor = await objects.add_object(ua.NodeId("Reactor1", index), "Reactor1")
    for identifier, browse_name, initial, variant_type in _REACTOR_NODES:
        variable = await reactor.add_variable(
            ua.NodeId(identifier, index), browse_name, ua.Variant(initial, variant_type)
        )
        variables[f"ns=2;s={identifier}"] = variable
    async with server:
        yield FillingLinePlant(server, variables, port)


async def _main(port: int, rate: float, seed: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with serve_plant(port) as plant:
        print(f"plant serving opc.tcp://127.0.0.1:{port}/plant/", flush=True)
        simulation = asyncio.create_task(plant.simulate(rate, seed))
        await stop.wait()
        simulation.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await simulation


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the simulated filling line over OPC UA.")
    parser.add_argument("--port", type=int, default=4840)
    parser.add_argument("--rate", type=float, default=10.0, help="simulation ticks per second")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    asyncio.run(_main(args.port, args.rate, args.seed))


if __name__ == "__main__":
    main()
