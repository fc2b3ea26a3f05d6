"""Deterministic event ids and the time text of the envelope.

Invariants:
- `id` is a UUIDv5 of the source fact: site, source, signal, source timestamp, value and event
  type (`event_id`), or of the MES record (`record_id`). The same fact always yields the same
  id, so the buffer drops repeats and consumers can de-duplicate by id. The namespace and the
  key layout are part of the contract: changing either changes every id.
- `rfc3339` is the one text form of a time on the wire: UTC, microseconds, a `Z`.
- `traceparent` is the W3C trace context of an event (CloudEvents distributed-tracing
  extension). The agent's span id is derived from the event id, so the same fact always
  carries the same span; the trace id is the caller's (an MES request's `traceparent`) or, when
  none came with the fact, derived from the event id too: a fresh trace rooted at the event,
  which costs nothing to store (it is computed again when publishing).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

_ID_NAMESPACE = uuid.UUID("6f1c2a4e-2b1d-5c8e-9a57-3d0e6b1f4a10")


def event_id(
    *, site: str, source: str, signal: str, timestamp: datetime, value: Any, type_name: str
) -> str:
    """The deterministic id of one source fact turned into one event type."""
    from hashlib import sha1  # as uuid.uuid5 does; cached after the first call

    key = "\x1f".join((site, source, signal, rfc3339(timestamp), repr(value), type_name))
    # uuid.uuid5(_ID_NAMESPACE, key), formatted without building a UUID object (the same text:
    # SHA-1 of namespace + name, version nibble 5, RFC 4122 variant bits 10).
    digest = sha1(_ID_NAMESPACE.bytes + key.encode()).hexdigest()
    variant = "89ab"[int(digest[16], 16) & 3]
    return (
        f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-{variant}{digest[17:20]}-{digest[20:32]}"
    )


def record_id(*, site: str, source: str, key: str, type_name: str) -> str:
    """The deterministic id of one MES record (`key`: file digest and line, idempotency key
    and index, table cursor) turned into one event type: the same record, the same id."""
    return str(uuid.uuid5(_ID_NAMESPACE, "\x1f".join((site, source, "record", key, type_name))))


def traceparent(event_id: str, parent: str | None = None) -> str:
    """`00-<trace id>-<span id>-<flags>`: the agent's span of event `event_id`, as a child of
    `parent` (a valid `traceparent` received with the fact; its trace id and flags are kept)
    or as the root of a trace of its own (sampled). `parent` must be valid (`parse_traceparent`)."""
    digits = event_id.replace("-", "")
    span = digits[16:32] if digits[16:32].strip("0") else "1" + digits[17:32]
    if parent is None:
        return f"00-{digits}-{span}-01"
    _, trace, _, flags = parent.split("-")[:4]
    return f"00-{trace}-{span}-{flags}"


def parse_traceparent(text: str) -> str | None:
    """`text` when it is a W3C `traceparent` the agent can continue (version 00, or a later
    version's first four fields; trace and parent ids not all zeros), else None."""
    parts = text.strip().lower().split("-")
    if len(parts) < 4 or (parts[0] == "00" and len(parts) != 4):
        return None
    version, trace, parent, flags = parts[:4]
    hexdigits = set("0123456789abcdef")
    if (
        len(version) != 2 or version == "ff" or not set(version) <= hexdigits
        or len(trace) != 32 or not set(trace) <= hexdigits or not trace.strip("0")
        or len(parent) != 16 or not set(parent) <= hexdigits or not parent.strip("0")
        or len(flags) != 2 or not set(flags) <= hexdigits
    ):
        return None
    return f"00-{trace}-{parent}-{flags}"


def rfc3339(timestamp: datetime) -> str:
    """UTC timestamp with microseconds and a Z, e.g. 2026-11-26T15:12:51.123456Z."""
    if timestamp.tzinfo is UTC and type(timestamp) is datetime:
        # Already UTC (what the connectors produce): the same text as below, formatted
        # directly (isoformat spends most of its time on the "+00:00" it would replace).
        return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031 (faster than f"")
            timestamp.year, timestamp.month, timestamp.day,
            timestamp.hour, timestamp.minute, timestamp.second, timestamp.microsecond,
        )
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    return timestamp.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
