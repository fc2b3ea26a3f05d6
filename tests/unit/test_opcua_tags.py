"""config.tags: EngineeringUnits -> UCUM, browse stubs, and the CSV tag list's round trip with
the config (through the real loader and the real `edge-agent opcua tags` commands)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest

from agent.cli import main
from config import tags
from config.loader import load_config
from connectors.opcua.browse import BrowsedNode, EngineeringUnits
from connectors.opcua.config import OpcUaSettings
from connectors.opcua.session import connection_cause

HEAD = """[agent]
site = "plant-a"
id = "edge-01"
[hub]
url = "mqtt://127.0.0.1:1883"
[[sources]]
name = "line1"
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
"""

# Values chosen to break a naive CSV or TOML writer: commas, quotes, semicolons and `=` (every
# nsu= NodeId), a newline and non-ASCII text in a name, tables in `extra`, ints and floats.
TRICKY = HEAD + r'''
  [[sources.signals]]
  name = "Filler, \"main\" temp"
  node = "nsu=urn:plant:a,b;s=Line1.Filler.Temp"
  event = "telemetry"
  asset = "line1/filler"
  unit = "Cel"
  to_unit = "[degF]"
  sampling_interval_ms = 250
  deadband_absolute = 0.5
  decimals = 2
  trigger = { above = 80.0, hysteresis = 2.0 }
  severity = "critical"
  [[sources.signals]]
  name = "Zustand\nLinie 1 \u2013 Füller"
  node = "Objects/2:Line1/State"
  event = "machine.state"
  asset = "line1"
  states = { 0 = "idle", 1 = "running", "1.5" = "down", "-1" = "fault" }
  [[sources.signals]]
  node = "ns=3;i=1001"
  event = "production.count"
  asset = "line1/filler"
  mode = "poll"
  poll_interval_ms = 500.5
  rollover = 65536
  [[sources.signals]]
  node = "nsu=urn:plant;s=Line1.Alarms"
  event = "machine.alarm"
  asset = "line1"
  mode = "events"
  event_types = ["i=2915", "nsu=urn:plant;s=MyAlarm"]
'''


def _signals(path: Path) -> list[object]:
    config = load_config(path)
    return [signal.model_dump() for signal in config.sources[0].signals]


def test_rec20_unit_ids_decode_as_opc_ua_packs_them() -> None:
    assert tags.unit_id_of_rec20("CEL") == 4408652  # OPC UA Part 8's own example
    assert tags.rec20_of_unit_id(4408652) == "CEL"
    assert tags.rec20_of_unit_id(tags.unit_id_of_rec20("C7")) == "C7"
    assert tags.rec20_of_unit_id(-1) is None and tags.rec20_of_unit_id(0) is None


@pytest.mark.parametrize(("eu", "code"), [
    (EngineeringUnits(4408652, "°C"), "Cel"),  # UnitId wins over the display name
    (EngineeringUnits(tags.unit_id_of_rec20("BAR"), "Druck"), "bar"),
    (EngineeringUnits(-1, "°C"), "Cel"),  # no UnitId: the display name, as a symbol
    (EngineeringUnits(-1, "kPa"), "kPa"),  # ... as a UCUM code
    (EngineeringUnits(-1, "KGM"), "kg"),  # ... as a Rec 20 code
    # centipoise: no Rec 20 entry the agent maps, but its display name is valid UCUM
    (EngineeringUnits(tags.unit_id_of_rec20("C7"), "cP"), "cP"),
    (EngineeringUnits(-1, "m3/h"), "m3/h"),  # any UCUM expression, not only the catalogue's
    (EngineeringUnits(-1, "furlong/fortnight"), None),
])
def test_engineering_units_become_ucum_codes(eu: EngineeringUnits, code: str | None) -> None:
    found, note = tags.ucum_of(eu)
    assert found == code
    if code is None:
        assert "not a unit the agent knows" in note and eu.display_name in note


def _variable(path: str, data_type: str, units: EngineeringUnits | None = None) -> BrowsedNode:
    parts = tuple(path.split("/"))
    return BrowsedNode(len(parts), f"nsu=urn:x;s={'.'.join(parts)}", parts, parts[-1],
                       "Variable", data_type, 0, None, units)


def test_stubs_suggest_events_units_assets_and_unique_names() -> None:
    nodes = [
        _variable("Line1/Filler/Temperature", "Double", EngineeringUnits(4408652, "°C")),
        _variable("Line1/Capper/Temperature", "Double", EngineeringUnits(-1, "°C")),
        _variable("Line2/Capper/Temperature", "Float"),
        _variable("Line1/Filler/GoodCount", "UInt32"),
        _variable("Line1/Filler/Setpoint", "Int16"),
        _variable("Line1/Filler/Running", "Boolean"),
        _variable("Line1/Filler/Recipe", "String"),
        BrowsedNode(2, "nsu=urn:x;s=Line1.Alarms", ("Line1", "Alarms"), "Alarms", "Object",
                    event_notifier=True),
        BrowsedNode(1, "nsu=urn:x;s=Line1", ("Line1",), "Line1", "Object"),
    ]
    made, skipped = tags.stubs(nodes)
    by_node = {stub.keys["node"]: stub.keys for stub in made}
    # As many folders as make a name unique, and no more.
    assert [stub.keys["name"] for stub in made] == [
        "Filler.Temperature", "Line1.Capper.Temperature", "Line2.Capper.Temperature",
        "GoodCount", "Setpoint", "Running", "Alarms",
    ]
    assert by_node["nsu=urn:x;s=Line1.Filler.Temperature"]["unit"] == "Cel"
    assert by_node["nsu=urn:x;s=Line1.Capper.Temperature"]["unit"] == "Cel"
    assert "unit" not in by_node["nsu=urn:x;s=Line2.Capper.Temperature"]
    assert by_node["nsu=urn:x;s=Line1.Filler.GoodCount"]["event"] == "production.count"
    assert by_node["nsu=urn:x;s=Line1.Filler.Setpoint"]["event"] == "telemetry"
    assert by_node["nsu=urn:x;s=Line1.Filler.Running"]["event"] == "telemetry"
    assert by_node["nsu=urn:x;s=Line1.Alarms"] == {
        "name": "Alarms", "node": "nsu=urn:x;s=Line1.Alarms", "event": "machine.alarm",
        "asset": "line1", "mode": "events",
    }
    assert by_node["nsu=urn:x;s=Line1.Filler.Temperature"]["asset"] == "line1/filler"
    assert skipped == ["Line1/Filler/Recipe (nsu=urn:x;s=Line1.Filler.Recipe): String, "
                       "no event kind fits"]


def test_stubs_toml_loads_as_a_config(tmp_path: Path) -> None:
    made, skipped = tags.stubs([
        _variable("Line1/Filler/Temperature", "Double", EngineeringUnits(4408652, "°C")),
        _variable("Line1/Filler/Recipe", "String"),
    ])
    config = tmp_path / "agent.toml"
    config.write_text(HEAD + tags.stubs_toml(made, skipped, ["header"]))
    signals = load_config(config).sources[0].signals
    assert [(s.name, s.unit, s.asset) for s in signals] == [
        ("Temperature", "Cel", "line1/filler")
    ]


def test_export_import_round_trip_keeps_every_signal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real commands: `tags export` -> CSV file -> `tags import --out` -> the same signals
    when the TOML replaces the source's signals."""
    original = tmp_path / "agent.toml"
    original.write_text(TRICKY)
    assert main(["opcua", "tags", "export", "-c", str(original)]) == 0
    exported = capsys.readouterr().out
    assert exported.splitlines()[0] == ",".join(tags.COLUMNS)
    csv_file = tmp_path / "tags.csv"
    csv_file.write_text(exported, newline="")
    out = tmp_path / "signals.toml"
    assert main(["opcua", "tags", "import", "-c", str(original), str(csv_file),
                 "--out", str(out)]) == 0
    assert "wrote 4 signal(s)" in capsys.readouterr().out
    rebuilt = tmp_path / "rebuilt.toml"
    rebuilt.write_text(HEAD + out.read_text())
    assert _signals(rebuilt) == _signals(original)
    # And once more: the rebuilt config exports to the very same CSV.
    assert main(["opcua", "tags", "export", "-c", str(rebuilt)]) == 0
    assert capsys.readouterr().out == exported


def test_the_round_trip_fails_when_a_value_is_changed(tmp_path: Path) -> None:
    """The comparison above can fail: a changed cell gives different signals."""
    original = tmp_path / "agent.toml"
    original.write_text(TRICKY)
    _, raw = tags.raw_signals(TRICKY, None)
    text = tags.signals_csv(raw).replace("[degF]", "K")
    rebuilt = tmp_path / "rebuilt.toml"
    rebuilt.write_text(HEAD + tags.signals_toml(tags.signals_from_csv(text, Path("t.csv"))))
    assert _signals(rebuilt) != _signals(original)


def test_import_names_file_line_and_column_of_each_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(TRICKY)
    header = ",".join(tags.COLUMNS)
    blank = "," * (len(tags.COLUMNS) - 1)

    def row(**cells: str) -> str:
        values = blank.split(",")
        for key, value in cells.items():
            values[tags.COLUMNS.index(key)] = value
        return ",".join(values)

    csv_file = tmp_path / "tags.csv"
    csv_file.write_text("\n".join([
        header,
        row(name="a", node="ns=2;s=A", event="telemetry", asset="line1", unit="degC"),
        row(name="b", node="ns=2;s=B", event="telemetry", asset="line1",
            sampling_interval_ms="fast"),
        row(name="c", node="ns=2;s=A", event="telemetry", asset="line1"),
        row(name="d", node="ns=2;s=D", event="machine.state", asset="line1",
            extra='"{ states = { 0 = idle } }"'),
        row(name="e", node="ns=2;s=E", event="telemetry", asset="line 1"),
    ]) + "\n")
    assert main(["opcua", "tags", "import", "-c", str(config), str(csv_file)]) == 2
    err = capsys.readouterr().err
    assert f"{csv_file}:2: unit: unknown unit 'degC'" in err
    assert f"{csv_file}:3: sampling_interval_ms: 'fast' is not a number" in err
    assert f"{csv_file}:4: node: 'ns=2;s=A' is already on line 2" in err
    assert f"{csv_file}:5: extra: not an inline TOML table" in err
    assert f"{csv_file}:6: asset:" in err


def test_export_names_the_missing_source(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(TRICKY)
    assert main(["opcua", "tags", "export", "-c", str(config), "--source", "line9"]) == 2
    assert "no OPC UA source 'line9' (OPC UA sources: line1)" in capsys.readouterr().err


THREE_LINES = Path(__file__).resolve().parents[2] / "config" / "examples" / "three-lines.toml"


def test_export_lists_the_signals_templates_generate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A source whose signals come from template instances exports what the agent runs: every
    generated signal, once, with its parameters filled in."""
    source = load_config(THREE_LINES).sources[0]
    assert main(["opcua", "tags", "export", "-c", str(THREE_LINES)]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == len(source.signals) >= 12
    nodes = {row.split(",")[tags.COLUMNS.index("node")] for row in rows}
    assert {"ns=2;s=Line1.Filler.State", "ns=2;s=Line3.Filler.State"} <= nodes
    assert not any("{" in node for node in nodes)


def test_import_refuses_a_source_with_template_instances(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_file = tmp_path / "tags.csv"
    csv_file.write_text(",".join(tags.COLUMNS) + "\n")
    assert main(["opcua", "tags", "import", "-c", str(THREE_LINES), str(csv_file)]) == 2
    err = capsys.readouterr().err
    assert "instantiates templates" in err and "listed twice" in err


SETTINGS = OpcUaSettings(endpoint="opc.tcp://plc-7.plant.example:4841/ua", request_timeout_s=4)


@pytest.mark.parametrize(("error", "says"), [
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
     "the host name 'plc-7.plant.example' does not resolve (name lookup failed, errno -2)"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed"),
     "nothing listens on plc-7.plant.example port 4841 (connection refused, errno 111)"),
    (TimeoutError(), "no answer from plc-7.plant.example port 4841 within 4 s"),
    (OSError(errno.EHOSTUNREACH, "No route to host"),
     "no route to plc-7.plant.example (host or network unreachable, errno 113)"),
])
def test_connection_causes_say_what_to_check(error: OSError, says: str) -> None:
    """The classification of the OS errors a connect raises (the refused case also runs
    against a real closed port in tests/integration/test_opcua_commissioning.py)."""
    text = connection_cause(error, SETTINGS)
    assert text.startswith(says), text
    assert "[Errno" not in text and "cannot connect" not in text
