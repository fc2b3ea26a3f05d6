"""The source-type registry (`config.source_types`): one row per `[[sources]]` type; the
config's `Source` union and `RECORD_SOURCES` made from its rows; the models a plain type gets
from the generic factories (`config.source_models`); a type added by one row alone; connector
modules imported only for configured types; and the settings every type shares
(`connectors.base.SourceSettings`)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from config import source_types
from config.loader import ConfigError, load_config
from config.schema import AgentConfig
from config.source_models import MappedSignal, RecordSource, SignalSource, SourceModel
from config.source_types import (
    RECORD_SOURCES,
    SOURCE_TYPES,
    SourceType,
    record_type,
    signal_type,
    source_union,
)
from connectors.base import (
    ConnectorSettings,
    Emit,
    ProbeResult,
    SignalSettings,
    SourceHealth,
    SourceHost,
    SourceSettings,
)
from connectors.records import RecordSettings
from connectors.simulated.config import SimulatedSettings, SimulatedSignalSettings
from events.kinds import EventKind

REPO = Path(__file__).resolve().parents[2]


def union_members(annotation: object) -> list[type[Any]]:
    """The models of `Annotated[A | B | ..., Field(discriminator="type")]`, in order."""
    union, field = typing.get_args(annotation)
    assert field.discriminator == "type"
    return list(typing.get_args(union))


def tag_of(model: type[Any]) -> str:
    [tag] = typing.get_args(model.model_fields["type"].annotation)
    assert isinstance(tag, str)
    return tag


def test_the_sources_union_is_made_from_the_registry_rows() -> None:
    [source] = typing.get_args(AgentConfig.model_fields["sources"].annotation)
    assert source is source_types.Source  # the registry's union, not a list of its own
    models = union_members(source)
    # The union's members are the rows' models, in the rows' order (the order `check-config`
    # names the types in), each under its own tag.
    assert models == [row.model for row in SOURCE_TYPES.values()]
    assert [tag_of(model) for model in models] == list(SOURCE_TYPES)
    for row in SOURCE_TYPES.values():
        assert issubclass(row.model, SourceModel)
        assert issubclass(row.model, SourceSettings)


def test_record_sources_are_the_rows_without_signals() -> None:
    for tag, row in SOURCE_TYPES.items():
        # Every model is one kind or the other.
        assert issubclass(row.model, SignalSource) != issubclass(row.model, RecordSource), tag
        assert ("signals" in row.model.model_fields) == issubclass(row.model, SignalSource), tag
    assert RECORD_SOURCES == tuple(
        row.model for row in SOURCE_TYPES.values() if issubclass(row.model, RecordSource)
    )
    assert {tag_of(model) for model in RECORD_SOURCES} == {"mes-files", "mes-http", "mes-sql"}


def test_a_plain_type_gets_its_model_from_the_factory() -> None:
    """The simulated type's row names only its settings: the model composes them with
    `name`, `type`, and signals with the mapping keys, named after the settings."""
    model = SOURCE_TYPES["simulated"].model
    assert model.__name__ == "SimulatedSource"
    assert issubclass(model, SimulatedSettings)
    assert "connectors.simulated" in (model.__doc__ or "")
    signal = typing.get_args(model.model_fields["signals"].annotation)[0]
    assert signal.__name__ == "SimulatedSignal"
    assert issubclass(signal, SimulatedSignalSettings) and issubclass(signal, MappedSignal)
    # The keys a person writes, in the order `check-config` lists them: the shared ones, the
    # settings', then the signals.
    assert list(model.model_fields) == [
        "reconnect_min_s", "reconnect_max_s", "name", "type", "rate_hz", "signals"
    ]
    source = model.model_validate({
        "name": "sim", "type": "simulated",
        "signals": [{"node": "counter", "asset": "line1", "event": "telemetry"}],
    })
    assert isinstance(source, SourceModel)
    assert source.reconnect_min_s == 0.5  # the simulated settings' own default
    [counter] = source.signals
    assert counter.node == "counter" and counter.asset == "line1"


def simulated_entry(**extra: Any) -> dict[str, Any]:
    return {
        "name": "sim", "type": "simulated", **extra,
        "signals": [{"node": "counter", "asset": "line1"}, {"node": "counter", "asset": "line2"}],
    }


def opcua_entry() -> dict[str, Any]:
    return {
        "name": "plc", "type": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840",
        "signals": [{"node": "ns=2;s=T", "asset": "line1"}, {"node": "ns=2;s=T", "asset": "x"}],
    }


@pytest.mark.parametrize("entry", [simulated_entry(), opcua_entry()], ids=["simulated", "opcua"])
def test_every_signal_type_refuses_a_node_listed_twice(entry: dict[str, Any]) -> None:
    model = SOURCE_TYPES[entry["type"]].model
    node, name = entry["signals"][0]["node"], entry["name"]
    with pytest.raises(ValidationError, match=f"node '{node}' is listed twice in source '{name}'"):
        model.model_validate(entry)


def test_a_node_listed_twice_is_reported_on_the_source(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        '[agent]\nsite = "s"\nid = "a"\n\n[hub]\nurl = "mqtt://127.0.0.1:1883"\n\n'
        '[[sources]]\nname = "sim"\ntype = "simulated"\n\n'
        '[[sources.signals]]\nnode = "counter"\nasset = "line1"\nname = "a"\n\n'
        '[[sources.signals]]\nnode = "counter"\nasset = "line1"\nname = "b"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as raised:
        load_config(config)
    [problem] = raised.value.problems
    assert (problem.line, problem.key) == (8, "sources[0]")  # its [[sources]] header
    assert problem.message == "node 'counter' is listed twice in source 'sim'"


@pytest.mark.parametrize("source_type", sorted(SOURCE_TYPES))
def test_every_type_refuses_a_reconnect_minimum_above_its_maximum(source_type: str) -> None:
    model = SOURCE_TYPES[source_type].model
    connector_settings = next(base for base in model.__mro__[1:]
                              if issubclass(base, ConnectorSettings)
                              and not issubclass(base, SourceSettings))
    with pytest.raises(ValidationError, match="reconnect_min_s must not be larger"):
        connector_settings.model_validate(
            {**_required_fields(source_type), "reconnect_min_s": 10, "reconnect_max_s": 5}
        )


def _required_fields(source_type: str) -> dict[str, Any]:
    """The least a type's connector settings need besides reconnect_*."""
    record = {"columns": {"order": {"column": "wo"}}}
    fields: dict[str, dict[str, Any]] = {
        "opcua": {"endpoint": "opc.tcp://127.0.0.1:4840"},
        "simulated": {},
        "mes-files": {"folder": "drop", **record},
        "mes-http": {"auth": "none", "routes": [{"path": "/mes", "event": "x", **record}]},
        "mes-sql": {"url": "sqlite:///mes.db", "table": "t", "cursor": ["id"]},
    }
    return fields[source_type]


# --- a type added by its row alone ---------------------------------------------------------------
# The settings and connector of two throwaway types, as a new connector's folder would hold
# them; the rows below are all they add to a copy of the table.


class RegisterSignalSettings(SignalSettings):
    width: int = 16


class RegisterSettings(ConnectorSettings):
    host: str


class DropSettings(ConnectorSettings, RecordSettings):
    folder: str


class RecordingConnector:
    """A connector that keeps what its builder gave it (it never runs)."""

    def __init__(self, name: str, *given: object) -> None:
        self.name = name
        self.health = SourceHealth()
        self.given = given

    async def run(self, emit: Emit) -> None:
        raise AssertionError("not run")


def _build_register(
    name: str, settings: RegisterSettings, signals: Sequence[RegisterSignalSettings]
) -> RecordingConnector:
    return RecordingConnector(name, settings, list(signals))


async def _probe_register(
    settings: RegisterSettings, signals: Sequence[RegisterSignalSettings]
) -> list[ProbeResult]:
    return [ProbeResult(f"{settings.host}/{signal.node}", seen=str(signal.width))
            for signal in signals]


def _build_drop(name: str, settings: DropSettings, host: SourceHost) -> RecordingConnector:
    return RecordingConnector(name, settings, host)


def test_a_new_type_is_one_row() -> None:
    table: dict[str, SourceType[Any]] = {
        **SOURCE_TYPES,
        "register": signal_type(
            "register", RegisterSettings, RegisterSignalSettings, _build_register, _probe_register
        ),
        "drop": record_type("drop", DropSettings, _build_drop),
    }
    union = source_union(table.values())
    sources: TypeAdapter[list[Any]] = TypeAdapter(list[union])  # type: ignore[valid-type]  # made at run time
    register, drop, simulated = sources.validate_python([
        {"name": "plc", "type": "register", "host": "127.0.0.1",
         "signals": [{"node": "40001", "width": 32, "asset": "line1", "event": "telemetry"}]},
        {"name": "mes", "type": "drop", "folder": "in", "event": "workorder.released",
         "asset": "line1", "columns": {"order": {"column": "wo"}}},
        {"name": "sim", "type": "simulated", "signals": [{"node": "c", "asset": "line1"}]},
    ])
    assert type(register) is table["register"].model
    assert type(drop) is table["drop"].model and type(simulated) is table["simulated"].model
    assert type(register).__name__ == "RegisterSource"
    assert [tag_of(model) for model in union_members(union)] == list(table)

    # The builder gets what its connector takes: name, settings, signals (with their keys).
    connector = table["register"].build(register, None)  # type: ignore[arg-type]  # no host asked
    assert isinstance(connector, RecordingConnector)
    assert connector.name == "plc"
    assert connector.given == (register, list(register.signals))
    [signal] = register.signals
    assert (signal.node, signal.width, signal.asset) == ("40001", 32, "line1")
    probe = table["register"].probe
    assert probe is not None

    async def probed() -> list[ProbeResult]:
        return await probe(register)

    assert asyncio.run(probed()) == [ProbeResult("127.0.0.1/40001", seen="32")]

    # A record type: its records' event and asset come with the model; no probe given.
    assert isinstance(drop, RecordSource)
    assert drop.record_rules() == [("record", EventKind.WORKORDER_RELEASED, "line1")]
    assert drop.signals == ()
    assert table["drop"].probe is None
    host = object()
    connector = table["drop"].build(drop, host)  # type: ignore[arg-type]  # only passed on
    assert isinstance(connector, RecordingConnector)
    assert connector.given == (drop, host)

    # A duplicate node is refused for the new signal type too.
    with pytest.raises(ValidationError, match="node '40001' is listed twice in source 'plc'"):
        sources.validate_python([{
            "name": "plc", "type": "register", "host": "h",
            "signals": [{"node": "40001", "asset": "a"}, {"node": "40001", "asset": "b"}],
        }])


def test_an_opcua_only_agent_imports_no_mes_connector_or_client_library() -> None:
    """aiohttp and asyncpg (about 11 MiB) are loaded only for a webhook or a database source:
    the registry's builders import their connector when called."""
    script = f"""
import sys
from pathlib import Path
from agent.runtime import Agent
from config.loader import load_config
from config.source_types import build_connector

config = load_config(Path({str(REPO / "connectors/opcua/sample.toml")!r}))
for source in config.sources:
    build_connector(source, None)  # an OPC UA connector never asks its host
heavy = ("aiohttp", "asyncpg", "connectors.mes_http.connector", "connectors.mes_sql.connector")
print(",".join(sorted(name for name in heavy if name in sys.modules)) or "none")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO, check=True, timeout=60)
    assert result.stdout.strip() == "none"
