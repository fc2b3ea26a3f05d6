"""The lean PublishResponse decoder gives what asyncua's generic decoder gives.

Differential: PublishResponses are built and encoded with asyncua's own `struct_to_binary`
(seeded random DataValues of every built-in variant type, scalars, arrays, matrices, nulls,
bad and uncertain status codes, missing timestamps, picoseconds; several NotificationData
entries mixing data changes, events and status changes; keep-alives), then decoded by both
paths. The decoded responses must be the same (columns compared row by row with asyncua's
`MonitoredItemNotification`s), and the connector's `_readings` must make the same readings
of each through a `BatchedSubscription`. A truncated or garbled buffer falls back and gives
the generic result, or raises the same error.
"""

# asyncua types its scalars as subclasses (ua.Int32, ua.DateTime, ...) that plain ints and
# datetimes are not; building its messages here takes plain ones, as the test servers do.
# mypy: disable-error-code="arg-type,list-item"

from __future__ import annotations

import random
import struct
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asyncua import ua
from asyncua.common.subscription import SubscriptionItemData
from asyncua.common.utils import Buffer
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary
from asyncua.ua.uatypes import MAX_OPC_FILETIME

from connectors.base import Reading
from connectors.opcua import fast_publish
from connectors.opcua.batches import BatchedSubscription, Notification
from connectors.opcua.config import OpcUaSettings, OpcUaSignalSettings, TimestampChoice
from connectors.opcua.connector import OpcUaConnector, _Plan
from connectors.opcua.fast_publish import DataChanges, LeanPublish, decode_publish_response

SUBSCRIPTION = 7
SIGNALS = 12  # client handles 0..11 are watched; 12..14 are not
EVENT_HANDLE, EVENT_SERVER_HANDLE = 500, 9001
STATUSES = (
    None,  # no status in the DataValue: Good
    0,
    int(StatusCodes.BadNodeIdUnknown),
    int(StatusCodes.BadNodeIdInvalid),
    int(StatusCodes.BadCommunicationError),
    int(StatusCodes.UncertainLastUsableValue),
    int(StatusCodes.GoodClamped),
    0xC000_0000,  # severity 11: bad
)
EVENT_FIELDS = ("Message", "Severity", "Time", "SourceName")


class _Observer:
    def on_notification(self, subscription_id: Any, produced: int) -> None:
        pass


class _Session:
    """What `BatchedSubscription` and `LeanPublish.decode` use of asyncua's `UaSession`.
    Stands in for it here: these tests decode buffers, no peer is involved (the integration
    test runs the real one)."""

    observer = _Observer()

    def __init__(self) -> None:
        self._subscription_callbacks: dict[int, Any] = {}


# --- random responses ----------------------------------------------------------------------


def _float32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def _moment(rng: random.Random) -> datetime:
    start = datetime(1601, 1, 1, tzinfo=UTC)
    return start + timedelta(microseconds=rng.randrange(0, 8_000 * 365 * 86_400 * 10**6))


def _scalar(rng: random.Random, kind: ua.VariantType) -> Any:
    V = ua.VariantType
    integer = {
        V.SByte: (-128, 127), V.Byte: (0, 255), V.Int16: (-(2**15), 2**15 - 1),
        V.UInt16: (0, 2**16 - 1), V.Int32: (-(2**31), 2**31 - 1), V.UInt32: (0, 2**32 - 1),
        V.Int64: (-(2**63), 2**63 - 1), V.UInt64: (0, 2**64 - 1),
    }  # fmt: skip
    if kind in integer:
        low, high = integer[kind]
        return rng.choice([low, high, 0, rng.randint(low, high)])
    if kind is V.Boolean:
        return rng.random() < 0.5
    if kind is V.Float:
        return rng.choice([_float32(rng.uniform(-1e6, 1e6)), 0.0, -0.0, float("inf")])
    if kind is V.Double:
        return rng.choice([rng.uniform(-1e300, 1e300), 0.0, -0.0, float("-inf"), 5e-324])
    if kind is V.String:
        return rng.choice(["", "Füllstand °C ✓", "x" * rng.randrange(0, 300), "\udcff"])
    if kind is V.XmlElement:
        return ua.XmlElement(rng.choice(["<a/>", ""]))
    if kind is V.DateTime:
        return rng.choice([_moment(rng), datetime(1601, 1, 1, tzinfo=UTC)])
    if kind is V.Guid:
        return uuid.UUID(int=rng.getrandbits(128))
    if kind is V.ByteString:
        return rng.randbytes(rng.randrange(0, 40))
    if kind is V.NodeId:
        return rng.choice([ua.NodeId(rng.randrange(1000), 2), ua.NodeId("Line1.X", 3)])
    if kind is V.ExpandedNodeId:
        return ua.ExpandedNodeId(rng.randrange(1000), 2, NamespaceUri="urn:x", ServerIndex=1)
    if kind is V.StatusCode:
        return ua.StatusCode(ua.UInt32(rng.choice(STATUSES[1:])))
    if kind is V.QualifiedName:
        return ua.QualifiedName("Name", rng.randrange(4))
    if kind is V.LocalizedText:
        return ua.LocalizedText(rng.choice(["Läuft", "", "running"]), rng.choice(["de", None]))
    if kind is V.ExtensionObject:
        return ua.Argument(Name="speed", DataType=ua.NodeId(11), ValueRank=-1)
    if kind is V.DataValue:
        return ua.DataValue(ua.Variant(rng.random(), V.Double))
    if kind is V.Variant:
        return ua.Variant(rng.randrange(100), V.Int32)
    if kind is V.DiagnosticInfo:
        return ua.DiagnosticInfo(SymbolicId=rng.randrange(10), AdditionalInfo="why")
    raise AssertionError(kind)


_KINDS = [kind for kind in ua.VariantType if kind is not ua.VariantType.Null]
_NUMERIC = [ua.VariantType.Double, ua.VariantType.Float, ua.VariantType.Int32]
# Scalar None is a valid value of these that asyncua can encode (a null DateTime it cannot).
_NULLABLE = (ua.VariantType.String, ua.VariantType.ByteString)


def _variant(rng: random.Random) -> ua.Variant | None:
    roll = rng.random()
    if roll < 0.05:
        return None  # no value in the DataValue
    if roll < 0.1:
        return ua.Variant()  # Null
    kind = rng.choice(_KINDS)
    if roll < 0.2 and kind in _NULLABLE:
        return ua.Variant(None, kind)
    if roll < 0.3:  # an array
        return ua.Variant([_scalar(rng, kind) for _ in range(rng.randrange(5))], kind)
    if roll < 0.35:  # a 2 x 2 matrix
        values = [[_scalar(rng, kind) for _ in range(2)] for _ in range(2)]
        return ua.Variant(values, kind, Dimensions=[2, 2])
    if roll < 0.6:  # the common numeric types
        kind = rng.choice(_NUMERIC)
    return ua.Variant(_scalar(rng, kind), kind)


def _data_value(rng: random.Random) -> ua.DataValue:
    status = rng.choice(STATUSES)
    value = ua.DataValue(
        _variant(rng),
        StatusCode=None if status is None else ua.StatusCode(ua.UInt32(status)),
        SourceTimestamp=_moment(rng) if rng.random() < 0.8 else None,
        ServerTimestamp=_moment(rng) if rng.random() < 0.6 else None,
    )
    if value.Value is not None and value.Value.VariantType is ua.VariantType.Null:
        if rng.random() < 0.5:
            object.__setattr__(value, "Value", None)  # the value bit unset in the mask
    if rng.random() < 0.05:
        value.SourcePicoseconds = ua.UInt16(rng.randrange(10_000))
    if rng.random() < 0.05:
        value.ServerPicoseconds = ua.UInt16(rng.randrange(10_000))
    return value


def _data_change(rng: random.Random) -> ua.DataChangeNotification:
    items = [
        ua.MonitoredItemNotification(
            ClientHandle=rng.randrange(SIGNALS + 3), Value=_data_value(rng)
        )
        for _ in range(rng.choice([0, 1, 3, 20]))
    ]
    diagnostics: Any = rng.choice([[], None, [ua.DiagnosticInfo(SymbolicId=1)]])
    return ua.DataChangeNotification(MonitoredItems=items, DiagnosticInfos=diagnostics)


def _events(rng: random.Random) -> ua.EventNotificationList:
    fields = [
        ua.Variant(ua.LocalizedText(f"alarm {rng.randrange(9)}"), ua.VariantType.LocalizedText),
        ua.Variant(rng.randrange(1000), ua.VariantType.UInt16),
        ua.Variant(_moment(rng), ua.VariantType.DateTime),
        ua.Variant("Line1.Filler", ua.VariantType.String),
    ]
    handle = rng.choice([EVENT_HANDLE, EVENT_HANDLE + 1])  # the second one is not watched
    return ua.EventNotificationList(Events=[ua.EventFieldList(handle, fields)])


def _status_change(rng: random.Random) -> ua.StatusChangeNotification:
    code = rng.choice([StatusCodes.Good, StatusCodes.GoodSubscriptionTransferred])
    if rng.random() < 0.2:
        code = StatusCodes.BadTimeout
    return ua.StatusChangeNotification(Status=ua.StatusCode(ua.UInt32(code)))


def _response(rng: random.Random) -> ua.PublishResponse:
    entries: list[Any] = []
    if rng.random() > 0.1:  # else a keep-alive
        for _ in range(rng.choice([1, 1, 2, 3])):
            make = rng.choices([_data_change, _events, _status_change], [8, 1, 1])[0]
            entries.append(make(rng))
    message = ua.NotificationMessage(
        SequenceNumber=rng.randrange(2**32), PublishTime=_moment(rng), NotificationData=entries
    )
    result = ua.PublishResult(
        SubscriptionId=SUBSCRIPTION,
        AvailableSequenceNumbers=rng.choice([[], [1, 2, 3], None]),
        MoreNotifications=rng.random() < 0.5,
        NotificationMessage=message,
        Results=rng.choice([[], [ua.StatusCode(0)], None]),
        DiagnosticInfos=rng.choice([[], None, [ua.DiagnosticInfo(Locale=3)]]),
    )
    return ua.PublishResponse(Parameters=result)


def _blobs(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    return [struct_to_binary(_response(rng)) for _ in range(count)]


# --- the two paths -------------------------------------------------------------------------


def _generic(blob: bytes) -> ua.PublishResponse:
    return struct_from_binary(ua.PublishResponse, Buffer(blob))


def _lean(blob: bytes) -> ua.PublishResponse:
    return decode_publish_response(Buffer(blob), lambda subscription_id: True)


def _rows(entry: Any) -> list[tuple[Any, ...]]:
    if isinstance(entry, DataChanges):
        return list(
            zip(entry.handles, entry.values, entry.statuses, entry.sources, entry.servers,
                strict=True)
        )  # fmt: skip
    rows = []
    for item in entry.MonitoredItems:
        value = item.Value
        rows.append((
            item.ClientHandle,
            value.Value.Value if value.Value is not None else None,
            value.StatusCode.value if value.StatusCode is not None else 0,
            value.SourceTimestamp,
            value.ServerTimestamp,
        ))  # fmt: skip
    return rows


def _canonical(response: ua.PublishResponse) -> str:
    """The whole response as text (repr tells -0.0, NaN and types apart), data changes as
    rows whichever path decoded them."""
    parameters = response.Parameters
    message = parameters.NotificationMessage
    entries: list[Any] = []
    for entry in message.NotificationData or []:
        if isinstance(entry, DataChanges | ua.DataChangeNotification):
            entries.append(("data changes", _rows(entry), entry_diagnostics(entry)))
        else:
            entries.append(entry)
    return repr((
        response.TypeId, response.ResponseHeader, parameters.SubscriptionId,
        parameters.AvailableSequenceNumbers, parameters.MoreNotifications,
        message.SequenceNumber, message.PublishTime,
        None if message.NotificationData is None else entries,
        parameters.Results, parameters.DiagnosticInfos,
    ))  # fmt: skip


def entry_diagnostics(entry: DataChanges | ua.DataChangeNotification) -> Any:
    return entry.diagnostic_infos if isinstance(entry, DataChanges) else entry.DiagnosticInfos


def _connector(choice: TimestampChoice = TimestampChoice.SOURCE) -> tuple[OpcUaConnector, _Plan]:
    signals = [OpcUaSignalSettings(node=f"ns=2;s=V{n}") for n in range(SIGNALS)]
    alarm = OpcUaSignalSettings(node="ns=2;s=Alarms", mode="events")
    settings = OpcUaSettings(endpoint="opc.tcp://127.0.0.1:4840", timestamp=choice)
    plan = _Plan(data=dict(enumerate(signals)), events={EVENT_SERVER_HANDLE: alarm})
    return OpcUaConnector("line1", settings, [*signals, alarm]), plan


def _subscription(max_notifications: int = 100_000) -> BatchedSubscription:
    subscription = BatchedSubscription(
        _Session(), ua.CreateSubscriptionParameters(), max_notifications
    )
    subscription.subscription_id = SUBSCRIPTION
    watched = SubscriptionItemData()
    watched.client_handle, watched.server_handle = EVENT_HANDLE, EVENT_SERVER_HANDLE
    watched.mfilter = ua.EventFilter(
        SelectClauses=[
            ua.SimpleAttributeOperand(
                TypeDefinitionId=ua.NodeId(ObjectIds.BaseEventType),
                BrowsePath=[ua.QualifiedName(name, 0)],
                AttributeId=AttributeIds.Value,
            )
            for name in EVENT_FIELDS
        ]
    )
    subscription._monitored_items[EVENT_HANDLE] = watched
    return subscription


def _facts(readings: list[Reading]) -> str:
    """Every field of each reading; of `received_at` whether it is the reading's time."""
    return repr([
        (
            r.source, r.signal, type(r.value), r.value,
            "received" if r.received_at is r.timestamp else r.timestamp, r.quality, r.status,
            r.attributes, r.backfilled, r.source_timestamp, r.server_timestamp,
            r.received_at is not None, r.received_at is r.timestamp,
        )
        for r in readings
    ])  # fmt: skip


class _Path:
    """One decoding path: subscription, connector, and what came out."""

    def __init__(self, choice: TimestampChoice) -> None:
        self.subscription = _subscription()
        self.batches = self.subscription.batches()
        self.connector, self.plan = _connector(choice)

    async def readings(self, response: ua.PublishResponse) -> tuple[str, str, Any, int]:
        """The readings' facts, the signal errors after them, how many notifications were
        queued and the status that ended the response; and how many readings."""
        await self.subscription.publish_callback(response.Parameters)
        queued = self.subscription.queued
        if not queued:
            return "[]", repr(self.connector.health.signal_errors), None, 0
        batch: list[Notification] = await anext(self.batches)
        readings, ended = self.connector._readings(batch, self.plan)
        signal_errors = repr(self.connector.health.signal_errors)
        return _facts(readings), signal_errors, (queued, ended), len(readings)


# --- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "choice"), [(0, "source"), (1, "source"), (2, "server"), (3, "receive")]
)
async def test_both_paths_decode_the_same_responses_and_make_the_same_readings(
    seed: int, choice: str
) -> None:
    lean_path, generic_path = _Path(TimestampChoice(choice)), _Path(TimestampChoice(choice))
    readings_seen = 0
    for blob in _blobs(seed, 150):
        lean, generic = _lean(blob), _generic(blob)
        assert _canonical(lean) == _canonical(generic)
        lean_data = lean.Parameters.NotificationMessage.NotificationData or []
        assert not any(isinstance(entry, ua.DataChangeNotification) for entry in lean_data)
        lean_readings = await lean_path.readings(lean)
        assert lean_readings == await generic_path.readings(generic)
        readings_seen += lean_readings[3]
    assert readings_seen > 500  # the responses did carry values to compare
    assert lean_path.subscription.last_sequence_number == (
        generic_path.subscription.last_sequence_number
    )


def test_each_built_in_variant_type_scalar_array_and_matrix_decodes_the_same() -> None:
    rng = random.Random(99)
    items: list[ua.MonitoredItemNotification] = []
    for kind in _KINDS:
        for value in (
            ua.Variant(_scalar(rng, kind), kind),
            ua.Variant([_scalar(rng, kind) for _ in range(3)], kind),
            ua.Variant([[_scalar(rng, kind)] * 2] * 2, kind, Dimensions=[2, 2]),
        ):
            items.append(ua.MonitoredItemNotification(len(items), ua.DataValue(value)))
    for nullable in _NULLABLE:
        null = ua.DataValue(ua.Variant(None, nullable))
        items.append(ua.MonitoredItemNotification(len(items), null))
    message = ua.NotificationMessage(
        NotificationData=[ua.DataChangeNotification(MonitoredItems=items)]
    )
    blob = struct_to_binary(
        ua.PublishResponse(Parameters=ua.PublishResult(7, NotificationMessage=message))
    )
    (changes,) = _lean(blob).Parameters.NotificationMessage.NotificationData
    assert isinstance(changes, DataChanges) and len(changes) == len(items)
    assert _canonical(_lean(blob)) == _canonical(_generic(blob))


@pytest.mark.parametrize(
    "ticks", [-1, -(2**63), 0, MAX_OPC_FILETIME - 1, MAX_OPC_FILETIME, 2**63 - 1]
)
def test_timestamps_at_the_edges_of_the_filetime_range_decode_the_same(ticks: int) -> None:
    marker = datetime(2026, 12, 7, 8, 0, 0, 123456, tzinfo=UTC)
    value = ua.DataValue(ua.Variant(marker, ua.VariantType.DateTime), SourceTimestamp=marker)
    item = ua.MonitoredItemNotification(1, value)
    message = ua.NotificationMessage(NotificationData=[ua.DataChangeNotification([item])])
    blob = struct_to_binary(
        ua.PublishResponse(Parameters=ua.PublishResult(7, NotificationMessage=message))
    )
    encoded = struct.pack("<q", ua.datetime_to_win_epoch(marker))
    assert blob.count(encoded) == 2  # the value and the source timestamp
    blob = blob.replace(encoded, struct.pack("<q", ticks))
    assert _canonical(_lean(blob)) == _canonical(_generic(blob))


def _decoder() -> tuple[LeanPublish, _Session]:
    session = _Session()
    subscription = _subscription()
    session._subscription_callbacks[SUBSCRIPTION] = subscription.publish_callback
    return LeanPublish(session), session


def _outcome(decode: Any, blob: bytes) -> str:
    try:
        return _canonical(decode(Buffer(blob)))
    except Exception as error:
        return f"raised {type(error).__name__}: {error}"


def test_a_truncated_buffer_falls_back_and_gives_the_generic_result_or_error() -> None:
    decoder, _ = _decoder()
    blobs = [blob for blob in _blobs(11, 40) if len(blob) > 60]
    compared = 0
    for blob in blobs[:12]:
        for cut in sorted({*range(0, len(blob), max(1, len(blob) // 40)), len(blob) - 1}):
            assert _outcome(decoder.decode, blob[:cut]) == _outcome(
                fast_publish.decode_generic, blob[:cut]
            )
            compared += 1
    assert compared > 200 and decoder.fallback_total > 0 and decoder.lean_total == 0


class _ReadsBackwards(Exception):
    pass


class _StrictBuffer(Buffer):
    """asyncua's Buffer, refusing a negative length: asyncua's decoder then reads backwards
    and can loop for minutes on garbled input, with or without the lean path."""

    def read(self, size: int) -> bytes:
        if size < 0:
            raise _ReadsBackwards
        return super().read(size)

    def skip(self, size: int) -> None:
        if size < 0:
            raise _ReadsBackwards
        super().skip(size)

    def copy(self, size: int = -1) -> Buffer:
        if size == -1 or size > self._size:
            size = self._size
        return _StrictBuffer(self._data, self._cur_pos, size)


def _reads_backwards(blob: bytes) -> bool:
    """Whether asyncua's decoder reads `blob` backwards or makes over 200,000 calls on it
    (an array of a billion Nulls: each takes no byte); counted, so the same every run."""
    calls = 0

    def count(frame: Any, event: str, arg: Any) -> None:
        nonlocal calls
        calls += 1
        if calls > 200_000:
            raise _ReadsBackwards

    before = sys.gettrace()
    sys.settrace(count)
    try:
        fast_publish.decode_generic(_StrictBuffer(blob))
    except _ReadsBackwards:
        return True
    except Exception:
        pass
    finally:
        sys.settrace(before)
    return False


def test_a_garbled_buffer_gives_the_generic_result_or_error() -> None:
    decoder, _ = _decoder()
    rng = random.Random(5)
    outcomes = {"same objects": 0, "same error": 0, "not compared": 0}
    for blob in _blobs(12, 60):
        for _ in range(15):
            garbled = bytearray(blob)
            for _ in range(rng.randrange(1, 4)):
                garbled[rng.randrange(len(garbled))] = rng.randrange(256)
            if _reads_backwards(bytes(garbled)):
                outcomes["not compared"] += 1
                continue
            lean = _outcome(decoder.decode, bytes(garbled))
            assert lean == _outcome(fast_publish.decode_generic, bytes(garbled))
            outcomes["same error" if lean.startswith("raised") else "same objects"] += 1
    assert outcomes["same objects"] > 100 and outcomes["same error"] > 100, outcomes
    assert decoder.lean_total > 0 and decoder.fallback_total > 0


def test_only_a_subscription_that_takes_columns_gets_them() -> None:
    decoder, session = _decoder()
    rng = random.Random(3)
    response = _response(rng)
    response.Parameters.NotificationMessage.NotificationData = [_data_change(rng)]
    blob = struct_to_binary(response)
    (entry,) = decoder.decode(Buffer(blob)).Parameters.NotificationMessage.NotificationData
    assert isinstance(entry, DataChanges)

    async def plain_callback(result: ua.PublishResult) -> None:  # an asyncua Subscription's
        pass

    session._subscription_callbacks[SUBSCRIPTION] = plain_callback
    (entry,) = decoder.decode(Buffer(blob)).Parameters.NotificationMessage.NotificationData
    assert isinstance(entry, ua.DataChangeNotification)
    assert entry == _generic(blob).Parameters.NotificationMessage.NotificationData[0]


def test_install_replaces_publish_on_that_session_only() -> None:
    from asyncua.client.ua_client import UaClient

    first, second = UaClient().session, UaClient().session
    lean = fast_publish.install(first)
    assert isinstance(lean, LeanPublish) and first.publish is lean
    assert fast_publish.install(first) is lean  # once per session
    assert not isinstance(second.publish, LeanPublish)
    assert not isinstance(type(first).publish, LeanPublish)
    assert fast_publish.install(object()) is None  # another shape: asyncua's publish stays


async def test_columns_count_as_their_rows_when_the_oldest_are_dropped() -> None:
    subscription = _subscription(max_notifications=5)

    def changes(sequence: int, *handles: int) -> ua.PublishResult:
        columns = DataChanges()
        for handle in handles:
            columns.handles.append(handle)
            columns.values.append(float(handle))
            columns.statuses.append(0)
            columns.sources.append(None)
            columns.servers.append(None)
        message = ua.NotificationMessage(SequenceNumber=sequence, NotificationData=[columns])
        return ua.PublishResult(SUBSCRIPTION, NotificationMessage=message)

    await subscription.publish_callback(changes(1, 1, 2, 3))
    await subscription.publish_callback(changes(2, 4, 5, 6, 7))
    assert subscription.dropped_total == 2 and subscription.queued == 5
    await subscription.publish_callback(changes(3, *range(10, 18)))  # more than the bound
    assert subscription.dropped_total == 2 + 5 + 3 and subscription.queued == 5
    batches = subscription.batches()
    (only,) = await anext(batches)
    assert isinstance(only, DataChanges) and only.handles == [13, 14, 15, 16, 17]
    assert only.values == [13.0, 14.0, 15.0, 16.0, 17.0] and subscription.queued == 0


def test_lean_readings_share_one_clock_read_and_track_gone_nodes() -> None:
    connector, plan = _connector()
    moment = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    gone = int(StatusCodes.BadNodeIdUnknown)
    items = [
        ua.MonitoredItemNotification(
            n,
            ua.DataValue(
                ua.Variant(float(n)),
                StatusCode=ua.StatusCode(ua.UInt32(gone if n == 1 else 0)),
                SourceTimestamp=moment,
            ),
        )
        for n in range(3)
    ]
    message = ua.NotificationMessage(NotificationData=[ua.DataChangeNotification(items)])
    blob = struct_to_binary(
        ua.PublishResponse(Parameters=ua.PublishResult(7, NotificationMessage=message))
    )
    (changes,) = _lean(blob).Parameters.NotificationMessage.NotificationData
    readings, ended = connector._readings([changes], plan)
    assert ended is None and [r.value for r in readings] == [0.0, 1.0, 2.0]
    assert len({id(r.received_at) for r in readings}) == 1
    assert readings[1].status == "BadNodeIdUnknown"
    assert connector.health.signal_errors == {"ns=2;s=V1": "BadNodeIdUnknown"}
