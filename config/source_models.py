"""The `[[sources]]` models: what every entry is, and how a source type's model is made.

A `[[sources]]` model is a connector's settings (`connectors.<name>.config`) composed with
`SourceModel` (`name`, `type`, the reconnect fields) and, for each signal, the mapping keys
(`MappedSignal`: the signal's address with `config.mapping.SignalMapping`). The composition is
here, in `config`, because connectors import nothing of config. There are two kinds:

- a signal source (OPC UA, simulated): `signals`, at least one, each address listed once
  (`SignalSource`); the mapping turns each signal's values into events.
- a record source (the MES file drop, webhook and interface table): no signals; each reading
  is a whole record, and `record_rules` says which event it becomes for which asset
  (`RecordSource`).

A plain type gets its model from a factory, `signal_source` or `record_source`, called by its
row in `config.source_types`. A type with rules of its own writes its model here, from the
same pieces: OPC UA (its alarm rule on signals), mes-http (its routes) and mes-sql (its
record part beside its settings).

Invariants:
- The bases come in one order, which the factories keep and a written model follows:
  `SignalSource` first (its check runs after the settings' own), then the settings, a record
  mixin, and `SourceModel` last (`name` and `type` come before the settings' keys). A model's
  keys are listed in that order by `check-config` ("allowed keys: ..."), and of two checks
  that fail the first is the one reported, so the order is part of what the operator sees.
- Every model forbids unknown keys and is frozen (`connectors.base.ConnectorSettings`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, TypeVar, cast

from pydantic import BaseModel, Field, create_model, model_validator

from config.correlation import check_correlate_by
from config.fields import STRICT, AssetPath
from config.mapping import SignalMapping
from connectors.base import ConnectorSettings, SignalSettings, SourceSettings
from connectors.mes_http.config import MesHttpSettings, RouteSettings
from connectors.mes_sql.config import MesSqlSettings
from connectors.opcua.config import OpcUaSettings, OpcUaSignalSettings
from connectors.records import UNIT_FIELD, FieldSettings, RecordSettings
from events.kinds import EventKind
from events.models import EVENT_TYPES

ModelT = TypeVar("ModelT", bound=BaseModel)


class MappedSignal(SignalSettings, SignalMapping):
    """One `[[sources.signals]]` entry: the signal's address (`node`, narrowed by its type's
    signal settings) and how its values become events."""

    model_config = STRICT


class SourceModel(SourceSettings):
    """What every `[[sources]]` model is, and all that code reads of any source: `name`,
    `type`, the reconnect fields, `with_base_dir` and `signals` (empty for a record source).
    What one type alone has is reached by narrowing (`isinstance(source, MesHttpSource)`)."""

    if TYPE_CHECKING:  # each model declares it: a list field, or an empty tuple (no field here)

        @property
        def signals(self) -> Sequence[MappedSignal]: ...


class SignalSource(BaseModel):
    """The part of a signal source's model that is not its settings: every address once."""

    model_config = STRICT

    @model_validator(mode="after")
    def _unique_nodes(self) -> Self:
        assert isinstance(self, SourceModel)
        seen: set[str] = set()
        for signal in self.signals:
            if signal.node in seen:
                raise ValueError(f"node {signal.node!r} is listed twice in source {self.name!r}")
            seen.add(signal.node)
        return self


class RecordSource(BaseModel):
    """The part of a record source's model that is not its settings: no signals, and which
    event each of its records becomes."""

    model_config = STRICT

    @property
    def signals(self) -> tuple[()]:
        """No signals: its records are whole events (`agent.flow.mapping`)."""
        return ()

    def record_rules(self) -> list[tuple[str, EventKind, str]]:
        """(signal, event, asset) of its readings."""
        raise NotImplementedError


def signal_source(
    tag: str, settings: type[ConnectorSettings], signal: type[SignalSettings]
) -> type[SourceModel]:
    """The `[[sources]]` model of a signal source whose rules are its settings' own: `settings`
    with `name` and `type = tag`, and `signals`, at least one, each `signal` (the connector's
    signal settings, or a `MappedSignal` subclass with rules of its own) with the mapping keys.
    Named after the settings (`SimulatedSettings` -> `SimulatedSource`)."""
    if not issubclass(signal, MappedSignal):
        doc = signal.__doc__ or f"One signal of a {tag} source, with its mapping keys."
        signal = _model(MappedSignal, _named(signal, "Signal"), (signal, MappedSignal), doc)
    signals = Annotated[list[signal], Field(min_length=1)]  # type: ignore[valid-type]  # a class known at run time
    return _source(tag, settings, (SignalSource, settings, SourceModel), signals=signals)


def record_source(tag: str, settings: type[ConnectorSettings]) -> type[SourceModel]:
    """The `[[sources]]` model of a record source of one event type (a file drop): `settings`
    (with their `RecordSettings`: the columns) with `name`, `type = tag`, and the `event` and
    `asset` its records become (`_OneEventRecords`)."""
    if not issubclass(settings, RecordSettings):
        raise TypeError(f"{settings.__name__} has no record part (RecordSettings)")
    return _source(tag, settings, (settings, _OneEventRecords, SourceModel))


def _source(
    tag: str, settings: type[BaseModel], bases: tuple[type[BaseModel], ...], **fields: object
) -> type[SourceModel]:
    """A `[[sources]]` model with `type = tag` and `fields`, named and described after its
    settings: `SimulatedSettings` -> `SimulatedSource`, its description the first paragraph of
    the connector package's docstring (what the source is)."""
    package = settings.__module__.rpartition(".")[0] or settings.__module__
    text = sys.modules[package].__doc__ or f"A {tag} source."
    summary = " ".join(text.strip().split("\n\n")[0].split())
    return _model(
        SourceModel, _named(settings, "Source"), bases, f"{summary} (`{package}`)",
        type=Literal[tag], **fields,
    )


def _model(
    kind: type[ModelT], name: str, bases: tuple[type[BaseModel], ...], doc: str, **fields: object
) -> type[ModelT]:
    """A `kind` of model made at run time: `bases` in that order, then `fields` (name: type),
    each required."""
    required: dict[str, Any] = {field: (annotation, ...) for field, annotation in fields.items()}
    model: type[BaseModel] = create_model(
        name, __base__=cast(Any, bases), __module__=__name__, __doc__=doc, **required
    )
    assert issubclass(model, kind), bases
    return model


def _named(settings: type[BaseModel], kind: str) -> str:
    """`SimulatedSettings` -> `SimulatedSource`, `SimulatedSignalSettings` -> `SimulatedSignal`."""
    return f"{settings.__name__.removesuffix('Settings').removesuffix('Signal')}{kind}"


# --- records ------------------------------------------------------------------------------------

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


class _OneEventRecords(RecordSource):
    """A record source of one event type: a file drop or an interface table. Each record
    (signal "record") becomes one event of `event` for `asset`, its fields from `columns`."""

    event: EventKind
    asset: AssetPath

    def record_rules(self) -> list[tuple[str, EventKind, str]]:
        """(signal, event, asset) of its readings."""
        return [("record", self.event, self.asset)]

    @model_validator(mode="after")
    def _columns_fit_event(self) -> Self:
        assert isinstance(self, RecordSettings)
        check_record_fields(self.event, self.columns)
        check_correlate_by(self.event, self.correlate_by)
        return self


# --- the types with rules of their own ----------------------------------------------------------


class OpcUaSignal(OpcUaSignalSettings, MappedSignal):
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


class OpcUaSource(SignalSource, OpcUaSettings, SourceModel):
    """An OPC UA server (`connectors.opcua`)."""

    type: Literal["opcua"]
    signals: Annotated[list[OpcUaSignal], Field(min_length=1)]


class MesHttpRoute(RouteSettings):
    """One webhook endpoint: each posted object becomes one event of `event` for `asset`."""

    event: EventKind  # narrows the connector's plain name
    asset: AssetPath

    @model_validator(mode="after")
    def _columns_fit_event(self) -> MesHttpRoute:
        check_record_fields(self.event, self.columns)
        check_correlate_by(self.event, self.correlate_by)
        return self


class MesHttpSource(MesHttpSettings, RecordSource, SourceModel):
    """An HTTP endpoint the MES posts JSON to (`connectors.mes_http`)."""

    type: Literal["mes-http"]
    routes: Annotated[list[MesHttpRoute], Field(min_length=1)]  # type: ignore[assignment]

    def record_rules(self) -> list[tuple[str, EventKind, str]]:
        """(signal, event, asset) of its readings: a route's objects are signal = its path."""
        return [(route.path, route.event, route.asset) for route in self.routes]


class MesSqlSource(MesSqlSettings, RecordSettings, _OneEventRecords, SourceModel):
    """An interface table (or query) in the MES database (`connectors.mes_sql`)."""

    type: Literal["mes-sql"]

