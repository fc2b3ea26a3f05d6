"""What the status page shows that the agent does not keep by itself: the last value of each
signal, recent state changes, and buffer depth and deliveries over the last 24 h.

- `LastValues` (kept in `agent.flow.signal_values`, re-exported here for the page): the newest
  reading of each signal, which the status documents and `opcua watch` show as well. The agent
  owns the one instance (`Agent.signals`); the page reads it.
- `StateLog`: changes of the hub link, of each source's state and connection, of backpressure
  and of paused lanes, found by comparing in-memory state once a second (no SQLite query), the
  last `MAX_CHANGES` kept in memory.
- `History`: one sample every `[web] history_interval_s` (pending per class, events delivered
  since the previous sample, dead letters) in a ring of `HISTORY_SAMPLES`, written to
  `web-history.json` in the state dir after every sample, atomically (a temporary file, fsync,
  rename), so a restart keeps the plots. Its size is bounded by the ring (about 60 kB). A file
  that cannot be read (corrupt, another version) is set aside as `.bad` and the ring starts
  empty; a sample that cannot be written (the short disk) is logged once and kept in memory,
  written with the next one. A crash costs at most the samples since the last write.
  Samples older than the ring's span are dropped on load (the agent was down meanwhile: the
  plot shows the gap).

None of this is on the path of an event: a failure here is logged, never raised to the agent.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.flow.signal_values import MAX_SIGNALS_PER_SOURCE, LastValue, LastValues
from config.observability import HISTORY_SAMPLES
from connectors.base import is_short_disk

if TYPE_CHECKING:
    from agent.view import AgentView

__all__ = [
    "HISTORY_FILE",
    "MAX_SIGNALS_PER_SOURCE",
    "History",
    "LastValue",
    "LastValues",
    "Sample",
    "StateChange",
    "StateLog",
]

_log = logging.getLogger(__name__)

HISTORY_FILE = "web-history.json"
_FORMAT_VERSION = 1
MAX_CHANGES = 100
CLASSES = ("telemetry", "business", "critical")
_PRIORITY_CLASS = {0: "telemetry", 1: "business", 2: "critical"}


# -- state changes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateChange:
    at: float  # epoch s
    subject: str  # "hub", "source line1", "buffer", "lane <topic>"
    change: str  # "connected", "disconnected", "running → retrying", ...


class StateLog:
    """Changes of the agent's in-memory state, found by `poll()` once a second."""

    def __init__(self, agent: AgentView) -> None:
        self._agent = agent
        self._last: dict[str, str] = {}
        # Connections and connector failures counted at the last look: a flap shorter than
        # the poll (connected and lost again within a second) still shows as a change.
        self._flaps: dict[str, int] = {}
        self.changes: collections.deque[StateChange] = collections.deque(maxlen=MAX_CHANGES)

    def _now_state(self) -> dict[str, str]:
        agent = self._agent
        state = {"hub": "connected" if agent.session.connected else "disconnected"}
        for runner in agent.sources:
            health = runner.connector.health
            connected = "connected" if health.connected else "not connected"
            state[f"source {runner.connector.name}"] = f"{runner.state}, {connected}"
        counters = agent.pipeline.counters
        state["buffer"] = "backpressure" if counters.backpressure else "accepting"
        for topic in agent.forwarder.paused_topics:
            state[f"lane {topic}"] = "paused"
        return state

    def _now_flaps(self) -> dict[str, int]:
        agent = self._agent
        flaps = {"hub": agent.session.connection_epoch}
        for runner in agent.sources:
            flaps[f"source {runner.connector.name}"] = runner.failures_total
        return flaps

    def poll(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        state, flaps = self._now_state(), self._now_flaps()
        for subject, value in state.items():
            before = self._last.get(subject)
            if before == value:
                missed = flaps.get(subject, 0) - self._flaps.get(subject, 0)
                if missed > 0 and before is not None:
                    what = "connection(s) made" if subject == "hub" else "failure(s)"
                    self.changes.append(
                        StateChange(now, subject, f"{value} again ({missed} {what} within "
                                                  "the last second)")
                    )
                continue
            if before is None and subject.startswith("lane "):
                change = "paused (the broker refuses the topic)"
            elif before is None:
                change = value
            else:
                change = f"{before} → {value}"
            self.changes.append(StateChange(now, subject, change))
        for subject in self._last.keys() - state.keys():  # a lane resumed
            self.changes.append(StateChange(now, subject, "resumed"))
        self._last, self._flaps = state, flaps


# -- the 24 h ring -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # epoch s
    pending: dict[str, int]  # class -> pending events
    delivered: int  # events acked by the broker since the previous sample
    dead_letters: int

    @property
    def pending_total(self) -> int:
        return sum(self.pending.values())

    def as_json(self) -> list[Any]:
        return [round(self.at, 3), *(self.pending.get(c, 0) for c in CLASSES),
                self.delivered, self.dead_letters]

    @classmethod
    def from_json(cls, row: list[Any]) -> Sample:
        at, telemetry, business, critical, delivered, dead = row
        return cls(float(at), {"telemetry": int(telemetry), "business": int(business),
                               "critical": int(critical)}, int(delivered), int(dead))


class History:
    """The ring of samples and its file; see the module docstring."""

    def __init__(self, path: Path, interval_s: float, size: int = HISTORY_SAMPLES) -> None:
        self.path = path
        self.interval_s = interval_s
        self.samples: collections.deque[Sample] = collections.deque(maxlen=size)
        self._last_forwarded: int | None = None
        self._write_failing = False

    @property
    def span_s(self) -> float:
        return (self.samples.maxlen or HISTORY_SAMPLES) * self.interval_s

    def load(self, now: float | None = None) -> None:
        """Read the ring file (missing: start empty; unreadable: set aside, start empty)."""
        now = time.time() if now is None else now
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as error:
            _log.warning("web: cannot read %s (%s); the plots start empty", self.path, error)
            return
        try:
            document = json.loads(text)
            if document.get("version") != _FORMAT_VERSION:
                raise ValueError(f"version {document.get('version')!r}")
            samples = [Sample.from_json(row) for row in document["samples"]]
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            bad = self.path.with_suffix(".bad")
            with contextlib.suppress(OSError):
                os.replace(self.path, bad)
            _log.warning("web: %s is not a history file (%s): moved to %s; the plots start "
                         "empty", self.path, error, bad.name)
            return
        oldest = now - self.span_s
        self.samples.extend(s for s in samples if oldest <= s.at <= now + 60)

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)

    def delivered_since_last(self, forwarded_total: int) -> int:
        """Events delivered since the previous call (the forwarder's counter starts at 0 with
        each generation: the first call of this one counts from 0)."""
        last, self._last_forwarded = self._last_forwarded, forwarded_total
        if last is None or forwarded_total < last:
            return forwarded_total if last is not None else 0
        return forwarded_total - last

    def write(self) -> None:
        """Write the ring atomically (module docstring); logs a failure, never raises."""
        document = {"version": _FORMAT_VERSION, "interval_s": self.interval_s,
                    "samples": [s.as_json() for s in self.samples]}
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            with temporary.open("w", encoding="utf-8") as file:
                json.dump(document, file, separators=(",", ":"))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except OSError as error:
            if not self._write_failing:
                kind = "the state dir is short" if is_short_disk(error) else "an error"
                _log.warning("web: cannot write %s (%s: %s); the plot history is kept in "
                             "memory and written again with the next sample", self.path, kind,
                             error.strerror or error)
            self._write_failing = True
            with contextlib.suppress(OSError):
                temporary.unlink()
            return
        if self._write_failing:
            _log.info("web: %s written again", self.path)
        self._write_failing = False


async def take_sample(agent: AgentView, history: History) -> Sample:
    """One sample of the agent's buffer (one `Buffer.stats()` query)."""
    stats = await agent.buffer.stats()
    pending = {name: stats.pending_by_priority.get(p, 0) for p, name in _PRIORITY_CLASS.items()}
    delivered = history.delivered_since_last(agent.forwarder.counters.events_forwarded_total)
    return Sample(time.time(), pending, delivered, stats.dead_letters)
