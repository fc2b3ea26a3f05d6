"""Decoding what the agent published, as a hub consumer would."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from buffer.sqlite import ID_TEXT_SQL
from events.wire import CONTENT_TYPE, decode_batch, validate_envelope
from testkit.broker import ReceivedMessage

EVENTS_TOPIC = "mfg/plant-a/edge-01/events/#"


def decode_events(messages: Iterable[ReceivedMessage]) -> list[dict[str, Any]]:
    """Every event in every events message, in arrival order, each checked against its
    contract and its message's topic and content type."""
    events: list[dict[str, Any]] = []
    for message in messages:
        if "/events/" not in message.topic:
            continue
        assert message.content_type == CONTENT_TYPE, message.content_type
        for event in decode_batch(message.payload):
            validate_envelope(event)
            assert message.topic.endswith("/events/" + event["type"]), (message.topic, event)
            events.append(event)
    return events


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
