"""Dual publish: a retired major version published beside its successor for a window.

`[contracts] dual_publish_until` (`config.contracts`) names retired versions and until when.
While the agent's clock is before that moment, each event of the successor that the pipeline
appends gets its retired copy (`events.versions.DownConversion`) right after it, in the same
buffer transaction: an event of its own (its own id and `seq`), published on the retired
version's topic, delivered, acked, replayed and dead-lettered like any other. So a consumer
subscribed to the retired topic keeps receiving events through an upgrade, until the window it
was told of.

Invariants:
- The clock is read once per commit (`beside`) and when status asks (`status`); a window that
  has passed is closed for good (logged once, info): no copy is made after it, and a reload
  into the same config closes it again at once.
- A copy's id derives from its successor's (`events.versions.retired_id`): a repeat of the
  successor (the same fact again) makes the same copy, and the buffer drops both.
- An event the retired version cannot say (`NotConvertible`: a completion in kg has no v1,
  which counts pieces) gets no copy: counted per retired type (`skipped_total`), the first
  one logged with the reason.
- `status` says which versions the agent publishes now, per kind (newest first), and each
  configured window: until, open, copies made, skipped (docs/hub-contract.md "Status").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from events.models import AGENT_EVENT_MODELS, EVENT_TYPES, Event
from events.versions import DOWN_CONVERSIONS, DownConversion, NotConvertible

_log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class DualWindow:
    """One retired version published beside its successor until `until`."""

    conversion: DownConversion
    until: datetime
    open: bool = True
    copies_total: int = 0  # retired copies handed to the buffer (a repeat's copy included)
    skipped_total: int = 0  # successor events the retired version cannot say: no copy

    @property
    def until_text(self) -> str:
        return self.until.astimezone(UTC).isoformat().replace("+00:00", "Z")


class DualPublisher:
    """Adds the retired copies to what the pipeline appends; see the module docstring."""

    def __init__(
        self,
        until: Mapping[str, datetime],
        *,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """`until`: retired versioned type name -> end of its window (timezone-aware), each
        with a down-conversion (`config.contracts` checks that)."""
        self._clock = clock
        self.windows = [
            DualWindow(DOWN_CONVERSIONS[name], moment) for name, moment in until.items()
        ]
        self._open: list[DualWindow] = list(self.windows)
        self._close_passed(clock())

    def beside(self, events: list[Event]) -> list[Event]:
        """`events` with the retired copy of each successor event right after it, while its
        window is open."""
        if not self._open:
            return events
        self._close_passed(self._clock())
        if not self._open:
            return events
        successors = {window.conversion.successor for window in self._open}
        if not any(event.type in successors for event in events):
            return events
        out: list[Event] = []
        for event in events:
            out.append(event)
            if event.type not in successors:
                continue
            for window in self._open:
                if window.conversion.successor == event.type:
                    copy = self._copy(window, event)
                    if copy is not None:
                        out.append(copy)
        return out

    def status(self) -> dict[str, Any]:
        """`publishes`: per kind, the versioned types published now, newest first;
        `dual_publish`: per configured retired type, its window and counts."""
        self._close_passed(self._clock())
        publishes = {kind.value: [event_type.name] for kind, event_type in EVENT_TYPES.items()}
        for name in AGENT_EVENT_MODELS:
            publishes.setdefault(name.rpartition(".v")[0], []).append(name)
        dual: dict[str, dict[str, Any]] = {}
        for window in self.windows:
            retired = window.conversion.retired
            if window.open:
                publishes[retired.kind.value].append(retired.name)
            dual[retired.name] = {
                "beside": window.conversion.successor.name,
                "until": window.until_text,
                "open": window.open,
                "copies_total": window.copies_total,
                "skipped_total": window.skipped_total,
            }
        return {"publishes": publishes, "dual_publish": dual}

    def _copy(self, window: DualWindow, event: Event) -> Event | None:
        try:
            copy = window.conversion.convert(event)
        except NotConvertible as error:
            window.skipped_total += 1
            if window.skipped_total == 1:
                _log.warning(
                    "dual publish: %s event %s has no %s copy: %s; such events are counted "
                    "in status (event_types.dual_publish)",
                    event.type.name, event.id, window.conversion.retired.name, error,
                )
            return None
        window.copies_total += 1
        return copy

    def _close_passed(self, now: datetime) -> None:
        for window in [window for window in self._open if now >= window.until]:
            window.open = False
            self._open.remove(window)
            _log.info(
                "dual publish of %s beside %s ended (dual_publish_until %s): only %s from now",
                window.conversion.retired.name, window.conversion.successor.name,
                window.until_text, window.conversion.successor.name,
            )
