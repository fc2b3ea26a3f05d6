"""Canonical events as Sparkplug metrics: which device an event belongs to, and which metrics
(name, datatype, value, unit, timestamp) its data becomes.

The rules (docs/sparkplug.md, "Events as metrics"):
- Device: the event's asset, `assetpath` if it has one, else `subject` (`line1/filler`),
  made one topic level: `/` becomes `:`, `+` and `#` become `_` (`line1:filler`). Events of
  the agent itself (subject `agent`) go to the device `agent`.
- `telemetry.v1` (`{signal, value, unit}`): one metric named after the signal.
- Any other type: one metric per field of its data, named `{type}/{field}` (`type` without
  its `.vN`; with a `signal` field, `{type}/{signal}/{field}`); nested maps flatten with `/`;
  `signal` and `unit` themselves are not metrics.
- Datatypes: a number is Double (every number: a metric's datatype is fixed by its birth, and
  a count that once comes as 2.5 would need a new birth otherwise), a boolean Boolean, text
  String, a list JSON text as String; null is sent as `is_null` with the metric's datatype.
- Units: the data's `unit` (a UCUM code) is the `engUnit` property (Sparkplug's convention in
  its PropertySet) of each Double metric of that event, sent in the births.
- Timestamp: the event's `time` in ms since the epoch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from agent.link.sparkplug import sparkplug_b_pb2 as pb

__all__ = [
    "AGENT_DEVICE",
    "BOOLEAN",
    "DOUBLE",
    "INT64",
    "STRING",
    "MetricValue",
    "device_id",
    "event_metrics",
    "topic_safe",
]

INT64: Final = int(pb.Int64)
DOUBLE: Final = int(pb.Double)
BOOLEAN: Final = int(pb.Boolean)
STRING: Final = int(pb.String)

AGENT_DEVICE = "agent"
_NOT_METRICS = frozenset({"signal", "unit"})
_UNSAFE = str.maketrans({"/": ":", "+": "_", "#": "_"})

Scalar = bool | float | str | None


@dataclass(frozen=True, slots=True)
class MetricValue:
    """One value of one metric; `datatype` None: the value is null and says no type."""

    name: str
    datatype: int | None
    value: Scalar
    unit: str | None
    timestamp_ms: int


def topic_safe(name: str) -> str:
    """`name` as one MQTT topic level (module docstring)."""
    return name.translate(_UNSAFE) or "_"


def device_id(envelope: Mapping[str, Any]) -> str:
    """The Sparkplug device an event belongs to (module docstring)."""
    for key in ("assetpath", "subject"):
        value = envelope.get(key)
        if isinstance(value, str) and value:
            return topic_safe(value)
    return AGENT_DEVICE


def event_metrics(envelope: Mapping[str, Any]) -> list[MetricValue]:
    """The metrics one event's data becomes (module docstring). ValueError: no usable time."""
    type_name = str(envelope.get("type") or "event")
    base = type_name.rsplit(".v", 1)[0] if ".v" in type_name else type_name
    timestamp_ms = _timestamp_ms(envelope.get("time"))
    data = envelope.get("data")
    if not isinstance(data, Mapping):
        datatype, value = _typed(data)
        return [MetricValue(base, datatype, value, None, timestamp_ms)]
    unit = data.get("unit") if isinstance(data.get("unit"), str) else None
    signal = data.get("signal") if isinstance(data.get("signal"), str) else None
    if base == "telemetry" and signal:
        datatype, value = _typed(data.get("value"))
        return [MetricValue(signal, datatype, value, _unit(datatype, unit), timestamp_ms)]
    prefix = f"{base}/{signal}" if signal else base
    metrics = []
    for path, raw in _flatten(data, top=True):
        datatype, value = _typed(raw)
        metrics.append(
            MetricValue(f"{prefix}/{path}", datatype, value, _unit(datatype, unit), timestamp_ms)
        )
    return metrics


def _unit(datatype: int | None, unit: str | None) -> str | None:
    return unit if datatype in (DOUBLE, None) else None


def _flatten(data: Mapping[str, Any], *, top: bool = False) -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if top and key in _NOT_METRICS:
            continue
        if isinstance(value, Mapping) and value:
            for path, inner in _flatten(value):
                yield f"{key}/{path}", inner
        else:
            yield str(key), value


def _typed(value: Any) -> tuple[int | None, Scalar]:
    if value is None:
        return None, None
    if isinstance(value, bool):
        return BOOLEAN, value
    if isinstance(value, int | float):
        return DOUBLE, float(value)
    if isinstance(value, str):
        return STRING, value
    try:
        return STRING, json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except TypeError as error:
        raise ValueError(f"a data value Sparkplug cannot carry: {error}") from error


def _timestamp_ms(value: Any) -> int:
    if not isinstance(value, str):
        raise ValueError(f"event time {value!r} is not an RFC 3339 text")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as error:
        raise ValueError(f"event time {value!r} is not RFC 3339") from error
    return round(moment.timestamp() * 1000)
