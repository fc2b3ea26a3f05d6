"""The envelope encoding: seq spliced into stored bodies, batches, contracts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from buffer.base import StoredRecord
from events.ids import rfc3339
from events.kinds import EventKind
from events.models import (
    AGENT_EVENT_MODELS,
    EVENT_TYPES,
    RETIRED_EVENT_MODELS,
    Event,
    json_schemas,
)
from events.wire import (
    COMPACT_BODY,
    AgentIdentity,
    IdentityHistory,
    decode_batch,
    encode_batch,
    encode_body,
    envelope,
    expand_body,
    validate_envelope,
    with_seq,
)


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


IDENTITY = AgentIdentity(site="plant-a", agent="edge-01")


def stored(event: Event, seq: int, body: bytes | None = None) -> StoredRecord:
    """`event` as the buffer hands it out: its record's id and kind, the stored body."""
    if body is None:
        body = encode_body(event, site=IDENTITY.site, agent=IDENTITY.agent)
    return StoredRecord(seq, event.id, event.type.name, 0, body, 0.0)


def test_batch_round_trip_validates_against_the_contract() -> None:
    event = telemetry_event()
    events = decode_batch(encode_batch([stored(event, 41), stored(event, 42)], IDENTITY))
    assert [e["seq"] for e in events] == [41, 42]
    parsed = validate_envelope(events[0])
    assert parsed.type == "telemetry.v1" and parsed.data.unit == "Cel"
    assert events[0]["time"] == "2026-01-02T03:04:05.000006Z"


@given(
    seq=st.integers(min_value=1, max_value=2**63 - 1),
    status=st.one_of(st.none(), st.text(max_size=5)),
    extensions=st.dictionaries(
        st.sampled_from(["assetpath", "workorder", "product", "unmapped", "backfilled"]),
        st.text(max_size=40),
    ),
    padding=st.integers(0, 16),
)
def test_the_hub_gets_the_whole_envelope_from_a_compact_body(
    seq: int, status: str | None, extensions: dict[str, str], padding: int
) -> None:
    event = replace(
        telemetry_event(),
        status=status,
        extensions={**extensions, **{f"x{i}": str(i) for i in range(padding)}},
    )
    body = encode_body(event, site="plant-a", agent="edge-01")
    assert body[0] == COMPACT_BODY and event.id.encode() not in body
    assert b"specversion" not in body and b"\xa5agent" not in body and b"\xa4site" not in body
    [published] = decode_batch(encode_batch([stored(event, seq)], IDENTITY))
    assert published == {"seq": seq, **envelope(event, site="plant-a", agent="edge-01")}
    assert expand_body(stored(event, seq), IDENTITY) == published


def test_a_body_stored_whole_by_an_older_agent_is_published_unchanged_but_for_seq() -> None:
    """Format 1 (the whole envelope, as agents before the compact body stored it) still
    drains after an upgrade, side by side with format 2."""
    event = telemetry_event()
    whole = msgpack.packb(envelope(event, site="plant-a", agent="edge-01"), use_bin_type=True)
    old, new = decode_batch(
        encode_batch([stored(event, 7, whole), stored(event, 8)], IDENTITY)
    )
    assert old == {**new, "seq": 7}
    assert decode_batch(encode_batch([stored(event, 7, whole)], None)) == [old]
    with pytest.raises(ValueError, match="identity"):
        encode_batch([stored(event, 8)], None)


def test_an_extension_that_shadows_a_spliced_field_keeps_the_whole_envelope() -> None:
    event = replace(telemetry_event(), extensions={"site": "elsewhere"})
    body = encode_body(event, site="plant-a", agent="edge-01")
    assert body[0] != COMPACT_BODY
    [published] = decode_batch(encode_batch([stored(event, 1, body)], IDENTITY))
    assert published["site"] == "elsewhere" and published["agent"] == "edge-01"


def test_batch_of_many_uses_array16() -> None:
    event = telemetry_event()
    events = decode_batch(encode_batch((stored(event, seq) for seq in range(1, 301)), IDENTITY))
    assert [e["seq"] for e in events] == list(range(1, 301))


def test_contract_rejects_a_half_filled_event() -> None:
    [event] = decode_batch(encode_batch([stored(telemetry_event(), 1)], IDENTITY))
    del event["data"]["value"]
    with pytest.raises(ValidationError):
        validate_envelope(event)


def test_rfc3339_of_naive_time_is_utc() -> None:
    assert rfc3339(datetime(2026, 1, 1)) == "2026-01-01T00:00:00.000000Z"


def test_every_type_has_a_schema() -> None:
    assert set(json_schemas()) == {t.name for t in EVENT_TYPES.values()} | set(
        AGENT_EVENT_MODELS
    ) | set(RETIRED_EVENT_MODELS)


def test_each_event_is_spliced_with_the_identity_its_seq_was_accepted_under() -> None:
    renamed = AgentIdentity(site="plant-b", agent="edge-07")
    history = IdentityHistory(((0, IDENTITY), (3, renamed)))
    event = telemetry_event()
    batch = [stored(event, seq) for seq in (1, 2, 3, 4)]

    published = decode_batch(encode_batch(batch, history))

    assert [(e["seq"], e["site"], e["agent"]) for e in published] == [
        (1, "plant-a", "edge-01"), (2, "plant-a", "edge-01"),
        (3, "plant-b", "edge-07"), (4, "plant-b", "edge-07"),
    ]
    # After the last rename (the usual case) it is the same bytes as the one identity.
    assert encode_batch(batch[2:], history) == encode_batch(batch[2:], renamed)
    assert encode_batch(batch, IdentityHistory(((0, IDENTITY),))) == encode_batch(batch, IDENTITY)
    assert history.at(-5) == IDENTITY and IdentityHistory(()).at(1) is None
