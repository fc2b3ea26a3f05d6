"""`check-config --connect` compares each signal's `unit` with its node's EngineeringUnits, against
a real asyncua server whose variables carry EUInformation as servers write it (UnitId: the
UNECE Rec 20 code packed in an integer; DisplayName: the symbol), through the real CLI."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testkit.agent_process import REPO
from testkit.broker import free_loopback_port
from testkit.opcua_servers import PLANT_NAMESPACE, PlantServer, serve_plant

HEAD = """[agent]
site = "plant-a"
id = "edge-01"
[hub]
url = "mqtt://127.0.0.1:1883"
[[sources]]
name = "line1"
type = "opcua"
endpoint = "{endpoint}"
"""


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


async def edge_agent(*args: str) -> Run:
    """The CLI in a subprocess; the server keeps serving in this event loop meanwhile."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


@pytest.fixture
async def plant() -> AsyncIterator[PlantServer]:
    async with serve_plant(free_loopback_port()) as server:
        yield server


def signal(variable: str, **keys: str | float) -> str:
    lines = [
        "  [[sources.signals]]",
        f'  node = "nsu={PLANT_NAMESPACE};s=Line1.{variable}"',
        '  event = "telemetry"',
        '  asset = "line1/filler"',
    ]
    for key, value in keys.items():
        lines.append(f'  {key} = "{value}"' if isinstance(value, str) else f"  {key} = {value}")
    return "\n".join(lines) + "\n"


def line_of(config: Path, text: str) -> int:
    for number, line in enumerate(config.read_text().splitlines(), start=1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {config}")


async def test_a_unit_the_node_does_not_have_is_refused_with_its_line_and_the_fix(
    plant: PlantServer, tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        HEAD.format(endpoint=plant.endpoint)
        + signal("Filler.Temperature", unit="[degF]")  # the node says CEL (°C)
        + signal("Capper.Pressure", unit="kPa", scale=10.0)  # bar -> kPa is 100
        + signal("Labeler.Pressure", unit="m3/h")  # not even a pressure
        + signal("Capper.Temperature", unit="Cel", to_unit="[degF]")  # converts on purpose
    )
    result = await edge_agent("check-config", str(config), "--connect")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout
    fahrenheit = line_of(config, '"[degF]"')
    assert (
        f"{config}:{fahrenheit}: source line1: nsu={PLANT_NAMESPACE};s=Line1.Filler.Temperature: "
        "unit = '[degF]', but the node's EngineeringUnits are Cel (°C, UNECE CEL): the server "
        "sends Cel; set unit = 'Cel', and to_unit = '[degF]' to have the agent convert it"
    ) in out, out
    kpa = line_of(config, '"kPa"')
    assert (
        f"{config}:{kpa}: source line1: nsu={PLANT_NAMESPACE};s=Line1.Capper.Pressure: "
        "unit = 'kPa', but the node's EngineeringUnits are bar (UNECE BAR), and scale = 10, "
        "offset = 0 do not convert bar to kPa: set scale = 100, offset = 0"
    ) in out, out
    flow = line_of(config, '"m3/h"')
    assert (
        f"{config}:{flow}: source line1: nsu={PLANT_NAMESPACE};s=Line1.Labeler.Pressure: "
        "unit = 'm3/h', but the node's EngineeringUnits are bar (UNECE BAR), which measure "
        "pressure, not volume flow: set unit = 'bar'"
    ) in out, out
    assert (
        f"source line1: nsu={PLANT_NAMESPACE};s=Line1.Capper.Temperature: OK ("
        f"ns=2;s=Line1.Capper.Temperature, Variable, Double, unit Cel (°C, UNECE CEL))"
    ) in out, out
    assert "3 signal unit(s) differ from their nodes' EngineeringUnits" in result.stderr


async def test_units_that_are_the_nodes_or_convert_on_purpose_pass(
    plant: PlantServer, tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        HEAD.format(endpoint=plant.endpoint)
        + signal("Filler.Temperature", unit="Cel", to_unit="K")
        + signal("Filler.Pressure", unit="bar")
        + signal("Capper.Pressure", unit="kPa", scale=100.0)  # bar * 100 = kPa, exactly
        + signal("Filler.Speed", unit="{rpm}")  # no UnitId: the display name "rpm"
        + signal("Labeler.Temperature")  # no unit: said, not refused
        + signal("Viscosity", unit="cP")  # UNECE C7 is not in the table; "cP" is UCUM
    )
    result = await edge_agent("check-config", str(config), "--connect")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count(": OK (") == 6, out
    assert "Line1.Capper.Pressure, Variable, Double, unit bar (UNECE BAR), scaled to kPa)" in out
    assert "unit Cel (°C, UNECE CEL); the signal sets no `unit`)" in out
    assert "unit cP (UNECE C7))" in out
