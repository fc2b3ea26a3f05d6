"""The source types: one row per `[[sources]]` `type`, the one table that names them all.

A row maps the type tag to its `[[sources]]` model (`config.schema`: the connector's settings,
`connectors.base.SourceSettings` and the mapping keys of its signals), its builder (the
runtime's `build_connector`) and its optional probe (`edge-agent check-config --connect`).

Invariants:
- Builders and probes import their connector's module when called, never here: an agent
  imports a source type's client library only when a source of that type is configured
  (aiohttp and asyncpg hold about 11 MiB that an OPC UA-only agent does not pay; asyncua is
  loaded in any case, the config's OPC UA address parsing uses it).
  tests/unit/test_source_types.py holds that, and that the rows, the models and the `Source`
  union agree.
- A row lives here, in `agent`, because building a connector is wiring: `connectors` import
  nothing of `config`, and the `[[sources]]` models compose the mapping keys of `config`.
- A probe's results are what the peer said; a probe that adds what only the config knows (the
  event an OPC UA node feeds, and whether its data type fits) does it in its row here.

Adding a type: see the `connectors.base` docstring (one folder, one row, one peer fixture).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from config.schema import (
    MesFilesSource,
    MesHttpSource,
    MesSqlSource,
    OpcUaSource,
    SimulatedSource,
    Source,
)
from connectors.base import Connector, ProbeResult, SourceHost, SourceSettings

SettingsT = TypeVar("SettingsT", bound=SourceSettings)

# Events whose value is a number (a Boolean counts as 0/1), and the one that counts.
_NUMERIC_EVENTS = frozenset({"telemetry", "quality.alert", "machine.downtime"})
_COUNT_EVENT = "production.count"


@dataclass(frozen=True, slots=True)
class SourceType(Generic[SettingsT]):
    """One source type: its `[[sources]]` model, how to build its connector and, when its peer
    can be asked beforehand, how to probe it."""

    settings: type[SettingsT]
    build: Callable[[SettingsT, SourceHost], Connector]
    probe: Callable[[SettingsT], Awaitable[list[ProbeResult]]] | None = None


def _build_opcua(source: OpcUaSource, host: SourceHost) -> Connector:
    from connectors.opcua import OpcUaConnector

    return OpcUaConnector(source.name, source, source.signals)


async def _probe_opcua(source: OpcUaSource) -> list[ProbeResult]:
    from connectors.opcua.probe import INTEGER_TYPES, NUMBER_TYPES, probe

    events = {signal.node: str(signal.event) if signal.event else None
              for signal in source.signals}
    results: list[ProbeResult] = []
    for found in await probe(source, source.signals):
        problem, data_type = found.problem, found.data_type
        event = events.get(found.address)
        if problem is None and data_type not in (None, "?"):
            if event in _NUMERIC_EVENTS and data_type not in NUMBER_TYPES | {"Boolean"}:
                problem = f"is {data_type}, but {event} needs a number"
            elif event == _COUNT_EVENT and data_type not in INTEGER_TYPES:
                problem = f"is {data_type}, but {_COUNT_EVENT} needs an integer"
        seen = f"{found.node_id}, {found.node_class}{', ' + data_type if data_type else ''}"
        results.append(ProbeResult(found.address, problem, seen))
    return results


def _build_simulated(source: SimulatedSource, host: SourceHost) -> Connector:
    from connectors.simulated import SimulatedConnector

    return SimulatedConnector(source.name, source, source.signals)


def _build_mes_files(source: MesFilesSource, host: SourceHost) -> Connector:
    from connectors.mes_files import MesFilesConnector

    return MesFilesConnector(source.name, source, host)


async def _probe_mes_files(source: MesFilesSource) -> list[ProbeResult]:
    from connectors.mes_files.probe import probe

    return await probe(source)


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


SOURCE_TYPES: Mapping[str, SourceType[Any]] = {
    "opcua": SourceType(OpcUaSource, _build_opcua, _probe_opcua),
    "simulated": SourceType(SimulatedSource, _build_simulated),  # no peer to ask
    "mes-files": SourceType(MesFilesSource, _build_mes_files, _probe_mes_files),
    "mes-http": SourceType(MesHttpSource, _build_mes_http, _probe_mes_http),
    "mes-sql": SourceType(MesSqlSource, _build_mes_sql, _probe_mes_sql),
}


def source_type(source: Source) -> SourceType[Any]:
    """The row of a configured source (its model is the row's, by construction of `Source`)."""
    row = SOURCE_TYPES[source.type]
    assert isinstance(source, row.settings), f"{source.type}: {type(source).__name__}"
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
