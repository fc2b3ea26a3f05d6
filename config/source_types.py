"""The source types: one row per `[[sources]]` `type`, the one table that names them all.

A row maps the type tag to its `[[sources]]` model, its builder (the runtime's
`build_connector`) and its optional probe (`edge-agent check-config --connect`). `Source`,
the discriminated union `AgentConfig.sources` validates each entry with, is made from the
rows, and so is `RECORD_SOURCES`: a type is added here and nowhere else.

The table lives in `config` because its models are the `[[sources]]` schema
(`config.source_models`: a connector's settings composed with the mapping keys of `config`,
which `connectors` may not import) and the schema's union derives from its rows; the
builders and probes import their connector's module only when called, which `config` may do.

Invariants:
- Builders and probes import their connector's module when called, never here: an agent
  imports a source type's client library only when a source of that type is configured
  (aiohttp and asyncpg hold about 11 MiB that an OPC UA-only agent does not pay; asyncua is
  loaded in any case, the config's OPC UA address parsing uses it).
  tests/unit/test_source_types.py holds that, and that the rows, the models and the `Source`
  union agree.
- A probe's results are what the peer said; a probe that adds what only the config knows (the
  event an OPC UA node feeds, and whether its data type fits) does it in its row here.
- For the type checker `Source` is `SourceModel`, the base every model shares: code that
  needs what one type alone has narrows with `isinstance` (`isinstance(source, MesHttpSource)`).

A row has one of two forms. A plain type's model is made from its settings: `signal_type(tag,
Settings, SignalSettings, build, probe)` or `record_type(tag, Settings, build, probe)`, whose
builder receives what its connector's constructor takes (name, settings and signals, or name,
settings and the host) and whose probe receives the settings (and the signals). A type with a
model of its own: `SourceType(Model, build, probe)`, whose builder and probe receive the
source itself. Adding a type: see the `connectors.base` docstring (one folder, one row, one
peer fixture).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeAlias, TypeVar, Union, cast

from pydantic import Field

from config.mapping import NUMERIC_EVENTS
from config.source_models import (
    MesHttpSource,
    MesSqlSource,
    OpcUaSource,
    RecordSource,
    SourceModel,
    record_source,
    signal_source,
)
from connectors.base import (
    Connector,
    ConnectorSettings,
    ProbeResult,
    SignalSettings,
    SourceHost,
)
from connectors.mes_files.config import MesFilesSettings
from connectors.simulated.config import SimulatedSettings, SimulatedSignalSettings
from events.kinds import EventKind

ModelT = TypeVar("ModelT", bound=SourceModel)
SettingsT = TypeVar("SettingsT", bound=ConnectorSettings)
SignalT = TypeVar("SignalT", bound=SignalSettings)

Probe = Callable[[ModelT], Awaitable[list[ProbeResult]]]


@dataclass(frozen=True, slots=True)
class SourceType(Generic[ModelT]):
    """One source type: its `[[sources]]` model, how to build its connector and, when its peer
    can be asked beforehand, how to probe it."""

    model: type[ModelT]
    build: Callable[[ModelT, SourceHost], Connector]
    probe: Probe[ModelT] | None = None


def signal_type(
    tag: str,
    settings: type[SettingsT],
    signal: type[SignalT],
    build: Callable[[str, SettingsT, Sequence[SignalT]], Connector],
    probe: Callable[[SettingsT, Sequence[SignalT]], Awaitable[list[ProbeResult]]] | None = None,
) -> SourceType[SourceModel]:
    """The row of a signal type whose model is made from its settings (`signal_source`): its
    builder gets the source's name, settings and signals, its probe the settings and signals."""

    def parts(source: SourceModel) -> tuple[SettingsT, Sequence[SignalT]]:
        assert isinstance(source, settings), f"{tag}: {type(source).__name__}"
        # Each signal is a `signal` with the mapping keys: the model is made so.
        return source, cast(Sequence[SignalT], source.signals)

    def build_source(source: SourceModel, host: SourceHost) -> Connector:
        return build(source.name, *parts(source))

    def probe_source(source: SourceModel) -> Awaitable[list[ProbeResult]]:
        assert probe is not None
        return probe(*parts(source))

    model = signal_source(tag, settings, signal)
    return SourceType(model, build_source, None if probe is None else probe_source)


def record_type(
    tag: str,
    settings: type[SettingsT],
    build: Callable[[str, SettingsT, SourceHost], Connector],
    probe: Callable[[SettingsT], Awaitable[list[ProbeResult]]] | None = None,
) -> SourceType[SourceModel]:
    """The row of a record type of one event whose model is made from its settings
    (`record_source`): its builder gets the source's name, settings and the host, its probe
    the settings."""

    def settings_of(source: SourceModel) -> SettingsT:
        assert isinstance(source, settings), f"{tag}: {type(source).__name__}"
        return source

    def build_source(source: SourceModel, host: SourceHost) -> Connector:
        return build(source.name, settings_of(source), host)

    def probe_source(source: SourceModel) -> Awaitable[list[ProbeResult]]:
        assert probe is not None
        return probe(settings_of(source))

    model = record_source(tag, settings)
    return SourceType(model, build_source, None if probe is None else probe_source)


# --- the builders and probes, each importing its connector only when called -------------------


def _build_opcua(source: OpcUaSource, host: SourceHost) -> Connector:
    from connectors.opcua import OpcUaConnector

    return OpcUaConnector(source.name, source, source.signals)


async def _probe_opcua(source: OpcUaSource) -> list[ProbeResult]:
    from connectors.opcua.probe import INTEGER_TYPES, NUMBER_TYPES, NodeProbeResult, probe

    events = {signal.node: signal.event for signal in source.signals}
    results: list[ProbeResult] = []
    for found in await probe(source, source.signals):
        problem, data_type = found.problem, found.data_type
        event = events.get(found.address)
        if problem is None and data_type not in (None, "?"):
            # A Boolean counts as 0/1 for the events whose value is a number.
            if event in NUMERIC_EVENTS and data_type not in NUMBER_TYPES | {"Boolean"}:
                problem = f"is {data_type}, but {event} needs a number"
            elif event is EventKind.PRODUCTION_COUNT and data_type not in INTEGER_TYPES:
                problem = f"is {data_type}, but {event} needs an integer"
        seen = f"{found.node_id}, {found.node_class}{', ' + data_type if data_type else ''}"
        # With the node's EngineeringUnits, which `check-config --connect` compares with the
        # signal's unit (agent.cli.connect, config.ucum_engineering).
        results.append(NodeProbeResult(found.address, problem, seen, found.units))
    return results


def _build_simulated(
    name: str, settings: SimulatedSettings, signals: Sequence[SimulatedSignalSettings]
) -> Connector:
    from connectors.simulated import SimulatedConnector

    return SimulatedConnector(name, settings, signals)


def _build_mes_files(name: str, settings: MesFilesSettings, host: SourceHost) -> Connector:
    from connectors.mes_files import MesFilesConnector

    return MesFilesConnector(name, settings, host)


async def _probe_mes_files(settings: MesFilesSettings) -> list[ProbeResult]:
    from connectors.mes_files.probe import probe

    return await probe(settings)


def _build_mes_http(source: MesHttpSource, host: SourceHost) -> Connector:
    from connectors.mes_http.connector import MesHttpConnector

    return MesHttpConnector(source.name, source, host)


async def _probe_mes_http(source: MesHttpSource) -> list[ProbeResult]:
    from connectors.mes_http.probe import probe

    return await probe(source)


def _build_mes_sql(source: MesSqlSource, host: SourceHost) -> Connector:
    from connectors.mes_sql.connector import MesSqlConnector

    return MesSqlConnector(source.name, source, source, host)


async def _probe_mes_sql(source: MesSqlSource) -> list[ProbeResult]:
    from connectors.mes_sql.probe import probe

    return await probe(source)


# In the order `check-config` names them ("expected one of 'opcua', 'simulated', ...").
SOURCE_TYPES: Mapping[str, SourceType[Any]] = {
    "opcua": SourceType(OpcUaSource, _build_opcua, _probe_opcua),
    "simulated": signal_type(  # no peer to ask
        "simulated", SimulatedSettings, SimulatedSignalSettings, _build_simulated
    ),
    "mes-files": record_type("mes-files", MesFilesSettings, _build_mes_files, _probe_mes_files),
    "mes-http": SourceType(MesHttpSource, _build_mes_http, _probe_mes_http),
    "mes-sql": SourceType(MesSqlSource, _build_mes_sql, _probe_mes_sql),
}



def source_union(rows: Iterable[SourceType[Any]]) -> object:
    """The discriminated union of the rows' models, by their `type` tag: what
    `AgentConfig.sources` validates each entry with (`Source`)."""
    models = tuple(row.model for row in rows)
    return Annotated[Union[models], Field(discriminator="type")]  # noqa: UP007  # `|` cannot join a tuple


if TYPE_CHECKING:
    Source: TypeAlias = SourceModel
else:
    Source = source_union(SOURCE_TYPES.values())

# The record sources (no signals: each reading a whole record, `RecordSource.record_rules`).
RECORD_SOURCES: tuple[type[RecordSource], ...] = tuple(
    row.model for row in SOURCE_TYPES.values() if issubclass(row.model, RecordSource)
)


def source_type(source: Source) -> SourceType[Any]:
    """The row of a configured source (its model is the row's, by construction of `Source`)."""
    row = SOURCE_TYPES[source.type]
    assert isinstance(source, row.model), f"{source.type}: {type(source).__name__}"
    return row


def build_connector(source: Source, host: SourceHost) -> Connector:
    """The connector of one configured source; starts nothing."""
    return source_type(source).build(source, host)


def probe_source(source: Source) -> Awaitable[list[ProbeResult]] | None:
    """What the source's probe finds on its peer (awaited by the caller); None when its type
    has no peer to ask. The awaitable raises `SourceUnavailable` or `SourceConfigError` when
    the peer cannot be asked at all."""
    probe = source_type(source).probe
    return None if probe is None else probe(source)
