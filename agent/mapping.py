"""Mapping: readings in, canonical events out. Pure code: no I/O, no clock, no asyncio.

One `SignalMapper` per configured signal turns that signal's readings into zero or more
`Event`s. Mappers that derive events from the signal's history (counter increments, state
changes) keep that history in memory; a restart starts them afresh (the first reading after a
restart has no increment / no previous state, and a repeat of an already-accepted fact gets the
same id, so the buffer drops it).

A reading that cannot be mapped (a text where a number is expected, a state value missing from
the table) raises `UnmappableReading` with the reason: the pipeline counts it and sets it aside;
it never becomes a half-filled event.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from agent.events import EVENT_TYPES, Event, EventType, event_id
from config.schema import AgentConfig, EventKind, MachineState, SignalMapping
from connectors.base import Quality, Reading, Value


class UnmappableReading(ValueError):
    """A reading that no event can be made of; the message says why."""


@dataclass(frozen=True, slots=True)
class MappingContext:
    site: str
    agent: str


@dataclass(slots=True)
class SignalMapper:
    """Maps the readings of one signal of one source."""

    context: MappingContext
    source: str
    signal: str
    rule: SignalMapping
    event_type: EventType = field(init=False)
    cloudevents_source: str = field(init=False)
    _last_count: int | None = field(default=None, init=False)
    _last_state: MachineState | None = field(default=None, init=False)
    _last_state_at: datetime | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.event_type = EVENT_TYPES[self.rule.event]
        self.cloudevents_source = f"/{self.context.site}/{self.context.agent}/{self.source}"

    @property
    def name(self) -> str:
        return self.rule.name or self.signal

    def map(self, reading: Reading) -> list[Event]:
        kind = self.rule.event
        data: dict[str, object] | None
        if kind is EventKind.TELEMETRY:
            data = self._telemetry(reading)
        elif kind is EventKind.PRODUCTION_COUNT:
            data = self._production_count(reading)
        else:
            data = self._machine_state(reading)
        if data is None:
            return []
        return [
            Event(
                id=event_id(
                    site=self.context.site,
                    source=self.source,
                    signal=self.signal,
                    timestamp=reading.timestamp,
                    value=reading.value,
                    type_name=self.event_type.name,
                ),
                type=self.event_type,
                source=self.cloudevents_source,
                time=reading.timestamp,
                subject=self.rule.asset,
                quality=reading.quality.value,
                status=reading.status,
                data=data,
            )
        ]

    def _telemetry(self, reading: Reading) -> dict[str, object]:
        value = reading.value
        number: float | None
        if value is None:
            if reading.quality is Quality.GOOD:
                raise UnmappableReading(f"signal {self.name!r}: good quality but no value")
            number = None
        else:
            number = _as_number(value, self.name)
        return {"signal": self.name, "value": number, "unit": self.rule.unit}

    def _production_count(self, reading: Reading) -> dict[str, object] | None:
        if reading.value is None:
            if reading.quality is Quality.GOOD:
                raise UnmappableReading(f"signal {self.name!r}: good quality but no value")
            return None  # a bad counter reading says nothing about production
        count = _as_count(reading.value, self.name)
        increment: int | None = None
        reset = False
        if self._last_count is not None:
            if count >= self._last_count:
                increment = count - self._last_count
            else:
                reset = True
                increment = count
        self._last_count = count
        return {"signal": self.name, "count": count, "increment": increment, "reset": reset}

    def _machine_state(self, reading: Reading) -> dict[str, object] | None:
        raw = reading.value
        if raw is None:
            if reading.quality is Quality.GOOD:
                raise UnmappableReading(f"signal {self.name!r}: good quality but no value")
            return None
        states = self.rule.states or {}
        key = _state_key(raw)
        state = states.get(key)
        if state is None:
            known = ", ".join(sorted(states))
            raise UnmappableReading(
                f"signal {self.name!r}: value {raw!r} is not in its states table ({known})"
            )
        if state is self._last_state:
            return None
        previous, since = self._last_state, self._last_state_at
        duration = None
        if since is not None:
            duration = max(0.0, (reading.timestamp - since).total_seconds())
        self._last_state, self._last_state_at = state, reading.timestamp
        return {
            "signal": self.name,
            "state": state.value,
            "previous": previous.value if previous is not None else None,
            "previous_duration_s": duration,
            "raw": raw,
        }


def _as_number(value: Value, name: str) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        number = float(value)
        if math.isfinite(number):
            return number
        raise UnmappableReading(f"signal {name!r}: value {value!r} is not a finite number")
    raise UnmappableReading(f"signal {name!r}: expected a number, got {type(value).__name__}")


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


def _state_key(raw: Value) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw)


class Mapper:
    """All signal mappers of one agent, keyed by (source name, signal address)."""

    def __init__(self, mappers: Iterable[SignalMapper]) -> None:
        self._mappers = {(m.source, m.signal): m for m in mappers}

    @classmethod
    def from_config(cls, config: AgentConfig) -> Mapper:
        context = MappingContext(site=config.agent.site, agent=config.agent.id)
        return cls(
            SignalMapper(context, source.name, signal.node, signal)
            for source in config.sources
            for signal in source.signals
        )

    def map(self, reading: Reading) -> list[Event]:
        mapper = self._mappers.get((reading.source, reading.signal))
        if mapper is None:
            raise UnmappableReading(
                f"source {reading.source!r} sent signal {reading.signal!r}, which is not configured"
            )
        return mapper.map(reading)

    def map_all(self, readings: Sequence[Reading]) -> tuple[list[Event], list[tuple[Reading, str]]]:
        """Map a batch; returns the events and the readings set aside with their reasons."""
        events: list[Event] = []
        rejected: list[tuple[Reading, str]] = []
        for reading in readings:
            try:
                events.extend(self.map(reading))
            except UnmappableReading as error:
                rejected.append((reading, str(error)))
        return events, rejected
