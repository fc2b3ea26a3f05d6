"""Decoding what the agent published, as a hub consumer would (in any hub format)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from buffer.sqlite import ID_TEXT_SQL
from events.formats import FORMATS, FormatName, decode_message
from events.wire import validate_envelope
from testkit.broker import ReceivedMessage

EVENTS_TOPIC = "mfg/plant-a/edge-01/events/#"


def decode_events(
    messages: Iterable[ReceivedMessage], wire_format: FormatName = "cloudevents-batch-msgpack"
) -> list[dict[str, Any]]:
    """Every event in every events message, in arrival order, each checked against its
    contract and its message's topic, and the message against `wire_format` (content type,
    events per message)."""
    expected = FORMATS[wire_format]
    events: list[dict[str, Any]] = []
    for message in messages:
        if "/events/" not in message.topic:
            continue
        decoded = decode_message_of(message)
        assert len(decoded) <= (expected.max_events_per_message or len(decoded)), message.topic
        assert message.content_type == expected.content_type, message.content_type
        for event in decoded:
            validate_envelope(event)
            assert message.topic.endswith("/events/" + event["type"]), (message.topic, event)
            events.append(event)
    return events


def decode_message_of(message: ReceivedMessage) -> list[dict[str, Any]]:
    """The events of one received message, whatever its hub format (`decode_message`)."""
    return decode_message(message.payload, message.content_type, user_properties(message))


def user_properties(message: ReceivedMessage) -> list[tuple[str, str]]:
    """The MQTT v5 user properties of a received message, in order."""
    return [
        (str(key), str(value))
        for key, value in getattr(message.properties, "UserProperty", None) or []
    ]


def unique_by_id(events: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """De-duplicate by id, checking that repeats are the same event (same seq and data)."""
    seen: dict[str, dict[str, Any]] = {}
    for event in events:
        first = seen.setdefault(event["id"], event)
        assert first["seq"] == event["seq"] and first["data"] == event["data"], (first, event)
    return seen


def accepted_in_buffer(path: Path) -> dict[str, int]:
    """id -> seq of every event the buffer file holds (pending or delivered-and-retained)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return dict(db.execute(f"SELECT {ID_TEXT_SQL}, seq FROM events").fetchall())
