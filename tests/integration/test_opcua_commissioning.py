"""Commissioning against real asyncua servers, through the real CLI in a subprocess: browse ->
`--emit toml` / `--emit csv` -> the config loader -> `check-config --connect`, and the errors an
OT engineer meets on the way (wrong endpoint, no security where the server needs it, an
untrusted agent certificate, a missing node, a Bad value), each with what to do."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.ua.status_codes import StatusCodes

from config.loader import load_config
from connectors.opcua.certificates import create_application_certificate
from testkit.agent_process import REPO
from testkit.broker import free_loopback_port
from testkit.opcua_servers import (
    ALL_SECURE,
    PLANT_LINES,
    PLANT_MACHINES,
    PLANT_NAMESPACE,
    TEST_NAMESPACE,
    PlantServer,
    serve_line,
    serve_plant,
    thumbprint_of,
)

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
        sys.executable, "-m", "agent", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


@pytest.fixture
async def plant() -> AsyncIterator[PlantServer]:
    async with serve_plant(free_loopback_port()) as server:
        yield server


def no_chatter(run: Run) -> None:
    """Nothing of asyncua's own logging, no tracebacks, no Python reprs of errors."""
    assert "session timeout" not in run.stderr, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert "[Errno" not in run.stdout + run.stderr, run.stdout + run.stderr


async def test_browse_emit_toml_is_a_config_that_check_config_connect_accepts(
    plant: PlantServer, tmp_path: Path
) -> None:
    emitted = await edge_agent("opcua", "browse", plant.endpoint, "--emit", "toml",
                               "--node", "Objects/Plant")
    assert emitted.returncode == 0, emitted.stderr
    no_chatter(emitted)
    config = tmp_path / "agent.toml"
    config.write_text(HEAD.format(endpoint=plant.endpoint) + emitted.stdout)
    signals = load_config(config).sources[0].signals
    # 3 lines x 3 machines x 5 usable variables (Recipe is a String), 3 Viscosity, 3 Alarms.
    assert len(signals) == 9 * 5 + 3 + 3
    names = [signal.name for signal in signals]
    assert len(set(names)) == len(names)
    by_node = {signal.node: signal for signal in signals}

    def at(path: str) -> Any:
        return by_node[f"nsu={PLANT_NAMESPACE};s={path}"]

    temperature = at("Line2.Capper.Temperature")
    assert (temperature.name, temperature.event, temperature.asset, temperature.unit) == (
        "Line2.Capper.Temperature", "telemetry", "plant/line2/capper", "Cel"
    )
    assert at("Line1.Filler.Pressure").unit == "bar"  # UNECE BAR
    assert at("Line1.Filler.Speed").unit == "{rpm}"  # no UnitId: from the display name
    # Centipoise: UNECE C7 is not in the agent's Rec 20 table, but the display name is valid
    # UCUM (an unknown one is left to the engineer: tests/unit/test_opcua_tags.py).
    assert at("Line1.Viscosity").unit == "cP"
    assert "EngineeringUnits 'cP' (display name)" in emitted.stdout
    assert at("Line3.Labeler.GoodCount").event == "production.count"
    assert at("Line1.Filler.Running").event == "telemetry"
    alarms = at("Line1.Alarms")
    assert (alarms.event, alarms.mode, alarms.asset) == ("machine.alarm", "events", "plant/line1")
    assert f"nsu={PLANT_NAMESPACE};s=Line1.Filler.Recipe): String" in emitted.stdout

    checked = await edge_agent("check-config", str(config), "--connect")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    no_chatter(checked)
    assert checked.stdout.count(": OK (") == len(signals)


async def test_emit_csv_imports_to_the_same_signals_as_emit_toml(
    plant: PlantServer, tmp_path: Path
) -> None:
    start = "Objects/Plant/Line1"
    toml = await edge_agent("opcua", "browse", plant.endpoint, "--emit", "toml", "--node", start)
    csv = await edge_agent("opcua", "browse", plant.endpoint, "--emit", "csv", "--node", start)
    assert toml.returncode == 0 and csv.returncode == 0, toml.stderr + csv.stderr
    head = HEAD.format(endpoint=plant.endpoint)
    from_toml = tmp_path / "from-toml.toml"
    from_toml.write_text(head + toml.stdout)
    tag_list = tmp_path / "tags.csv"
    tag_list.write_text(csv.stdout, newline="")
    imported = await edge_agent("opcua", "tags", "import", "-c", str(from_toml), str(tag_list))
    assert imported.returncode == 0, imported.stderr
    from_csv = tmp_path / "from-csv.toml"
    from_csv.write_text(head + imported.stdout)
    expected = [s.model_dump() for s in load_config(from_toml).sources[0].signals]
    assert [s.model_dump() for s in load_config(from_csv).sources[0].signals] == expected
    assert len(expected) == 3 * 5 + 2
    # The asset is the whole browse path from Objects, wherever the browse started.
    assert {signal["asset"] for signal in expected} == {
        "plant/line1/filler", "plant/line1/capper", "plant/line1/labeler", "plant/line1"
    }
    by_id = await edge_agent("opcua", "browse", plant.endpoint, "--emit", "toml",
                             "--node", f"nsu={PLANT_NAMESPACE};s=Line1.Filler")
    assert by_id.returncode == 0, by_id.stderr
    assert by_id.stdout.count('asset = "plant/line1/filler"') == 5


async def test_browse_is_a_clean_tree_without_the_server_object(plant: PlantServer) -> None:
    tree = await edge_agent("opcua", "browse", plant.endpoint, "--depth", "4")
    assert tree.returncode == 0, tree.stderr
    no_chatter(tree)
    lines = tree.stdout.splitlines()
    assert lines[0] == "i=85  Objects  Object"
    assert not any("i=2253" in line for line in lines)  # the Server object
    assert lines[-1] == "(not shown: Locations, Server, Aliases; --all shows them)" or (
        lines[-1].startswith("(not shown: ") and "Server" in lines[-1]
    )
    node = f"nsu={PLANT_NAMESPACE};s=Line1.Filler"
    # Objects, Plant, Line1, Filler, variable: the variables are 4 levels down.
    indent = "  " * 4
    assert f"{indent}{node}.Temperature  Temperature  Variable  Double = 21.5  unit Cel (°C)" in (
        lines
    )
    assert f"{indent}{node}.Running  Running  Variable  Boolean = true" in lines
    assert f'{indent}{node}.Recipe  Recipe  Variable  String = "cola-0.5l"' in lines
    alarms = f"nsu={PLANT_NAMESPACE};s=Line1.Alarms  Alarms  Object  (event notifier)"
    assert f"{indent[2:]}{alarms}" in lines
    assert "EngineeringUnits" not in tree.stdout  # shown as the unit, not as a child
    assert "EUInformation(" not in tree.stdout and "LocalizedText(" not in tree.stdout
    everything = await edge_agent("opcua", "browse", plant.endpoint, "--depth", "1", "--all")
    assert "i=2253  Server  Object" in everything.stdout


async def test_read_exits_non_zero_on_a_bad_status_and_names_near_nodes(tmp_path: Path) -> None:
    async with serve_line(free_loopback_port()) as server:
        good = await edge_agent("opcua", "read", server.endpoint, "Objects/Line1/Temperature")
        assert good.returncode == 0, good.stderr
        no_chatter(good)
        assert good.stdout.startswith("Objects/Line1/Temperature = 20.0  (Good; source time ")
        await server.variables["Count"].write_value(ua.DataValue(
            ua.Variant(0, ua.VariantType.Int64),
            StatusCode=ua.StatusCode(ua.UInt32(StatusCodes.BadSensorFailure)),
        ))
        bad = await edge_agent("opcua", "read", server.endpoint, "Objects/Line1/Count")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "(BadSensorFailure;" in bad.stdout
        assert "Objects/Line1/Count: the server gives no usable value (BadSensorFailure)" in (
            bad.stderr
        )
        typo = f"nsu={TEST_NAMESPACE};s=Line1.Temperatur"
        missing = await edge_agent("opcua", "read", server.endpoint, typo)
        assert missing.returncode == 1
        assert (f"the server has no node {typo!r} (BadNodeIdUnknown); did you mean "
                f"'nsu={TEST_NAMESPACE};s=Line1.Temperature'?") in missing.stderr
        path = await edge_agent("opcua", "read", server.endpoint, "Objects/Line1/Temprature")
        assert path.returncode == 1
        assert "Objects/Line1 has no child 'Temprature'; did you mean 'Temperature'?" in (
            path.stderr
        )


def _line_of(config: Path, text: str, after: int = 0) -> int:
    for number, line in enumerate(config.read_text().splitlines(), start=1):
        if number > after and text in line:
            return number
    raise AssertionError(f"{text!r} not in {config}")


async def test_check_config_connect_names_file_line_and_the_nearest_node(
    plant: PlantServer, tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(HEAD.format(endpoint=plant.endpoint) + f"""
  [[sources.signals]]
  node = "nsu={PLANT_NAMESPACE};s=Line1.Filler.Temperature"
  event = "telemetry"
  asset = "line1/filler"
  [[sources.signals]]
  node = "nsu={PLANT_NAMESPACE};s=Line1.Filler.Presure"
  event = "telemetry"
  asset = "line1/filler"
  [[sources.signals]]
  node = "Objects/Plant/Line1/Filer/Speed"
  event = "telemetry"
  asset = "line1/filler"
""")
    result = await edge_agent("check-config", str(config), "--connect")
    assert result.returncode == 1
    no_chatter(result)
    presure = _line_of(config, "Presure")
    assert (f"{config}:{presure}: source line1: nsu={PLANT_NAMESPACE};s=Line1.Filler.Presure: "
            f"the server says BadNodeIdUnknown: did you mean "
            f"'nsu={PLANT_NAMESPACE};s=Line1.Filler.Pressure'?") in result.stdout
    filer = _line_of(config, "Filer")
    assert (f"{config}:{filer}: source line1: Objects/Plant/Line1/Filer/Speed: "
            "Objects/Plant/Line1 has no child 'Filer'; did you mean 'Filler'") in result.stdout
    assert "source line1: nsu=" in result.stdout and ": OK (" in result.stdout
    assert "2 problem(s)" in result.stderr


async def test_nothing_listening_says_so_once_with_the_source_line(tmp_path: Path) -> None:
    port = free_loopback_port()  # nothing listens there
    config = tmp_path / "agent.toml"
    config.write_text("# a comment first, so the source is not on line 1\n" + HEAD.format(
        endpoint=f"opc.tcp://127.0.0.1:{port}/line/"
    ) + """
  [[sources.signals]]
  node = "ns=2;s=A"
  event = "telemetry"
  asset = "line1"
""")
    result = await edge_agent("check-config", str(config), "--connect")
    assert result.returncode == 1
    no_chatter(result)
    source_line = _line_of(config, "[[sources]]")
    assert re.search(
        rf"^{re.escape(str(config))}:{source_line}: source line1: cannot connect to "
        rf"opc\.tcp://127\.0\.0\.1:{port}/line/: nothing listens on 127\.0\.0\.1 port {port} "
        r"\(connection refused, errno 111\): is the OPC UA server running",
        result.stdout, re.MULTILINE,
    ), result.stdout
    assert result.stdout.count("cannot connect") == 1
    browse = await edge_agent("opcua", "browse", f"opc.tcp://127.0.0.1:{port}/line/")
    assert browse.returncode == 1
    assert f"nothing listens on 127.0.0.1 port {port}" in browse.stderr
    assert browse.stderr.count("cannot connect") == 1


async def test_no_security_where_the_server_needs_it_names_what_it_offers(
    tmp_path: Path,
) -> None:
    async with serve_line(free_loopback_port(), pki=tmp_path / "server-pki",
                          policies=ALL_SECURE) as server:
        result = await edge_agent("opcua", "browse", server.endpoint)
    assert result.returncode == 1
    no_chatter(result)
    assert f"{server.endpoint} has no endpoint without security" in result.stderr
    assert "Basic256Sha256/SignAndEncrypt" in result.stderr
    assert "edge-agent certs create" in result.stderr
    assert "No matching endpoints" not in result.stderr


async def test_a_server_that_does_not_trust_the_agent_names_the_thumbprint(
    tmp_path: Path,
) -> None:
    pki = tmp_path / "pki"
    create_application_certificate(
        certificate_path=pki / "own" / "cert.der", key_path=pki / "own" / "private" / "key.pem",
        application_uri="urn:test-host:plant-edge-agent", host_name="localhost",
    )
    other = tmp_path / "other.der"
    create_application_certificate(certificate_path=other, key_path=tmp_path / "other.pem",
                                   application_uri="urn:other")
    async with serve_line(free_loopback_port(), pki=tmp_path / "server-pki",
                          policies=ALL_SECURE, trusted_clients=[other]) as server:
        config = tmp_path / "agent.toml"
        config.write_text(HEAD.format(endpoint=server.endpoint) + """
security_policy = "Basic256Sha256"
application_uri = "urn:test-host:plant-edge-agent"
trust_on_first_use = true
  [[sources.signals]]
  node = "Objects/Line1/Temperature"
  event = "telemetry"
  asset = "line1"
""")
        result = await edge_agent("check-config", str(config), "--connect")
    assert result.returncode == 1, result.stdout + result.stderr
    no_chatter(result)
    thumbprint = thumbprint_of(pki / "own" / "cert.der")
    assert f"{config}:{_line_of(config, '[[sources]]')}: source line1: " in result.stdout
    assert "does not trust the agent's certificate yet" in result.stdout
    assert f"thumbprint {thumbprint}" in result.stdout


def test_the_plant_has_about_fifty_variables() -> None:
    """What the tests above count on: the plant's shape (testkit.opcua_servers)."""
    assert len(PLANT_LINES) * len(PLANT_MACHINES) * 6 + 2 * len(PLANT_LINES) == 60
