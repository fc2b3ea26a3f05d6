"""A token bucket: at most `rate_per_s` things a second on average, at most `burst` at once.

The one rate limit of the agent: the forwarder paces its backlog lane with it
(`buffer.backlog_max_rate`, refill jittered by `buffer.backlog_jitter`, starting after a random
delay of up to `buffer.backlog_start_delay_max_s`), and the command server takes at most
`commands.rate_per_s` requests a second (`commands.burst` saved up) with it.

Invariants
----------
- Tokens accrue at `rate_per_s` from `start_at` on (with `jitter`, each refill's rate is drawn
  from ``rate_per_s * [1 - jitter, 1 + jitter]``, so that agents started together drift apart)
  and never exceed `burst`; before `start_at` none accrue.
- `take` never grants more than it was asked for, nor more whole tokens than the bucket
  holds; what it grants is spent. It never waits: `wait_s` says how long until the next token,
  and `acquire` is the waiting form for one token.
- It reads the time only through `clock` (monotonic seconds), so it is tested without sleeping.
  It is plain state, used from one task.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """See the module docstring. `initial` tokens at the start (default: a full bucket)."""

    def __init__(
        self,
        rate_per_s: float,
        burst: float,
        *,
        initial: float | None = None,
        start_at: float | None = None,
        jitter: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"need rate_per_s > 0 and burst >= 1, not {rate_per_s}, {burst}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter is a fraction in [0, 1), not {jitter}")
        self.rate_per_s = rate_per_s
        self.burst = float(burst)
        self._jitter = jitter
        self._clock = clock
        self._random = rng or random.Random()
        self._tokens = self.burst if initial is None else min(self.burst, float(initial))
        self._at = clock() if start_at is None else start_at  # refilled up to this time

    @property
    def tokens(self) -> float:
        """The tokens saved up as of now (refilled first)."""
        self._refill()
        return self._tokens

    def take(self, wanted: int = 1) -> int:
        """How many of `wanted` may go now (then spent); 0 when the bucket holds no whole one."""
        self._refill()
        granted = max(0, min(wanted, int(self._tokens)))
        self._tokens -= granted
        return granted

    def wait_s(self) -> float:
        """Seconds until the bucket holds at least one whole token (0 if it does now)."""
        now = self._clock()
        if now < self._at:
            return self._at - now  # not started yet
        self._refill()
        return max(0.0, (1 - self._tokens) / self.rate_per_s)

    async def acquire(self) -> None:
        """Wait until one token is there, and spend it."""
        while True:
            if self.take(1):
                return
            await asyncio.sleep(self.wait_s())

    def _refill(self) -> None:
        now = self._clock()
        if now <= self._at:
            return
        rate = self.rate_per_s
        if self._jitter:
            rate *= self._random.uniform(1 - self._jitter, 1 + self._jitter)
        self._tokens = min(self.burst, self._tokens + (now - self._at) * rate)
        self._at = now
