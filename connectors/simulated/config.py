"""Settings of the simulated connector: `[[sources]]` with `type = "simulated"`.

Every key, with its default and what it does: `connectors/simulated/sample.toml` (loaded by
tests/unit/test_samples.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field


class SimulatedSignalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    node: Annotated[str, Field(min_length=1, max_length=200, description="the signal's address")]
    waveform: Literal["counter", "sine"] = "counter"


class SimulatedSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rate_hz: Annotated[float, Field(gt=0, le=100_000)] = 10.0
    reconnect_min_s: Annotated[float, Field(gt=0, le=300)] = 0.5
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 5.0

    def with_base_dir(self, base: Path) -> Self:
        """The same settings: a simulated source names no files (the loader asks every source)."""
        return self
