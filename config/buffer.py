"""`[buffer]`: the store-and-forward buffer's durability, retention, capacity and overflow
policy, the delivery class per event type, and the backlog's pacing after an outage. What each
setting means for delivery is the buffer package's docstring (`buffer`); `agent.store` turns
this section into the buffer's arguments.

Sizes are written as people write them (`parse_byte_size`: "2 GiB", "500 MB") and held as
bytes, at most what SQLite's INTEGER holds.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, field_validator

from config.fields import STRICT
from events.kinds import AGENT_EVENT_KINDS, EventKind, Priority, PriorityClass

__all__ = ["BufferSection", "ByteSize", "parse_byte_size"]


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
    "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_MAX_BYTE_SIZE = 2**63 - 1  # what SQLite's INTEGER holds


def parse_byte_size(value: object) -> int:
    """`2 GiB`, `500 MB`, `64MiB`, `1.5 GB` or a plain number of bytes, as an int of bytes
    (at most 2**63 - 1)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_BYTE_SIZE:
        return value
    if isinstance(value, str) and (match := _SIZE.match(value)):
        unit = _SIZE_UNITS.get(match.group(2).lower())
        size = float(match.group(1)) * unit if unit is not None else None
        if size is not None and size < 2.0**63:  # not inf (too many digits), fits SQLite
            return int(size)
    raise ValueError(
        f'expected a size like "2 GiB", "500 MB" or a number of bytes up to 2**63 - 1, got '
        f"{value!r:.60} (units: B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
    )


ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]


class BufferSection(BaseModel):
    """The store-and-forward buffer (docs/hub-contract.md, "Delivery guarantees")."""

    model_config = STRICT

    synchronous: Literal["full", "normal"] = "full"
    retention_s: Annotated[float, Field(ge=0, le=90 * 86_400)] = 86_400.0
    # Delivered events kept for replay, at most this many bytes (the oldest go first).
    retention_max_bytes: ByteSize = 1 * 2**30
    # Events not yet delivered, at most this many bytes; then `telemetry_overflow` applies and
    # business/critical events pause the sources (backpressure).
    max_bytes: ByteSize = 2 * 2**30
    # Below this much free space on the state dir's disk the buffer behaves as full.
    disk_free_reserve: ByteSize = 256 * 2**20
    telemetry_overflow: Literal["evict_oldest", "sample", "refuse"] = "evict_oldest"
    # With telemetry_overflow = "sample": keep one new telemetry event in N while full.
    sample_keep_one_in: Annotated[int, Field(ge=2, le=1_000_000)] = 10
    # Delivery class per event type (unversioned name), overriding each type's default.
    priorities: dict[str, PriorityClass] = {}
    # After an outage, events accepted before the connection are sent as backlog at most this
    # many per second (jittered by +/- backlog_jitter), starting after a random delay of up to
    # backlog_start_delay_max_s; live events go side by side, unpaced.
    backlog_max_rate: Annotated[float, Field(gt=0, le=10_000_000)] = 2_000.0
    backlog_jitter: Annotated[float, Field(ge=0, lt=1)] = 0.2
    backlog_start_delay_max_s: Annotated[float, Field(ge=0, le=3600)] = 2.0

    @field_validator("priorities")
    @classmethod
    def _known_event_types(cls, priorities: dict[str, str]) -> dict[str, str]:
        known = {kind.value for kind in EventKind} | set(AGENT_EVENT_KINDS)
        unknown = sorted(set(priorities) - known)
        if unknown:
            raise ValueError(
                f"unknown event type(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        return priorities

    def priority_of(self, kind: str, default: Priority) -> Priority:
        """The delivery class of an event type (unversioned name) under this config."""
        chosen = self.priorities.get(kind)
        return default if chosen is None else Priority[chosen.upper()]
