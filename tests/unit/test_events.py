"""The envelope encoding: seq spliced into stored bodies, batches, the hub formats, contracts."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from buffer.base import StoredRecord
from events.formats import (
    BACKLOG_PROPERTY,
    DELIVERY_PROPERTIES,
    FORMATS,
    REPLAY_PROPERTY,
    FormatName,
    WireFormat,
    decode_message,
)
from events.ids import rfc3339, traceparent
from events.kinds import EventKind
from events.models import (
    AGENT_EVENT_MODELS,
    DATACONTENTTYPE,
    EVENT_TYPES,
    RETIRED_EVENT_MODELS,
    CloudEvent,
    Event,
    data_schema_id,
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


# ---------------------------------------------------------------------------------------------
# The hub formats (events.formats): the same events in each, the published constants spliced.

TRACED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def a_mixed_batch() -> list[StoredRecord]:
    """Compact bodies, one with its own trace, and a body an older agent stored whole (format
    1, before the published constants existed)."""
    event = telemetry_event()
    traced = replace(event, extensions={"traceparent": TRACED, "assetpath": "acme/a/l1"})
    old = {
        key: value for key, value in envelope(event, site="plant-a", agent="edge-01").items()
        if key not in ("datacontenttype", "dataschema", "partitionkey", "traceparent")
    }
    return [
        stored(event, 1),
        stored(traced, 2),
        stored(event, 3, msgpack.packb(old, use_bin_type=True)),
    ]


def decoded(fmt: WireFormat, records: list[StoredRecord]) -> list[dict[str, Any]]:
    size = fmt.max_events_per_message or len(records)
    events: list[dict[str, Any]] = []
    for start in range(0, len(records), size):
        message = fmt.encode(records[start : start + size], IDENTITY)
        assert message.content_type == fmt.content_type
        events += decode_message(message.payload, message.content_type, message.user_properties)
    return events


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_carries_the_same_events_with_the_published_constants(
    name: FormatName,
) -> None:
    records = a_mixed_batch()
    events = decoded(FORMATS[name], records)
    assert events == decode_batch(encode_batch(records, IDENTITY))
    for event, record in zip(events, records, strict=True):
        assert event["seq"] == record.seq
        assert event["datacontenttype"] == DATACONTENTTYPE == "application/json"
        assert event["dataschema"] == data_schema_id("telemetry.v1")
        assert event["partitionkey"] == "plant-a/edge-01"
        assert event["time"] == "2026-01-02T03:04:05.000006Z"
        validate_envelope(event)
    assert [e["traceparent"] for e in events] == [
        traceparent(records[0].id), TRACED, traceparent(records[2].id)
    ]


def test_nothing_published_by_the_splice_is_stored_in_a_compact_body() -> None:
    body = encode_body(telemetry_event(), site="plant-a", agent="edge-01")
    for key in ("datacontenttype", "dataschema", "partitionkey", "traceparent"):
        assert msgpack.packb(key) not in body
    published = expand_body(stored(telemetry_event(), 5), IDENTITY)
    assert published == {"seq": 5, **envelope(telemetry_event(), site="plant-a", agent="edge-01")}


def test_binary_mode_maps_attributes_to_user_properties_as_the_binding_says() -> None:
    event = replace(telemetry_event(), extensions={"backfilled": "true"})
    message = FORMATS["cloudevents-binary"].encode([stored(event, 42)], IDENTITY)
    properties = dict(message.user_properties)
    assert len(properties) == len(message.user_properties), "one property per attribute"
    # datacontenttype is the MQTT Content Type, not a user property; data is the payload.
    assert message.content_type == "application/json"
    assert "datacontenttype" not in properties and "data" not in properties
    assert json.loads(message.payload) == event.data
    whole = {"seq": 42, **envelope(event, site="plant-a", agent="edge-01")}
    assert set(properties) == set(whole) - {"datacontenttype", "data"}
    # Canonical strings: an Integer in decimal, a Timestamp in RFC 3339, strings as they are.
    assert properties["seq"] == "42"
    assert properties["time"] == "2026-01-02T03:04:05.000006Z"
    assert properties["backfilled"] == "true"
    assert properties["specversion"] == "1.0" and properties["id"] == event.id


def test_no_attribute_can_be_taken_for_the_forwarders_own_user_properties() -> None:
    # backlog=true / replay=true share binary mode's user-property namespace.
    assert {BACKLOG_PROPERTY[0], REPLAY_PROPERTY[0]} == DELIVERY_PROPERTIES
    assert DELIVERY_PROPERTIES.isdisjoint(CloudEvent.model_fields)
    clash = msgpack.packb(
        {**envelope(telemetry_event(), site="plant-a", agent="edge-01"), "backlog": "no"}
    )
    with pytest.raises(ValueError, match="backlog"):
        FORMATS["cloudevents-binary"].encode([stored(telemetry_event(), 1, clash)], IDENTITY)
    # A consumer never reads them as attributes.
    message = FORMATS["cloudevents-binary"].encode([stored(telemetry_event(), 1)], IDENTITY)
    [event] = decode_message(
        message.payload, message.content_type, [*message.user_properties, BACKLOG_PROPERTY]
    )
    assert "backlog" not in event


@pytest.mark.parametrize(
    "name", ["cloudevents-batch-json", "cloudevents-structured", "cloudevents-binary"]
)
def test_data_json_cannot_carry_is_refused_not_sent_as_invalid_json(name: FormatName) -> None:
    body = msgpack.packb(
        {**envelope(telemetry_event(), site="plant-a", agent="edge-01"),
         "data": {"signal": "x", "value": float("nan")}}
    )
    with pytest.raises(ValueError):
        FORMATS[name].encode([stored(telemetry_event(), 1, body)], IDENTITY)


@pytest.mark.parametrize("name", ["cloudevents-structured", "cloudevents-binary"])
def test_a_binding_mode_message_carries_exactly_one_event(name: FormatName) -> None:
    fmt = FORMATS[name]
    assert fmt.max_events_per_message == 1
    two = [stored(telemetry_event(), 1), stored(telemetry_event(), 2)]
    with pytest.raises(ValueError, match="one event"):
        fmt.encode(two, IDENTITY)


def test_decode_message_tells_the_format_by_the_content_type() -> None:
    with pytest.raises(ValueError, match="unknown CloudEvents format"):
        decode_message(b"{}", "application/cloudevents+avro")
    with pytest.raises(ValueError, match="specversion"):
        decode_message(b"{}", "application/json", [("id", "x")])
    [event] = decode_message(
        json.dumps({"specversion": "1.0", "id": "x"}).encode(),
        "application/cloudevents+json; charset=utf-8",
    )
    assert event == {"specversion": "1.0", "id": "x"}
