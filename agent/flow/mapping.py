"""Mapping: readings in, canonical events out. Pure code: no I/O, no clock, no asyncio.

Why one module of ~896 lines: the order of the steps below is the contract, and every step
(`SignalMapper`: measured values, states, counters, derived events) reads and writes the same
per-asset state that `Mapper` holds. Split, that order and that state would have to be followed
across files; the value coercions at the end are private to them. A record's own steps share no
per-asset state: they are `agent.flow.mapping_records` (the envelope of its event stays here).

The config (`config.mapping`) says, per signal, what it means; this module applies it. One
`SignalMapper` per configured signal, all held by one `Mapper` that also keeps, per asset, the
latest value of every signal (so one event can combine several signals of an asset) and the
asset's current work order and product (so every event of that asset carries them).

Per reading, in this order:
1. Measured values: raw * `scale` + `offset` (engineering value in the source `unit`), `clamp`ed
   to [min, max] (a clamped good value becomes quality `uncertain`, status
   `UncertainEngineeringUnitsExceeded`, as OPC UA names it), converted to the enterprise unit
   (`to_unit`, else `[units]` for its kind, else the source unit), rounded to `decimals`.
   Codes: looked up in their master-data table; an unknown code is passed through and flagged
   in the envelope's `unmapped` extension, or the reading is set aside (`dead-letter`); both
   are counted per table in `MappingCounters`.
2. The asset's latest-value cache is updated (siblings, context).
3. Events are derived: telemetry; production.count (increment since the previous count, with
   reset and rollover); machine.state (on change, with previous state and its duration);
   quality.alert / machine.downtime start and end (threshold with hysteresis, or a boolean);
   workorder.completed (when the done bit rises, from the latest sibling values).
4. The envelope's context: asset path, work order and product (the asset's, else its nearest
   parent's), and the three ids that tie events together (docs/hub-contract.md):
   - `correlationid`, the business object (`config.correlation`): `order:<order>` for a
     completion and for every event of an asset with a work order context; for a record,
     the field its source's `correlate_by` names (or its type's default);
   - `causationid`, the event this one was derived from: a quality.alert's is the telemetry
     event of the same reading; a completion's is the production.count event of the latest
     reading of its `good` (else `scrap`) counter, when that counter is a production.count
     signal;
   - `traceparent` (and `tracestate`), only when the fact came with a valid W3C trace
     context (a webhook request's headers): the event's span as a child of the caller's.
     Without one nothing is stored (the publisher derives a trace from the event id). An
     invalid header is ignored: counted per source and route, logged once per route.

History and restarts: derived events depend on the signal's history, kept in memory. After a
restart the first reading of a signal has no history: no previous state, no increment (null),
no pending alert. A source re-sends its current values on reconnect with their original
source timestamps, so a repeat of an already-accepted fact gets the same event id and the
buffer drops it, and the history is rebuilt from that same fact. Counter baselines can be
carried across restarts (`counter_baselines` / `restore_counter_baselines`, persisted by
`agent.flow.mapping_state`) so that the first increment after a restart is known; a baseline that
might be stale is never used (a missing increment is reported as null, never invented).

Within a batch, readings are mapped in source-timestamp order, and at equal timestamps the
done bits of work orders last, so siblings written in the same PLC scan are seen first.

A reading that cannot be mapped (a text where a number is expected, a state missing from the
table, a dead-lettered code) raises `UnmappableReading` with the reason: the pipeline counts it
and sets it aside; it never becomes a half-filled event. An MES record that cannot be mapped
(its connector's `Reading.rejection`, or its model refused it) becomes a `record.rejected` event
instead (`Mapper.map_all`: the reason, where, the business keys, a redacted copy), and is set
aside as well unless its interface has its own channel back (`Rejection.set_aside`).

MES records (`RecordRule`, `agent.flow.mapping_records`) get the master data and units signals
get (lookups, UN/ECE Rec 20 units read as UCUM, `[units]` conversion); that module says how.
(The one log line of this module is the warning about a route's invalid trace headers, once
per route.)
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from agent.flow.mapping_records import (
    RECORD_INTERFACES,
    MappingContext,
    MappingCounters,
    RecordRule,
    UnmappableReading,
)
from config.correlation import ORDER_FIELD, correlation_fields
from config.mapping import (
    LookupTable,
    SignalMapping,
    UnitsSection,
    resolve_asset_path,
    signal_name,
)
from config.masterdata import code_text
from config.schema import RECORD_SOURCES, AgentConfig, MesHttpSource
from config.units import Conversion, conversion
from connectors.base import Quality, Reading, Value
from connectors.records import RecordSettings
from events.ids import (
    SignalIds,
    parse_traceparent,
    record_id,
    rfc3339,
    signal_ids,
    traceparent,
)
from events.kinds import EventKind, MachineState
from events.models import EVENT_TYPES, Event, EventType

__all__ = [  # the record half's names, as importable from here as before the split
    "RECORD_INTERFACES",
    "Mapper",
    "MappingContext",
    "MappingCounters",
    "RecordRule",
    "SignalMapper",
    "UnmappableReading",
]

_log = logging.getLogger(__name__)

CLAMPED_STATUS = "UncertainEngineeringUnitsExceeded"
# A `tracestate` longer than this is not passed on (W3C Trace Context: 512 characters at most
# are propagated); nor is one with characters outside printable ASCII.
_TRACESTATE_MAX_CHARS = 512
_TYPE_NAMES = {kind: event_type.name for kind, event_type in EVENT_TYPES.items()}
_QUALITY_TEXT = {quality: quality.value for quality in Quality}
_timestamp_of = operator.attrgetter("timestamp")


@dataclass(slots=True)
class _Code:
    """A code after lookup: the enterprise code, or the plant code flagged as unmapped."""

    code: str
    raw: str
    unmapped: str | None  # "table:code" when passed through unmapped


@dataclass(slots=True)
class AssetValues:
    """What the mapper knows of one asset: latest values by signal name, and its context."""

    latest: dict[str, object] = field(default_factory=dict)
    context: dict[str, _Code] = field(default_factory=dict)  # "workorder" / "product"
    # Each production.count signal's mapper and latest mapped reading: a completion names
    # that count's event as its cause (`causationid`), its id made only then.
    counts: dict[str, tuple[SignalMapper, Reading]] = field(default_factory=dict)


@dataclass(slots=True)
class _Derived:
    """One event's worth of mapped data before it gets its envelope."""

    kind: EventKind
    data: dict[str, object]
    unmapped: Sequence[str] = ()  # "table:code" of codes passed through unmapped
    quality: str | None = None  # overrides the reading's quality
    status: str | None = None
    cause: str | None = None  # the id of the event this one is derived from (`causationid`)


@dataclass(slots=True)
class SignalMapper:
    """Maps the readings of one signal of one source."""

    context: MappingContext
    source: str
    signal: str
    rule: SignalMapping
    units: UnitsSection = field(default_factory=UnitsSection)
    lookup: LookupTable | None = None
    lookup_name: str | None = None
    counters: MappingCounters = field(default_factory=MappingCounters)
    event_type: EventType | None = field(init=False)
    cloudevents_source: str = field(init=False)
    # The signal's configured name (or its address), as events and errors show it.
    name: str = field(init=False)
    out_unit: str | None = field(init=False)
    _conversion: Conversion | None = field(init=False)
    # The ids of this signal's facts, the key's constant head hashed once.
    ids: SignalIds = field(init=False, repr=False, compare=False)
    _last_count: int | None = field(default=None, init=False)
    _last_state: MachineState | None = field(default=None, init=False)
    _last_state_at: datetime | None = field(default=None, init=False)
    _active: bool = field(default=False, init=False)
    _active_since: datetime | None = field(default=None, init=False)
    _active_reason: _Code | None = field(default=None, init=False)
    _last_done: bool | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        kind = self.rule.event
        self.event_type = EVENT_TYPES[kind] if kind is not None else None
        self.cloudevents_source = f"/{self.context.site}/{self.context.agent}/{self.source}"
        self.name = signal_name(self.rule, self.signal)
        unit = self.rule.unit
        self.out_unit = self.rule.to_unit or (self.units.target_for(unit) if unit else None)
        self._conversion = None
        self.ids = signal_ids(self.context.site, self.source, self.signal)
        if unit is not None and self.out_unit is not None and self.out_unit != unit:
            self._conversion = conversion(unit, self.out_unit)

    def map(self, reading: Reading) -> list[Event]:
        """This signal's events on its own: without sibling signals, context or asset path
        (those need the agent's `Mapper`)."""
        return Mapper([self]).map(reading)

    def event_id(self, reading: Reading, kind: EventKind) -> str:
        """The id of the `kind` event of `reading` (the source fact and the event type)."""
        return self.ids.event_id(rfc3339(reading.timestamp), reading.value, _TYPE_NAMES[kind])

    # -- the per-signal steps ------------------------------------------------------------

    def derive(self, reading: Reading, asset: AssetValues) -> list[_Derived]:
        """The events of one reading; updates this signal's history and the asset's values."""
        rule = self.rule
        if reading.value is None:
            if reading.quality is Quality.GOOD:
                raise UnmappableReading(f"signal {self.name!r}: good quality but no value")
            # a value-less bad reading says nothing about counts, states, limits or orders
            if rule.event is EventKind.TELEMETRY:
                return [_Derived(EventKind.TELEMETRY, self._telemetry_data(None))]
            return []
        if rule.context is not None:
            asset.context[rule.context] = self.code(reading.value)
            return []
        if rule.event is None:
            asset.latest[self.name] = (
                self.code(reading.value) if self.lookup is not None else self._sibling(reading)
            )
            return []
        if rule.event is EventKind.TELEMETRY:
            number, clamped = self.measure(reading.value)
            asset.latest[self.name] = number
            derived = _Derived(EventKind.TELEMETRY, self._telemetry_data(number))
            if clamped and reading.quality is Quality.GOOD:
                derived.quality, derived.status = Quality.UNCERTAIN.value, CLAMPED_STATUS
            if rule.trigger is None:
                return [derived]
            alerts = self._triggered(reading, asset, EventKind.QUALITY_ALERT, number)
            for alert in alerts:  # derived from this telemetry event
                alert.cause = self.event_id(reading, EventKind.TELEMETRY)
            return [derived, *alerts]
        if rule.event is EventKind.PRODUCTION_COUNT:
            count = _as_count(reading.value, self.name)
            asset.latest[self.name] = count
            counted = _Derived(EventKind.PRODUCTION_COUNT, self._count(count))
            asset.counts[self.name] = (self, reading)
            return [counted]
        if rule.event is EventKind.MACHINE_STATE:
            return self._machine_state(reading)
        if rule.event is EventKind.WORKORDER_COMPLETED:
            return self._workorder(reading, asset)
        if rule.event is EventKind.MACHINE_ALARM:
            return [_Derived(EventKind.MACHINE_ALARM, _alarm_data(self.name, reading))]
        return self._triggered(reading, asset, rule.event, None)

    def measure(self, value: Value) -> tuple[float, bool]:
        """Scaled, clamped, converted and rounded value, and whether it was clamped."""
        rule = self.rule
        number = _as_number(value, self.name) * rule.scale + rule.offset
        clamped = False
        if rule.clamp is not None:
            low, high = rule.clamp
            clamped = not low <= number <= high
            number = min(max(number, low), high)
        if self._conversion is not None:
            number = self._conversion.apply(number)
        if rule.decimals is not None:
            number = round(number, rule.decimals)
        return number, clamped

    def code(self, value: Value) -> _Code:
        """The value as a code, translated by the signal's lookup table when it has one."""
        assert value is not None
        raw = code_text(value)
        if self.lookup is None or self.lookup_name is None:
            return _Code(raw, raw, None)
        mapped = self.lookup.codes.get(raw)
        if mapped is not None:
            return _Code(mapped, raw, None)
        table = self.lookup_name
        if self.lookup.unmapped == "dead-letter":
            totals = self.counters.codes_dead_lettered_total
            totals[table] = totals.get(table, 0) + 1
            raise UnmappableReading(
                f"signal {self.name!r}: code {raw!r} is not in lookup {table!r} "
                "(unmapped = \"dead-letter\")"
            )
        totals = self.counters.codes_unmapped_total
        totals[table] = totals.get(table, 0) + 1
        return _Code(raw, raw, f"{table}:{raw}")

    def _sibling(self, reading: Reading) -> object:
        value = reading.value
        if self.rule.unit is not None or self.rule.scale != 1.0 or self.rule.offset != 0.0:
            return self.measure(value)[0]
        return value

    def _telemetry_data(self, number: float | None) -> dict[str, object]:
        return {"signal": self.name, "value": number, "unit": self.out_unit}

    # -- counters --------------------------------------------------------------------------

    def _count(self, count: int) -> dict[str, object]:
        rollover = self.rule.rollover
        if rollover is not None and count > rollover:
            raise UnmappableReading(
                f"signal {self.name!r}: count {count} is above its rollover {rollover}"
            )
        last = self._last_count
        increment: int | None = None
        reset = False
        if last is not None:
            if count >= last:
                increment = count - last
            elif rollover is not None and (wrapped := rollover - last + 1 + count) <= (
                rollover + 1
            ) // 2:
                increment = wrapped  # wrapped past its maximum: still counting up
            else:
                reset, increment = True, count
        self._last_count = count
        return {"signal": self.name, "count": count, "increment": increment, "reset": reset}

    @property
    def count_baseline(self) -> int | None:
        return self._last_count

    def restore_count_baseline(self, count: int) -> None:
        if self._last_count is None:
            self._last_count = count

    # -- machine state ---------------------------------------------------------------------

    def _machine_state(self, reading: Reading) -> list[_Derived]:
        raw = reading.value
        assert raw is not None
        states = self.rule.states or {}
        key = code_text(raw)
        state = states.get(key)
        if state is None:
            known = ", ".join(sorted(states))
            raise UnmappableReading(
                f"signal {self.name!r}: value {raw!r} is not in its states table ({known})"
            )
        if state is self._last_state:
            return []
        previous, since = self._last_state, self._last_state_at
        duration = None
        if since is not None:
            duration = max(0.0, (reading.timestamp - since).total_seconds())
        self._last_state, self._last_state_at = state, reading.timestamp
        data: dict[str, object] = {
            "signal": self.name,
            "state": state.value,
            "previous": previous.value if previous is not None else None,
            "previous_duration_s": duration,
            "raw": raw,
        }
        return [_Derived(EventKind.MACHINE_STATE, data)]

    # -- alerts and downtime -----------------------------------------------------------------

    def _triggered(
        self, reading: Reading, asset: AssetValues, kind: EventKind, number: float | None
    ) -> list[_Derived]:
        """Start/end of an alert or a downtime; `number` is the measured value if known."""
        rule = self.rule
        assert kind in (EventKind.QUALITY_ALERT, EventKind.MACHINE_DOWNTIME)
        trigger = rule.trigger
        shown: bool | float
        if trigger is None or trigger.when is not None:
            shown = _as_bool(reading.value, self.name)
            active = shown == (trigger.when if trigger is not None else True)
            limit = None
        else:
            if number is None:
                number, _ = self.measure(reading.value)
                asset.latest[self.name] = number
            shown = number
            if trigger.above is not None:
                # starts above the limit; ends only below the limit less the hysteresis
                end_at = trigger.above - trigger.hysteresis
                active = number >= end_at if self._active else number > trigger.above
                limit = end_at if self._active else trigger.above
            else:
                assert trigger.below is not None
                end_at = trigger.below + trigger.hysteresis
                active = number <= end_at if self._active else number < trigger.below
                limit = end_at if self._active else trigger.below
        if active == self._active:
            return []
        self._active = active
        data: dict[str, object] = {"signal": self.name, "value": shown}
        if kind is EventKind.QUALITY_ALERT:
            data.update(
                severity=rule.severity or "warning",
                unit=self.out_unit if trigger is not None and trigger.when is None else None,
                limit=limit,
            )
        unmapped: list[str] = []
        if active:
            self._active_since = reading.timestamp
            data.update(phase="start", started_at=None, duration_s=None)
            if kind is EventKind.MACHINE_DOWNTIME:
                self._active_reason = self._reason(asset)
        else:
            since = self._active_since
            data.update(
                phase="end",
                started_at=rfc3339(since) if since is not None else None,
                duration_s=(
                    max(0.0, (reading.timestamp - since).total_seconds())
                    if since is not None
                    else None
                ),
            )
            self._active_since = None
        if kind is EventKind.MACHINE_DOWNTIME:
            reason = self._active_reason
            data.update(
                reason=reason.code if reason is not None else None,
                reason_raw=reason.raw if reason is not None else None,
            )
            if reason is not None and reason.unmapped is not None:
                unmapped.append(reason.unmapped)
            if not active:
                self._active_reason = None
        return [_Derived(kind, data, unmapped)]

    def _reason(self, asset: AssetValues) -> _Code | None:
        if self.rule.reason is None:
            return None
        latest = asset.latest.get(self.rule.reason)
        if latest is None:
            return None
        if isinstance(latest, _Code):
            return latest
        text = code_text(latest)  # type: ignore[arg-type]
        return _Code(text, text, None)

    # -- work orders ---------------------------------------------------------------------------

    def _workorder(self, reading: Reading, asset: AssetValues) -> list[_Derived]:
        done = _as_bool(reading.value, self.name)
        rising = done and self._last_done is not True
        self._last_done = done
        if not rising:
            return []
        fields = self.rule.workorder
        assert fields is not None
        order = asset.latest.get(fields.order)
        if order is None:
            raise UnmappableReading(
                f"signal {self.name!r}: the done bit rose but the order id {fields.order!r} "
                "has not been read yet"
            )
        unmapped: list[str] = []
        data: dict[str, object] = {"signal": self.name, "order": _code_value(order, unmapped)}
        product = asset.latest.get(fields.product) if fields.product else None
        data["product"] = _code_value(product, unmapped) if product is not None else None
        for key in ("good", "scrap"):
            ref = getattr(fields, key)
            value = asset.latest.get(ref) if ref is not None else None
            data[key] = _as_count(value, ref) if value is not None else None  # type: ignore[arg-type]
        data["unit"] = "1"  # PLC counters count pieces
        completed = _Derived(EventKind.WORKORDER_COMPLETED, data, unmapped)
        for ref in (fields.good, fields.scrap):  # derived from the count it reports
            counted = asset.counts.get(ref) if ref is not None else None
            if counted is not None:
                counter, latest = counted
                completed.cause = counter.event_id(latest, EventKind.PRODUCTION_COUNT)
                break
        return [completed]


def _alarm_data(name: str, reading: Reading) -> dict[str, object]:
    """A machine.alarm from an OPC UA A&C event reading (value: message; attributes: the rest)."""
    attributes = dict(reading.attributes)
    severity = attributes.get("severity")
    level = int(severity) if isinstance(severity, int | float) and 0 <= severity <= 1000 else None
    severity_class = None
    if level is not None:
        severity_class = "info" if level < 400 else "warning" if level < 700 else "critical"

    def text(key: str) -> str | None:
        value = attributes.get(key)
        return None if value is None else str(value)

    def flag(key: str) -> bool | None:
        value = attributes.get(key)
        return value if isinstance(value, bool) else None

    return {
        "signal": name,
        "message": None if reading.value is None else str(reading.value),
        "severity": level,
        "severity_class": severity_class,
        "condition": text("condition"),
        "source_name": text("source_name"),
        "active": flag("active"),
        "acknowledged": flag("acknowledged"),
        "event_type": text("event_type"),
    }


def _code_value(value: object, unmapped: list[str]) -> str:
    if isinstance(value, _Code):
        if value.unmapped is not None:
            unmapped.append(value.unmapped)
        return value.code
    return code_text(value)  # type: ignore[arg-type]


def _as_number(value: Value, name: str) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        number = float(value)
        if math.isfinite(number):
            return number
        raise UnmappableReading(f"signal {name!r}: value {value!r} is not a finite number")
    raise UnmappableReading(f"signal {name!r}: expected a number, got {type(value).__name__}")


def _as_bool(value: Value, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise UnmappableReading(f"signal {name!r}: expected true/false (or 0/1), got {value!r}")


def _as_count(value: Value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UnmappableReading(
            f"signal {name!r}: a counter must be a whole number, got {value!r}"
        )
    if isinstance(value, float) and not value.is_integer():
        raise UnmappableReading(f"signal {name!r}: a counter must be a whole number, got {value!r}")
    count = int(value)
    if count < 0:
        raise UnmappableReading(f"signal {name!r}: a counter cannot be negative ({count})")
    return count


def _record_settings(source: object, signal: str) -> RecordSettings:
    """The record settings behind a record source's rule: a webhook's route (its signal is the
    route's path), else the source itself (a file drop, an interface table)."""
    if isinstance(source, MesHttpSource):
        return next(route for route in source.routes if route.path == signal)
    assert isinstance(source, RecordSettings), source
    return source


class Mapper:
    """All signal mappers of one agent, keyed by (source name, signal address), and the
    record rules of record sources (keyed by source name)."""

    def __init__(
        self,
        mappers: Iterable[SignalMapper],
        *,
        asset_paths: dict[str, str] | None = None,
        counters: MappingCounters | None = None,
        records: Iterable[RecordRule] = (),
    ) -> None:
        self._mappers = {(m.source, m.signal): m for m in mappers}
        # Work order done bits: mapped after their siblings at equal times (`map_all`).
        self._done_bits = {
            key for key, m in self._mappers.items() if m.rule.event is EventKind.WORKORDER_COMPLETED
        }
        self._records = {(rule.source, rule.signal): rule for rule in records}
        # Record rules with a business key, by their events' CloudEvents source and signal.
        self._keyed = {
            (f"/{rule.context.site}/{rule.context.agent}/{rule.source}", rule.signal): rule
            for rule in self._records.values()
            if rule.business_key
        }
        self._asset_paths = asset_paths or {}
        self._assets: dict[str, AssetValues] = {}
        # Per asset: the values of it and of its parents that exist, nearest first (for
        # `_context_of`); forgotten whenever an asset is added.
        self._lineage: dict[str, tuple[AssetValues, ...]] = {}
        self.counters = counters or MappingCounters()

    @classmethod
    def from_config(cls, config: AgentConfig) -> Mapper:
        context = MappingContext(site=config.agent.site, agent=config.agent.id)
        counters = MappingCounters()
        mappers = [
            SignalMapper(
                context,
                source.name,
                signal.node,
                signal,
                units=config.units,
                lookup=config.lookups[signal.lookup] if signal.lookup else None,
                lookup_name=signal.lookup,
                counters=counters,
            )
            for source in config.sources
            for signal in source.signals
        ]
        records = [
            RecordRule(
                context, source.name, signal, event, asset,
                correlate_by=correlation_fields(
                    event, _record_settings(source, signal).correlate_by
                ),
                interface=RECORD_INTERFACES.get(source.type, "file"),
                secret_columns=_record_settings(source, signal).secret_columns,
                business_key=_record_settings(source, signal).business_key,
                lookups=tuple(
                    (name, table, config.lookups[table])
                    for name, table in _record_settings(source, signal).lookups.items()
                ),
                units=config.units,
                unknown_units=_record_settings(source, signal).unknown_units,
                time_zone=_record_settings(source, signal).time_zone,
                counters=counters,
            )
            for source in config.sources
            if isinstance(source, RECORD_SOURCES)
            for signal, event, asset in source.record_rules()
        ]
        assets = {m.rule.asset for m in mappers} | {rule.asset for rule in records}
        paths = {
            asset: path
            for asset in assets
            if (path := resolve_asset_path(config.assets, asset)) is not None
        }
        return cls(mappers, asset_paths=paths, counters=counters, records=records)

    def signal(self, source: str, address: str) -> SignalMapper | None:
        return self._mappers.get((source, address))

    @property
    def signals(self) -> list[SignalMapper]:
        return list(self._mappers.values())

    def map(self, reading: Reading) -> list[Event]:
        key = (reading.source, reading.signal)
        if self._records:
            record = self._records.get(key)
            if record is not None:
                return [self._record_event(record, reading)]
        mapper = self._mappers.get(key)
        if mapper is None:
            raise UnmappableReading(
                f"source {reading.source!r} sent signal {reading.signal!r}, which is not configured"
            )
        asset = mapper.rule.asset
        values = self._assets.get(asset)
        if values is None:
            values = self._assets[asset] = AssetValues()
            self._lineage.clear()
        derived = mapper.derive(reading, values)
        return [self._event(mapper, reading, item) for item in derived]

    def check_record(self, reading: Reading) -> tuple[str, list[tuple[str, str]]]:
        """The id of the event a record reading becomes, and the (field, message) problems
        that would keep it from becoming one (none: it will map). For a connector that must
        answer at once (the webhook: 400 with the field errors)."""
        rule = self._records.get((reading.source, reading.signal))
        if rule is None:
            return "", [("record", f"no record rule for {reading.source}/{reading.signal}")]
        return self._record_id(rule, reading), rule.problems(reading)

    def map_all(self, readings: Sequence[Reading]) -> tuple[list[Event], list[tuple[Reading, str]]]:
        """Map a batch (in source-timestamp order, work order done bits last at equal times);
        returns the events and the readings set aside with their reasons."""
        events: list[Event] = []
        rejected: list[tuple[Reading, str]] = []
        order = self._order if self._done_bits else _timestamp_of  # same order when no done bits
        for reading in sorted(readings, key=order):
            try:
                events.extend(self.map(reading))
            except UnmappableReading as error:
                rule = self._records.get((reading.source, reading.signal))
                if rule is not None:  # an MES record: the hub learns of it (record.rejected)
                    events.append(self._rejected_event(rule, reading, str(error)))
                    if reading.rejection is not None and not reading.rejection.set_aside:
                        continue  # its interface has its own channel back (report, 400)
                rejected.append((reading, str(error)))
        return events, rejected

    def business_key(self, event: Event) -> tuple[str, tuple[str, ...]] | None:
        """(record source name, (its signal, the values of its `business_key`...)) of a
        record's event, when its source has one (None: not a record event, or no key)."""
        if not self._keyed:
            return None
        rule = self._keyed.get((event.source, str(event.data.get("signal"))))
        if rule is None or EVENT_TYPES[rule.kind] != event.type:
            return None
        values = tuple("" if (v := event.data.get(k)) is None else str(v)
                       for k in rule.business_key)
        return rule.source, (rule.signal, *values)

    def event_type_of(self, source: str, signal: str) -> EventType | None:
        """The event type a reading of this source and signal was to become (None: none
        configured): the class its set-aside copy keeps."""
        rule = self._records.get((source, signal))
        if rule is not None:
            return EVENT_TYPES[rule.kind]
        mapper = self._mappers.get((source, signal))
        return mapper.event_type if mapper is not None else None

    def _order(self, reading: Reading) -> tuple[datetime, bool]:
        return reading.timestamp, (reading.source, reading.signal) in self._done_bits

    # -- counter baselines across restarts (see agent.mapping_state) ------------------------

    def counter_baselines(self) -> dict[str, int]:
        """The last count of every counter signal, keyed `source/address`."""
        return {
            f"{m.source}/{m.signal}": m.count_baseline
            for m in self._mappers.values()
            if m.count_baseline is not None
        }

    def restore_counter_baselines(self, baselines: dict[str, int]) -> int:
        """Set the counters' last counts (before any reading); returns how many were used."""
        used = 0
        for key, count in baselines.items():
            source, _, address = key.partition("/")
            mapper = self._mappers.get((source, address))
            if mapper is not None and mapper.rule.event is EventKind.PRODUCTION_COUNT:
                mapper.restore_count_baseline(count)
                used += 1
        return used

    # -- envelopes -----------------------------------------------------------------------------

    def _event(self, mapper: SignalMapper, reading: Reading, derived: _Derived) -> Event:
        event_type = EVENT_TYPES[derived.kind]
        type_name = _TYPE_NAMES[derived.kind]
        asset = mapper.rule.asset
        extensions: dict[str, str] = {}
        path = self._asset_paths.get(asset)
        if path is not None:
            extensions["assetpath"] = path
        unmapped = derived.unmapped
        context = self._context_of(asset)
        if context:
            codes = list(unmapped)
            for key, code in context.items():
                extensions[key] = code.code
                if code.unmapped is not None:
                    codes.append(code.unmapped)
            unmapped = codes
        if unmapped:
            extensions["unmapped"] = ",".join(dict.fromkeys(unmapped))
        if reading.backfilled:  # read from the source's history after a gap (issue 9)
            extensions["backfilled"] = "true"
        order = (
            derived.data.get(ORDER_FIELD) if derived.kind is EventKind.WORKORDER_COMPLETED
            else extensions.get("workorder")
        )
        if order is not None:
            extensions["correlationid"] = f"{ORDER_FIELD}:{order}"
        if derived.cause is not None:
            extensions["causationid"] = derived.cause
        quality = derived.quality or _QUALITY_TEXT[reading.quality]
        status = derived.status if derived.quality is not None else reading.status
        own_id = mapper.ids.event_id(rfc3339(reading.timestamp), reading.value, type_name)
        if reading.trace:
            self._continue_trace(reading, own_id, extensions)
        return Event(  # id, type, source, time, subject, quality, status, data, extensions
            own_id, event_type, mapper.cloudevents_source, reading.timestamp, asset, quality,
            status, derived.data, extensions,  # data: made for this event alone (`derive`)
        )

    @staticmethod
    def _record_id(rule: RecordRule, reading: Reading) -> str:
        return record_id(
            site=rule.context.site,
            source=rule.source,
            key=f"{reading.signal}:{reading.value}",
            type_name=EVENT_TYPES[rule.kind].name,
        )

    def _record_event(self, rule: RecordRule, reading: Reading) -> Event:
        event_type = EVENT_TYPES[rule.kind]
        data, unmapped = rule.event_data_flagged(reading)
        own_id = self._record_id(rule, reading)
        extensions: dict[str, str] = {}
        path = self._asset_paths.get(rule.asset)
        if path is not None:
            extensions["assetpath"] = path
        if unmapped:
            extensions["unmapped"] = ",".join(dict.fromkeys(unmapped))
        for name in rule.correlate_by:
            value = data.get(name)
            if value is not None and value != "":
                extensions["correlationid"] = f"{name}:{value}"
                break
        if reading.trace:
            self._continue_trace(reading, own_id, extensions)
        context = rule.context
        return Event(
            id=own_id,
            type=event_type,
            source=f"/{context.site}/{context.agent}/{rule.source}",
            time=reading.timestamp,
            subject=rule.asset,
            quality=reading.quality.value,
            status=reading.status,
            data=data,
            extensions=extensions,
        )

    def _rejected_event(self, rule: RecordRule, reading: Reading, reason: str) -> Event:
        """The `record.rejected` event of a record that makes no event of its type: its id
        from the record's key (a repeat of the bad record is a repeat of this event); its
        correlationid the order (else the lot) it names, so the hub can tell which orders
        failed to post."""
        event_type = EVENT_TYPES[EventKind.RECORD_REJECTED]
        data = rule.rejected_data(reading, reason)
        own_id = record_id(
            site=rule.context.site,
            source=rule.source,
            key=f"{reading.signal}:{reading.value}",
            type_name=event_type.name,
        )
        extensions: dict[str, str] = {}
        path = self._asset_paths.get(rule.asset)
        if path is not None:
            extensions["assetpath"] = path
        for name in ("order", "lot", "material"):
            value = data.get(name)
            if isinstance(value, str) and value:
                extensions["correlationid"] = f"{name}:{value}"
                break
        if reading.trace:
            self._continue_trace(reading, own_id, extensions)
        context = rule.context
        return Event(
            id=own_id,
            type=event_type,
            source=f"/{context.site}/{context.agent}/{rule.source}",
            time=reading.timestamp,
            subject=rule.asset,
            quality="good",  # the fact (this record was refused) is certain
            status=None,
            data=data,
            extensions=extensions,
        )

    def _continue_trace(self, reading: Reading, own_id: str, extensions: dict[str, str]) -> None:
        """The event's span as a child of the trace context the fact came with (a webhook
        request's headers): `traceparent`, and `tracestate` passed on. An invalid header is
        ignored (the event then starts a trace of its own, or goes without the tracestate):
        counted per source and route, logged once per route. A `tracestate` without a
        `traceparent` means nothing (W3C Trace Context) and is dropped."""
        headers = dict(reading.trace)
        received = headers.get("traceparent")
        if received is None:
            return
        parent = parse_traceparent(received)
        if parent is None:
            self._invalid_trace_header(reading, "traceparent", received)
            return
        extensions["traceparent"] = traceparent(own_id, parent)
        state = headers.get("tracestate", "").strip()
        if not state:
            return
        if len(state) <= _TRACESTATE_MAX_CHARS and state.isascii() and state.isprintable():
            extensions["tracestate"] = state
        else:
            self._invalid_trace_header(reading, "tracestate", state)

    def _invalid_trace_header(self, reading: Reading, header: str, received: str) -> None:
        where = f"{reading.source}{reading.signal}"
        totals = self.counters.trace_headers_invalid_total
        totals[where] = totals.get(where, 0) + 1
        if totals[where] == 1:
            _log.warning(
                "source %s route %s sends an invalid %s header (%r): ignored, its events start "
                "a trace of their own; further ones are counted in status "
                "(mapping.trace_headers_invalid_total)",
                reading.source, reading.signal, header, received[:80],
            )

    def _context_of(self, asset: str) -> dict[str, _Code]:
        """The asset's work order and product: its own, else its nearest parent's."""
        lineage = self._lineage.get(asset)
        if lineage is None:
            levels = asset.split("/")
            lineage = self._lineage[asset] = tuple(
                values
                for size in range(len(levels), 0, -1)
                if (values := self._assets.get("/".join(levels[:size]))) is not None
            )
        found: dict[str, _Code] = {}
        for values in lineage:
            for key, code in values.context.items():
                found.setdefault(key, code)
        return found
