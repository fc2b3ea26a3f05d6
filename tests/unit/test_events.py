"""The envelope encoding: seq spliced into stored bodies, batches, contracts."""

from __future__ import annotations

from datetime import UTC, datetime

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.events import (
    AGENT_EVENT_MODELS,
    EVENT_TYPES,
    RETIRED_EVENT_MODELS,
    Event,
    decode_batch,
    encode_batch,
    encode_body,
    json_schemas,
    rfc3339,
    validate_envelope,
    with_seq,
)
from config.schema import EventKind


def telemetry_event(value: float | None = 1.5) -> Event:
    return Event(
        id="3f8e8d5c-0000-5000-8000-000000000000",
        type=EVENT_TYPES[EventKind.TELEMETRY],
        source="/plant-a/edge-01/line1",
        time=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        subject="line1/filler",
        quality="good",
        status=None,
        data={"signal": "temp", "value": value, "unit": "Cel"},
    )


@given(seq=st.integers(min_value=1, max_value=2**63 - 1), extra=st.integers(0, 20))
def test_with_seq_is_the_same_as_encoding_with_seq(seq: int, extra: int) -> None:
    envelope = {f"k{i}": i for i in range(extra)}
    body = msgpack.packb(envelope)
    assert msgpack.unpackb(with_seq(body, seq)) == {"seq": seq, **envelope}


def test_batch_round_trip_validates_against_the_contract() -> None:
    body = encode_body(telemetry_event(), site="plant-a", agent="edge-01")
    events = decode_batch(encode_batch([(41, body), (42, body)]))
    assert [e["seq"] for e in events] == [41, 42]
    parsed = validate_envelope(events[0])
    assert parsed.type == "telemetry.v1" and parsed.data.unit == "Cel"  # type: ignore[attr-defined]
    assert events[0]["time"] == "2026-01-02T03:04:05.000006Z"


def test_batch_of_many_uses_array16() -> None:
    body = encode_body(telemetry_event(), site="plant-a", agent="edge-01")
    events = decode_batch(encode_batch((seq, body) for seq in range(1, 301)))
    assert [e["seq"] for e in events] == list(range(1, 301))


def test_contract_rejects_a_half_filled_event() -> None:
    body = encode_body(telemetry_event(), site="plant-a", agent="edge-01")
    [event] = decode_batch(encode_batch([(1, body)]))
    del event["data"]["value"]
    with pytest.raises(ValidationError):
        validate_envelope(event)


def test_rfc3339_of_naive_time_is_utc() -> None:
    assert rfc3339(datetime(2026, 1, 1)) == "2026-01-01T00:00:00.000000Z"


def test_every_type_has_a_schema() -> None:
    assert set(json_schemas()) == {t.name for t in EVENT_TYPES.values()} | set(
        AGENT_EVENT_MODELS
    ) | set(RETIRED_EVENT_MODELS)
