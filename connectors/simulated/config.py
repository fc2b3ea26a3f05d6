"""Settings of the simulated connector: `[[sources]]` with `type = "simulated"`.

Every key, with its default and what it does: `connectors/simulated/sample.toml` (loaded by
tests/unit/test_samples.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from connectors.base import ConnectorSettings, ReconnectMaxS, ReconnectMinS, SignalSettings


class SimulatedSignalSettings(SignalSettings):
    node: Annotated[str, Field(min_length=1, max_length=200, description="the signal's address")]
    waveform: Literal["counter", "sine"] = "counter"


class SimulatedSettings(ConnectorSettings):
    rate_hz: Annotated[float, Field(gt=0, le=100_000)] = 10.0
    # There is no peer to wait for: restart soon.
    reconnect_min_s: ReconnectMinS = 0.5
    reconnect_max_s: ReconnectMaxS = 5.0
