"""The agent's TOML configuration, as a pydantic schema: `AgentConfig`, the root.

One file per section, each the one place its defaults are declared: `[agent]`
(`config.agent`), `[hub]` (`config.hub`), `[buffer]` (`config.buffer`), `[commands]`
(`config.commands`), `[units]`, `[lookups]` and `[assets]` (`config.mapping`). Component
settings live next to their component (`connectors.opcua.config`) and are composed here with
the mapping fields into the `[[sources]]` models. The sections stay in `config/` rather than
beside the agent's code they configure because `config` may not import `agent`
(`tests/unit/test_architecture.py`).

Every model forbids unknown keys (`config.fields.STRICT`), so a typo is an error that
`edge-agent check-config` names, never a setting silently ignored. This module checks what
spans sections: unique source names and the mapping's references across sections.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

# The sections, importable from here as before the split (`config.schema.HubSection`).
from config.agent import AgentSection as AgentSection
from config.buffer import BufferSection as BufferSection
from config.commands import CommandsSection as CommandsSection
from config.fields import STRICT, AssetPath
from config.hub import HubSection as HubSection
from config.mapping import (  # the mapping part of the schema lives in config/mapping.py
    AssetSection,
    LookupTable,
    UnitsSection,
    cross_check,
    raise_problems,
)
from config.mapping import SignalMapping as SignalMapping
from connectors.base import SourceSettings
from connectors.mes_files.config import MesFilesSettings
from connectors.mes_http.config import MesHttpSettings, RouteSettings
from connectors.mes_sql.config import MesSqlSettings
from connectors.opcua.config import OpcUaSettings, OpcUaSignalSettings
from connectors.records import UNIT_FIELD, FieldSettings, RecordSettings
from connectors.simulated.config import SimulatedSettings, SimulatedSignalSettings
from events.kinds import EventKind
from events.models import EVENT_TYPES


class OpcUaSignal(OpcUaSignalSettings, SignalMapping):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _events_are_alarms(self) -> OpcUaSignal:
        # An event notifier yields alarm events, not values; and only it yields them.
        alarm = self.event is EventKind.MACHINE_ALARM
        if (self.mode == "events") != alarm:
            raise ValueError(
                "an event notifier (mode = \"events\") feeds event = \"machine.alarm\", and "
                "machine.alarm comes only from mode = \"events\""
            )
        return self


class OpcUaSource(OpcUaSettings, SourceSettings):
    """An OPC UA server (`connectors.opcua`)."""

    type: Literal["opcua"]
    signals: Annotated[list[OpcUaSignal], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_nodes(self) -> OpcUaSource:
        seen: set[str] = set()
        for signal in self.signals:
            if signal.node in seen:
                raise ValueError(f"node {signal.node!r} is listed twice in source {self.name!r}")
            seen.add(signal.node)
        return self


class SimulatedSignal(SimulatedSignalSettings, SignalMapping):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulatedSource(SimulatedSettings, SourceSettings):
    """A fixed-rate simulated source (`connectors.simulated`), for demos, tests and benchmarks."""

    type: Literal["simulated"]
    signals: Annotated[list[SimulatedSignal], Field(min_length=1)]


# Event types an MES record can become, with the fields a record may fill: required and
# optional, derived from the `events.models` models (`EventType.record_fields`).
RECORD_FIELDS: dict[EventKind, tuple[frozenset[str], frozenset[str]]] = {
    kind: event_type.record_fields()
    for kind, event_type in EVENT_TYPES.items()
    if event_type.record is not None
}


def check_record_fields(event: EventKind, columns: Mapping[str, FieldSettings]) -> None:
    """The columns of a record source fit its event type; ValueError says what does not."""
    fields = RECORD_FIELDS.get(event)
    if fields is None:
        raise ValueError(
            f"event {event.value!r} cannot come from an MES record; "
            f"supported: {', '.join(kind.value for kind in RECORD_FIELDS)}"
        )
    required, optional = fields
    unknown = sorted(set(columns) - required - optional)
    if unknown:
        raise ValueError(
            f"{event.value} has no field(s) {', '.join(map(repr, unknown))}; "
            f"its fields: {', '.join(sorted(required | optional))}"
        )
    given = set(columns)
    if any(spec.unit is not None for spec in columns.values()):
        given.add(UNIT_FIELD)  # a column's unit fills the event's unit
    missing = sorted(required - given)
    if missing:
        raise ValueError(
            f"{event.value} needs column(s) for {', '.join(map(repr, missing))}"
            + (" (or a column with `unit`)" if UNIT_FIELD in missing else "")
        )
    for name in sorted(required & set(columns)):
        if not columns[name].required:
            raise ValueError(f"field {name!r} is required by {event.value}")


class _OneEventRecords(BaseModel):
    """A record source of one event type: a file drop or an interface table. Each record
    (signal "record") becomes one event of `event` for `asset`, its fields from `columns`."""

    event: EventKind
    asset: AssetPath

    @property
    def signals(self) -> tuple[()]:
        """No signals: its records are whole events (`agent.flow.mapping`)."""
        return ()

    def record_rules(self) -> list[tuple[str, EventKind, str]]:
        """(signal, event, asset) of its readings."""
        return [("record", self.event, self.asset)]

    @model_validator(mode="after")
    def _columns_fit_event(self) -> Self:
        assert isinstance(self, RecordSettings)
        check_record_fields(self.event, self.columns)
        return self


class MesFilesSource(MesFilesSettings, _OneEventRecords, SourceSettings):
    """A folder of MES batch files (`connectors.mes_files`)."""

    type: Literal["mes-files"]


class MesHttpRoute(RouteSettings):
    """One webhook endpoint: each posted object becomes one event of `event` for `asset`."""

    event: EventKind  # narrows the connector's plain name
    asset: AssetPath

    @model_validator(mode="after")
    def _columns_fit_event(self) -> MesHttpRoute:
        check_record_fields(self.event, self.columns)
        return self


class MesHttpSource(MesHttpSettings, SourceSettings):
    """An HTTP endpoint the MES posts JSON to (`connectors.mes_http`)."""

    type: Literal["mes-http"]
    routes: Annotated[list[MesHttpRoute], Field(min_length=1)]  # type: ignore[assignment]

    @property
    def signals(self) -> tuple[()]:
        """A webhook has no signals: its objects are whole records (`agent.flow.mapping`)."""
        return ()

    def record_rules(self) -> list[tuple[str, EventKind, str]]:
        """(signal, event, asset) of its readings: a route's objects are signal = its path."""
        return [(route.path, route.event, route.asset) for route in self.routes]


class MesSqlSource(MesSqlSettings, RecordSettings, _OneEventRecords, SourceSettings):
    """An interface table (or query) in the MES database (`connectors.mes_sql`)."""

    type: Literal["mes-sql"]


# The `[[sources]]` model of each type, by its `type` tag: the rows of
# `agent.source_types.SOURCE_TYPES` name the same models (a test holds them together).
RECORD_SOURCES = (MesFilesSource, MesHttpSource, MesSqlSource)
Source = Annotated[
    OpcUaSource | SimulatedSource | MesFilesSource | MesHttpSource | MesSqlSource,
    Field(discriminator="type"),
]


class AgentConfig(BaseModel):
    """The whole file; see the module docstring."""

    model_config = STRICT

    agent: AgentSection
    hub: HubSection
    buffer: BufferSection = BufferSection()
    commands: CommandsSection = CommandsSection()
    units: UnitsSection = UnitsSection()
    lookups: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")], LookupTable] = {}
    assets: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")],
                 AssetSection] = {}
    sources: Annotated[list[Source], Field(min_length=1)]

    # A field validator, not a model validator: its error then points at `sources` (key and
    # line) instead of at the file as a whole.
    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, sources: list[OpcUaSource]) -> list[OpcUaSource]:
        names = [source.name for source in sources]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique; repeated: {', '.join(duplicates)}")
        return sources

    # Mapping references across sections (lookups, sibling signals, asset paths), each error
    # raised on its own key path (see config.mapping.cross_check).
    @model_validator(mode="after")
    def _mapping_references(self) -> AgentConfig:
        raise_problems(
            cross_check(
                lookups=self.lookups,
                assets=self.assets,
                sources=[
                    (source.name, [(signal.node, signal) for signal in source.signals])
                    for source in self.sources
                ],
            )
        )
        return self

    @property
    def client_id(self) -> str:
        return self.hub.client_id or f"edge-agent-{self.agent.site}-{self.agent.id}"
