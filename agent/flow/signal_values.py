"""Per-signal diagnostics: the newest reading of each signal and what happened to it.

`LastValues` keeps, per (source, signal), the last value, its quality as the source named it
(the OPC UA StatusCode name: `Good`, `BadSensorFailure`, ...), its source timestamp, when the
agent received it, how many readings of it arrived (`changes`: a subscription reports changes
only, a poll emits a reading only when something changed) and the last Bad or Uncertain status
with its time. It is filled by `tap`, a wrapper around the pipeline's `emit` that the runtime
hands the sources, and read by the status documents (`agent.link.status` for `remote status`,
`agent.service.daemon` for `edge-agent status`), the status page (`agent.web`) and
`edge-agent opcua watch`.

Invariants:
- Bounded: at most `MAX_SIGNALS_PER_SOURCE` signals per source (a record source's readings are
  records, one "signal" per record kind or column set); past the bound new ones are counted
  in `not_kept`, not kept. A value is kept as the reading gave it; a document shortens text
  values to `MAX_VALUE_CHARS`.
- A problem clears when it is resolved: a signal's `error` is what is wrong now (its node
  cannot be watched: the connector's `signal_errors`; or its last value is not Good). The next
  Good value clears it; the last problem stays as `last_error` / `last_error_at`, a record of
  what happened, never shown as a current problem.
- Memory only, off the path of an event: a restart starts empty, the next reading fills it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from connectors.base import Emit, Quality, Reading

__all__ = [
    "MAX_SIGNALS_PER_SOURCE",
    "MAX_VALUE_CHARS",
    "LastValue",
    "LastValues",
    "status_name",
]

MAX_SIGNALS_PER_SOURCE = 500
MAX_VALUE_CHARS = 80


def status_name(reading: Reading) -> str:
    """The reading's quality as its StatusCode name (`Good` when the source said nothing)."""
    if reading.status:
        return reading.status
    return {Quality.GOOD: "Good", Quality.UNCERTAIN: "Uncertain", Quality.BAD: "Bad"}[
        reading.quality
    ]


@dataclass(frozen=True, slots=True)
class LastValue:
    """The newest reading of one signal, and its counts."""

    value: object
    quality: str  # the class: "good", "uncertain", "bad"
    status: str | None  # the source's status name when not plainly good
    at: float  # the reading's timestamp (epoch s)
    source_timestamp: float | None = None  # epoch s; None when the source gives none
    received_at: float | None = None  # epoch s
    changes: int = 1
    last_error: str | None = None  # the last status that was not Good, kept after it cleared
    last_error_at: float | None = None  # the reading's timestamp of that status

    @property
    def status_name(self) -> str:
        if self.status:
            return self.status
        return {"good": "Good", "uncertain": "Uncertain"}.get(self.quality, "Bad")


class LastValues:
    """The newest reading per (source, signal); see the module docstring."""

    def __init__(self) -> None:
        self.by_source: dict[str, dict[str, LastValue]] = {}
        self.not_kept: collections.Counter[str] = collections.Counter()

    def note(self, readings: Sequence[Reading]) -> None:
        for reading in readings:
            signals = self.by_source.setdefault(reading.source, {})
            before = signals.get(reading.signal)
            if before is None and len(signals) >= MAX_SIGNALS_PER_SOURCE:
                self.not_kept[reading.source] += 1
                continue
            last_error = before.last_error if before is not None else None
            last_error_at = before.last_error_at if before is not None else None
            at = reading.timestamp.timestamp()
            if reading.quality is not Quality.GOOD:
                last_error, last_error_at = status_name(reading), at
            signals[reading.signal] = LastValue(
                reading.value,
                str(reading.quality),
                reading.status,
                at,
                source_timestamp=_epoch(reading.source_timestamp),
                received_at=_epoch(reading.received_at),
                changes=(before.changes + 1) if before is not None else 1,
                last_error=last_error,
                last_error_at=last_error_at,
            )

    def tap(self, emit: Emit) -> Emit:
        """`emit`, noting each batch of readings first."""

        async def tapped(readings: Sequence[Reading]) -> asyncio.Future[None] | None:
            self.note(readings)
            return await emit(readings)

        return tapped

    def document(
        self,
        source: str,
        *,
        names: Mapping[str, str | None] | None = None,
        errors: Mapping[str, str] | None = None,
        limit: int = MAX_SIGNALS_PER_SOURCE,
    ) -> tuple[dict[str, dict[str, Any]], int]:
        """The per-signal diagnostics of `source` for a status document, keyed by address:
        the configured signals first (`names`: address → configured name, in config order),
        then any other signal seen; at most `limit` of them. Returns them and how many were
        left out (over `limit`, or not kept at all past `MAX_SIGNALS_PER_SOURCE`).
        `errors`: the connector's current problems per address (`signal_errors`)."""
        seen = self.by_source.get(source, {})
        names = names or {}
        errors = errors or {}
        order = list(names) + sorted(seen.keys() - names.keys())
        order += sorted(errors.keys() - set(order))
        listed = order[:limit]
        left_out = len(order) - len(listed) + self.not_kept.get(source, 0)
        return {
            address: _signal_entry(seen.get(address), names.get(address), errors.get(address))
            for address in listed
        }, left_out


def _signal_entry(last: LastValue | None, name: str | None, error: str | None) -> dict[str, Any]:
    if last is None:
        return {
            "name": name,
            "value": None,
            "quality": None,
            "source_timestamp": None,
            "received_at": None,
            "changes": 0,
            "error": error,
            "last_error": error,
            "last_error_at": None,
        }
    value = last.value
    if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
        value = value[: MAX_VALUE_CHARS - 1] + "…"
    current = error
    if current is None and last.quality != "good":
        current = last.status_name
    return {
        "name": name,
        "value": value,
        "quality": last.status_name,
        "source_timestamp": _iso(last.source_timestamp),
        "received_at": _iso(last.received_at),
        "changes": last.changes,
        "error": current,
        "last_error": error if error is not None else last.last_error,
        "last_error_at": _iso(last.last_error_at),
    }


def _epoch(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
