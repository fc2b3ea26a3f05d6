"""Capped exponential backoff: the one schedule every retry loop of the agent waits by.

The schedule
------------
After a `reset()` (and at the start) the n-th wait (n = 0, 1, 2, ...) grows from `min_s`,
doubling, up to `max_s`::

    step(n) = min(max_s, min_s * 2**n)          min_s, 2 min_s, 4 min_s, ..., max_s, max_s, ...

- Without jitter (a local condition such as a short disk, where nobody else is retrying in
  step with us) the wait is `step(n)` exactly.
- With jitter (a peer that many agents, or many sources, retry against: the hub's broker, an
  OPC UA server, a database) the wait is drawn uniformly from ``[min_s, min(max_s, 2 step(n))]``:
  never below the configured minimum (`reconnect_min_s` means what it says), never above the
  cap (`reconnect_max_s`), and spread from the very first retry on, so agents restarted
  together (a plant power cycle) do not hit a recovering server in lockstep.

Who waits by it: the hub session's reconnects (`agent.link.mqtt_session`), each source's reconnects
(`agent.runtime.SourceRunner`), and the short-disk retries of the pipeline, the forwarder's
acks and the file-drop connector. It lives in `connectors` (which imports nothing of the
agent's) so that both sides can use it; it imports nothing of ours.

A `Backoff` is plain state, used from one task; it never sleeps itself (the caller awaits
``asyncio.sleep(backoff.next_s())``), so it is tested without a clock.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]

# 2**30 * any sensible min_s is past any cap: stop doubling there (no float overflow).
_MAX_DOUBLINGS = 30


class Backoff:
    """The schedule of the module docstring, from `min_s` (> 0) up to `max_s` (>= `min_s`)."""

    def __init__(
        self,
        min_s: float,
        max_s: float,
        *,
        jitter: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if min_s <= 0 or max_s < min_s:
            raise ValueError(f"need 0 < min_s <= max_s, not min_s={min_s}, max_s={max_s}")
        self.min_s = min_s
        self.max_s = max_s
        self.jitter = jitter
        # Own generator, seeded from the OS unless given: processes started together still
        # draw different waits.
        self._random = rng or random.Random()
        self.attempts = 0  # waits handed out since the last reset

    def step_s(self, attempt: int) -> float:
        """The un-jittered wait of the `attempt`-th retry (0-based) after a reset."""
        return min(self.max_s, self.min_s * 2.0 ** min(attempt, _MAX_DOUBLINGS))

    def next_s(self) -> float:
        """The next wait in seconds; each call moves one step along the schedule."""
        step = self.step_s(self.attempts)
        self.attempts += 1
        if not self.jitter:
            return step
        return self._random.uniform(self.min_s, min(self.max_s, 2 * step))

    def reset(self) -> None:
        """Start over from `min_s` (the peer came back, the condition cleared)."""
        self.attempts = 0
