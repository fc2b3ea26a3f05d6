"""The lean hot path (issue 18, item 2) keeps every byte and id it had.

Each fast path here is held against the code it replaced, kept in this file as the reference:
the stored body (msgspec instead of msgpack, the map built directly), the ids (a hashed
signal head, no UUID objects), `rfc3339` (remembered per timestamp), the `Reading` and `Event`
constructors (slot setters), and the OPC UA connector's readings (one clock read per publish
response). A buffer filled by an agent before the change drains unchanged after it.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgpack
import pytest
from asyncua import ua
from asyncua.ua.status_codes import StatusCodes
from hypothesis import given, settings
from hypothesis import strategies as st

from buffer.base import Record
from buffer.sqlite import SqliteBuffer
from connectors.base import Quality, Reading
from connectors.opcua.config import OpcUaSettings, OpcUaSignalSettings, TimestampChoice
from connectors.opcua.connector import OpcUaConnector, _Plan
from events import ids
from events.ids import _ID_NAMESPACE, event_id, record_id, rfc3339, signal_ids
from events.kinds import EventKind
from events.models import EVENT_TYPES, SPECVERSION, Event
from events.wire import AgentIdentity, decode_batch, encode_batch, encode_body

SITE, AGENT = "plant-a", "edge-01"


def reference_body(event: Event, *, site: str, agent: str) -> bytes:
    """`encode_body` as it was before issue 18 (msgpack over the whole field map)."""
    fields: dict[str, Any] = {
        "specversion": SPECVERSION,
        "id": event.id,
        "source": event.source,
        "type": event.type.name,
        "time": reference_rfc3339(event.time),
        "subject": event.subject,
        "site": site,
        "agent": agent,
        "quality": event.quality,
        "data": event.data,
    }
    if event.status is not None:
        fields["status"] = event.status
    fields.update(event.extensions)
    spliced = {
        "specversion": SPECVERSION,
        "id": event.id,
        "type": event.type.name,
        "site": site,
        "agent": agent,
    }
    if any(fields[key] != value for key, value in spliced.items()) or any(
        key in fields for key in ("datacontenttype", "dataschema", "partitionkey")
    ):
        return bytes(msgpack.packb(fields, use_bin_type=True))
    stored = {key: value for key, value in fields.items() if key not in spliced}
    return b"\xc1" + bytes(msgpack.packb(stored, use_bin_type=True))


def reference_rfc3339(timestamp: datetime) -> str:
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    return timestamp.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def reference_event_id(
    site: str, source: str, signal: str, timestamp: datetime, value: Any, type_name: str
) -> str:
    key = "\x1f".join((site, source, signal, reference_rfc3339(timestamp), repr(value), type_name))
    return str(uuid.uuid5(_ID_NAMESPACE, key))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=300),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
extension_names = st.sampled_from(
    [
        "assetpath",
        "workorder",
        "correlationid",
        "traceparent",
        "x1",
        "x2",
        "x3",
        "x4",
        "x5",
        "site",
        "agent",
        "id",
        "type",
        "specversion",
        "dataschema",
        "time",
        "quality",
        "status",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.dictionaries(st.text(max_size=10), json_values, max_size=6),
    status=st.none() | st.text(max_size=20),
    extensions=st.dictionaries(extension_names, st.text(max_size=40), max_size=6),
    moment=times,
)
def test_a_stored_body_is_the_bytes_the_previous_encoder_wrote(
    data: dict[str, Any], status: str | None, extensions: dict[str, str], moment: datetime
) -> None:
    event = Event(
        "3f8e8d5c-0000-5000-8000-000000000000",
        EVENT_TYPES[EventKind.TELEMETRY],
        "/plant-a/edge-01/line1",
        moment,
        "line1/filler",
        "good",
        status,
        data,
        extensions,
    )
    assert encode_body(event, site=SITE, agent=AGENT) == reference_body(
        event, site=SITE, agent=AGENT
    )


@pytest.mark.parametrize(
    ("extensions", "compact"),
    [
        ({"site": SITE}, True),  # repeats what is spliced back in: still compact
        ({"site": "elsewhere"}, False),  # shadows it: the whole envelope
        ({"dataschema": "urn:x"}, False),
        ({"assetpath": "acme/plant-a"}, True),
    ],
)
def test_an_extension_named_like_an_attribute_keeps_its_previous_body(
    extensions: dict[str, str], compact: bool
) -> None:
    event = Event(
        "3f8e8d5c-0000-5000-8000-000000000000",
        EVENT_TYPES[EventKind.TELEMETRY],
        "/plant-a/edge-01/line1",
        datetime(2026, 1, 1, tzinfo=UTC),
        "line1",
        "good",
        None,
        {"signal": "t", "value": 1.0, "unit": None},
        extensions,
    )
    body = encode_body(event, site=SITE, agent=AGENT)
    assert body == reference_body(event, site=SITE, agent=AGENT)
    assert (body[0] == 0xC1) is compact


async def test_a_buffer_filled_before_the_upgrade_drains_unchanged_after_it(
    tmp_path: Path,
) -> None:
    """Bodies written by the previous encoder (both stored formats) and by this one, in one
    real buffer file: each leased event is published as the same envelope."""
    kind = EVENT_TYPES[EventKind.TELEMETRY]
    start = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    events = [
        Event(
            reference_event_id(SITE, "line1", f"ns=2;s=V{n}", start, n * 0.5, kind.name),
            kind,
            "/plant-a/edge-01/line1",
            start + timedelta(seconds=n),
            "line1/filler",
            "good",
            None,
            {"signal": f"V{n}", "value": n * 0.5, "unit": "Cel"},
            {"assetpath": "acme/plant-a/line1"},
        )
        for n in range(3)
    ]
    whole = dict(json_fields(events[0]))
    old_whole = bytes(msgpack.packb(whole, use_bin_type=True))  # format 1
    old_compact = reference_body(events[1], site=SITE, agent=AGENT)  # format 2, msgpack
    new_compact = encode_body(events[2], site=SITE, agent=AGENT)
    async with SqliteBuffer.open(tmp_path / "buffer.sqlite") as buffer:
        await buffer.append(
            [
                Record(event.id, kind.name, 0, body)
                for event, body in zip(events, (old_whole, old_compact, new_compact), strict=True)
            ]
        )
        leased = await buffer.lease(10)
    published = decode_batch(encode_batch(leased, AgentIdentity(SITE, AGENT)))
    assert [envelope["seq"] for envelope in published] == [1, 2, 3]
    for event, envelope in zip(events, published, strict=True):
        assert envelope["id"] == event.id and envelope["time"] == rfc3339(event.time)
        assert envelope["data"] == event.data and envelope["assetpath"] == "acme/plant-a/line1"
        assert envelope["site"] == SITE and envelope["traceparent"].startswith("00-")
    # The same keys and values from each format (only the order of the map may differ).
    shapes = [{key for key in envelope if key not in ("seq",)} for envelope in published]
    assert shapes[0] == shapes[1] == shapes[2]


def json_fields(event: Event) -> dict[str, Any]:
    return {
        "specversion": SPECVERSION,
        "id": event.id,
        "source": event.source,
        "type": event.type.name,
        "time": rfc3339(event.time),
        "subject": event.subject,
        "site": SITE,
        "agent": AGENT,
        "quality": event.quality,
        "data": event.data,
        **event.extensions,
    }


@settings(max_examples=300, deadline=None)
@given(
    site=st.text(min_size=1, max_size=10),
    source=st.text(min_size=1, max_size=10),
    signal=st.text(min_size=1, max_size=30),
    moment=times | st.datetimes(timezones=st.just(timezone(timedelta(hours=-5)))),
    value=st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
)
def test_ids_are_the_uuid5_of_the_fact_as_before(
    site: str, source: str, signal: str, moment: datetime, value: Any
) -> None:
    expected = reference_event_id(site, source, signal, moment, value, "telemetry.v1")
    assert (
        event_id(
            site=site,
            source=source,
            signal=signal,
            timestamp=moment,
            value=value,
            type_name="telemetry.v1",
        )
        == expected
    )
    assert (
        signal_ids(site, source, signal).event_id(reference_rfc3339(moment), value, "telemetry.v1")
        == expected
    )
    key = f"{signal}:{value}"
    assert record_id(site=site, source=source, key=key, type_name="workorder.completed.v3") == (
        str(
            uuid.uuid5(
                _ID_NAMESPACE, "\x1f".join((site, source, "record", key, "workorder.completed.v3"))
            )
        )
    )


@settings(max_examples=300, deadline=None)
@given(moment=times, fold=st.integers(0, 1))
def test_rfc3339_remembered_is_rfc3339_made(moment: datetime, fold: int) -> None:
    moment = moment.replace(fold=fold)
    assert rfc3339(moment) == rfc3339(moment) == reference_rfc3339(moment)


def test_the_remembered_times_stay_bounded() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(ids._TIME_TEXT_MAX + 10):
        rfc3339(start + timedelta(microseconds=n))
    assert len(ids._TIME_TEXT) <= ids._TIME_TEXT_MAX


@pytest.mark.parametrize("cls", [Reading, Event])
def test_the_fast_constructors_take_the_dataclass_fields_with_their_defaults(
    cls: type[Any],
) -> None:
    import inspect

    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    fields = dataclasses.fields(cls)
    assert [p.name for p in parameters] == [f.name for f in fields]
    for parameter, field in zip(parameters, fields, strict=True):
        if field.default is not dataclasses.MISSING:
            assert parameter.default == field.default, field.name
        elif field.default_factory is not dataclasses.MISSING:
            assert parameter.default is None, field.name  # None: a new default_factory()
        else:
            assert parameter.default is inspect.Parameter.empty, field.name


def test_a_fast_built_reading_is_the_frozen_value_it_was() -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    reading = Reading("line1", "ns=2;s=X", 1.5, moment)
    assert reading.quality is Quality.GOOD and reading.attributes == () and reading.state == ()
    assert reading == Reading("line1", "ns=2;s=X", 1.5, moment, backfilled=True)
    assert hash(reading) == hash(dataclasses.replace(reading, received_at=moment))
    assert dataclasses.replace(reading, value=2.0).value == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        reading.value = 3.0  # type: ignore[misc]
    event = Event("i", EVENT_TYPES[EventKind.TELEMETRY], "/s", moment, "a", "good", None, {})
    assert (
        event.extensions == {}
        and event.extensions
        is not Event(
            "i", EVENT_TYPES[EventKind.TELEMETRY], "/s", moment, "a", "good", None, {}
        ).extensions
    )


def _decoded(handle: int, value: float, *, stamped: bool = True, status: int = 0) -> Any:
    """A data change as asyncua's client hands it over (encoded and decoded again)."""
    from asyncua.common.utils import Buffer
    from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

    moment = datetime(2026, 12, 7, 8, 0, tzinfo=UTC) + timedelta(milliseconds=handle)
    data_value = ua.DataValue(
        ua.Variant(value, ua.VariantType.Double),
        StatusCode=ua.StatusCode(ua.UInt32(status)),
        SourceTimestamp=moment if stamped else None,  # type: ignore[arg-type]
        ServerTimestamp=moment if stamped else None,  # type: ignore[arg-type]
    )
    change = ua.MonitoredItemNotification(ClientHandle=handle, Value=data_value)
    return struct_from_binary(ua.MonitoredItemNotification, Buffer(struct_to_binary(change)))


def _connector(timestamp: TimestampChoice = TimestampChoice.SOURCE) -> tuple[OpcUaConnector, _Plan]:
    signals = [OpcUaSignalSettings(node=f"ns=2;s=V{n}") for n in range(3)]
    settings = OpcUaSettings(endpoint="opc.tcp://127.0.0.1:4840", timestamp=timestamp)
    return OpcUaConnector("line1", settings, signals), _Plan(data=dict(enumerate(signals)))


def test_the_readings_of_one_publish_response_share_one_clock_read() -> None:
    connector, plan = _connector()
    readings, ended = connector._readings([_decoded(n, n * 1.5) for n in range(3)], plan)
    assert ended is None and [r.value for r in readings] == [0.0, 1.5, 3.0]
    assert len({id(r.received_at) for r in readings}) == 1
    for n, reading in enumerate(readings):
        assert reading.timestamp == reading.source_timestamp == reading.server_timestamp
        assert reading.timestamp.tzinfo is UTC and reading.timestamp.microsecond == n * 1000
        assert reading.quality is Quality.GOOD and reading.status is None


def test_a_reading_timed_by_its_arrival_reads_the_clock_itself() -> None:
    """`timestamp = "receive"` (or a value without timestamps): the reading's time is its
    own clock read, so two values of one response never share a made-up time."""
    for connector, stamped in (
        (_connector(TimestampChoice.RECEIVE)[0], True),
        (_connector()[0], False),
    ):
        plan = _connector()[1]
        readings, _ = connector._readings(
            [_decoded(n, 1.0, stamped=stamped) for n in range(3)], plan
        )
        assert all(r.timestamp is r.received_at for r in readings)
        assert len({id(r.received_at) for r in readings}) == 3


def test_a_bad_value_is_marked_and_its_node_tracked_then_cleared() -> None:
    connector, plan = _connector()
    gone = int(StatusCodes.BadNodeIdUnknown)
    [bad], _ = connector._readings([_decoded(0, 1.0, status=gone)], plan)
    assert bad.quality is Quality.BAD and bad.status == "BadNodeIdUnknown"
    assert connector.health.signal_errors == {"ns=2;s=V0": "BadNodeIdUnknown"}
    uncertain = int(StatusCodes.UncertainLastUsableValue)
    [middling], _ = connector._readings([_decoded(1, 1.0, status=uncertain)], plan)
    assert middling.quality is Quality.UNCERTAIN
    connector._readings([_decoded(0, 2.0)], plan)
    assert connector.health.signal_errors == {}


def test_a_bad_subscription_status_ends_the_response_after_what_came_before() -> None:
    connector, plan = _connector()
    status = ua.StatusChangeNotification(Status=ua.StatusCode(ua.UInt32(StatusCodes.BadShutdown)))
    readings, ended = connector._readings([_decoded(0, 1.0), status, _decoded(1, 2.0)], plan)
    assert [r.signal for r in readings] == ["ns=2;s=V0"] and ended is status


def test_the_benchmark_lean_and_generic_stages_make_the_same_readings() -> None:
    """bench/hot_path.py's decode stage (lean columns) and the asyncua decoding it is held
    against feed `_readings` the same facts, so their figures compare like with like."""
    from bench.hot_path import _decode_generic, _decode_lean, _responses

    signals = [OpcUaSignalSettings(node=f"ns=2;s=V{n}") for n in range(5)]
    settings = OpcUaSettings(endpoint="opc.tcp://127.0.0.1:4840")
    connector = OpcUaConnector("line1", settings, signals)
    plan = _Plan(data={1_000_000 + n: signal for n, signal in enumerate(signals)})
    for blob in _responses(5, 23, 10):
        lean, _ = connector._readings(_decode_lean(blob), plan)
        generic, _ = connector._readings(_decode_generic(blob), plan)
        assert len(lean) == len(generic) > 0
        for one, other in zip(lean, generic, strict=True):
            assert one == other and type(one.value) is type(other.value)
            assert (one.source_timestamp, one.server_timestamp) == (
                other.source_timestamp,
                other.server_timestamp,
            )
