"""Deterministic event ids and the time text of the envelope.

Invariants:
- `id` is a UUIDv5 of the source fact: site, source, signal, source timestamp, value and event
  type (`event_id`), or of the MES record (`record_id`). The same fact always yields the same
  id, so the buffer drops repeats and consumers can de-duplicate by id. The namespace and the
  key layout are part of the contract: changing either changes every id.
- `rfc3339` is the one text form of a time on the wire: UTC, microseconds, a `Z`. A UTC time
  is formatted once and remembered (a bounded map): an event's id and its stored body both
  need it. No id builds a `uuid.UUID`: the SHA-1 of the namespace (and, per signal, of the
  key's constant head, `signal_ids`) is computed once and copied; tests/unit/test_event_ids.py
  and test_hot_path.py hold the texts to `uuid.uuid5`'s.
- `traceparent` is the W3C trace context of an event (CloudEvents distributed-tracing
  extension). The agent's span id is derived from the event id, so the same fact always
  carries the same span; the trace id is the caller's (an MES request's `traceparent`) or, when
  none came with the fact, derived from the event id too: a fresh trace rooted at the event,
  which costs nothing to store (it is computed again when publishing).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from hashlib import sha1  # as uuid.uuid5 does
from typing import Any

_ID_NAMESPACE = uuid.UUID("6f1c2a4e-2b1d-5c8e-9a57-3d0e6b1f4a10")
# SHA-1 fed with the namespace once: each id copies it and adds only its key.
_NAMESPACE_SHA1 = sha1(_ID_NAMESPACE.bytes)
# The variant digit of a UUID from the SHA-1 digit in its place: RFC 4122 bits 10, then its own.
_VARIANT_OF = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def event_id(
    *, site: str, source: str, signal: str, timestamp: datetime, value: Any, type_name: str
) -> str:
    """The deterministic id of one source fact turned into one event type."""
    return signal_ids(site, source, signal).event_id(rfc3339(timestamp), value, type_name)


class SignalIds:
    """The ids of one signal's facts, with the key's constant head (site, source, signal)
    hashed once (`signal_ids`): `event_id` gives exactly the text `events.ids.event_id` gives
    for the same fact (`time_text` is its timestamp's `rfc3339`)."""

    __slots__ = ("_head",)

    def __init__(self, head: Any) -> None:
        self._head = head

    def event_id(self, time_text: str, value: Any, type_name: str) -> str:
        digest = self._head.copy()
        digest.update(f"{time_text}\x1f{value!r}\x1f{type_name}".encode())
        return _uuid5_text(digest.hexdigest())


def signal_ids(site: str, source: str, signal: str) -> SignalIds:
    """`SignalIds` of one signal: SHA-1 of the namespace and `site␟source␟signal␟`."""
    head = _NAMESPACE_SHA1.copy()
    head.update(f"{site}\x1f{source}\x1f{signal}\x1f".encode())
    return SignalIds(head)


def record_id(*, site: str, source: str, key: str, type_name: str) -> str:
    """The deterministic id of one MES record (`key`: file digest and line, idempotency key
    and index, table cursor) turned into one event type: the same record, the same id."""
    digest = _NAMESPACE_SHA1.copy()
    digest.update("\x1f".join((site, source, "record", key, type_name)).encode())
    return _uuid5_text(digest.hexdigest())


def _uuid5_text(digest: str) -> str:
    """`str(uuid.UUID(bytes=sha1[:16], version=5))` from the SHA-1 hex digest, without building
    a UUID object (the same text: version nibble 5, RFC 4122 variant bits 10)."""
    variant = _VARIANT_OF[digest[16]]
    return (
        f"{digest[:8]}-{digest[8:12]}-5{digest[13:16]}-{variant}{digest[17:20]}-{digest[20:32]}"
    )


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


# `rfc3339` text of recent UTC times: each distinct timestamp is formatted once (an event's id
# and its stored body both need it). Bounded: emptied when full.
_TIME_TEXT: dict[datetime, str] = {}
_TIME_TEXT_MAX = 8192


def rfc3339(timestamp: datetime) -> str:
    """UTC timestamp with microseconds and a Z, e.g. 2026-11-26T15:12:51.123456Z."""
    if timestamp.tzinfo is UTC and type(timestamp) is datetime:
        # Already UTC (what the connectors produce): the same text as below, formatted
        # directly (isoformat spends most of its time on the "+00:00" it would replace), and
        # remembered (two UTC datetimes are equal exactly when their fields are).
        text = _TIME_TEXT.get(timestamp)
        if text is None:
            if len(_TIME_TEXT) >= _TIME_TEXT_MAX:
                _TIME_TEXT.clear()
            text = _TIME_TEXT[timestamp] = "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031
                timestamp.year, timestamp.month, timestamp.day,
                timestamp.hour, timestamp.minute, timestamp.second, timestamp.microsecond,
            )
        return text
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    return timestamp.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
