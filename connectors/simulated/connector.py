"""The simulated connector: every signal yields one reading per tick of a fixed-rate clock.

Tick k happens at `k / rate_hz` seconds after the Unix epoch; its readings carry that instant as
their source timestamp and a value derived from k (`counter`: k; `sine`: sin(k / 50)). The same
tick always yields the same readings, so a restarted agent that sees a tick again produces the
same event ids (as a real source re-sending a value would). Ticks missed while the connector was
not running are not made up: it starts at the current tick.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from connectors.base import Emit, Reading, SourceHealth
from connectors.simulated.config import SimulatedSettings, SimulatedSignalSettings

_MAX_TICKS_PER_EMIT = 1_000
_MIN_SLEEP_S = 0.005


class SimulatedConnector:
    def __init__(
        self,
        name: str,
        settings: SimulatedSettings,
        signals: Sequence[SimulatedSignalSettings],
    ) -> None:
        self.name = name
        self.health = SourceHealth()
        self._rate = settings.rate_hz
        self._signals = list(signals)

    async def run(self, emit: Emit) -> None:
        next_tick = math.floor(time.time() * self._rate)
        self.health.connected = True
        try:
            while True:
                now_tick = math.floor(time.time() * self._rate)
                if now_tick < next_tick:
                    await asyncio.sleep(max(_MIN_SLEEP_S, (next_tick - now_tick) / self._rate))
                    continue
                last = min(now_tick, next_tick + _MAX_TICKS_PER_EMIT - 1)
                readings = [
                    self._reading(signal, tick)
                    for tick in range(next_tick, last + 1)
                    for signal in self._signals
                ]
                next_tick = last + 1
                await emit(readings)
                self.health.readings_total += len(readings)
                self.health.last_value_at = readings[-1].timestamp
                await asyncio.sleep(_MIN_SLEEP_S)
        finally:
            self.health.connected = False

    def _reading(self, signal: SimulatedSignalSettings, tick: int) -> Reading:
        value: int | float = tick if signal.waveform == "counter" else math.sin(tick / 50)
        return Reading(
            source=self.name,
            signal=signal.node,
            value=value,
            timestamp=datetime.fromtimestamp(tick / self._rate, UTC),
        )
