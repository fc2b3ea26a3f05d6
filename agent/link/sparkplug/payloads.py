"""Sparkplug B payloads (protobuf, `sparkplug_b_pb2` generated from the Tahu definition):
NBIRTH, NDEATH, DBIRTH, DDATA, and reading an NCMD.

`seq` is added last (`with_seq`): a DDATA is encoded when the forwarder leases its events, but
its `seq` is only known when it is published (a message that is split, held back or never sent
must not use one up). Protobuf readers take fields in any order, so the payload's bytes plus
the encoded `seq` field are the same message as one built with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from agent.link.sparkplug import sparkplug_b_pb2 as pb
from agent.link.sparkplug.metrics import BOOLEAN, DOUBLE, INT64, STRING, Scalar

__all__ = [
    "BDSEQ",
    "FIRST_DEVICE_ALIAS",
    "REBIRTH",
    "DeviceMetric",
    "device_payload",
    "node_birth",
    "node_death",
    "rebirth_requested",
    "with_seq",
]

BDSEQ = "bdSeq"
REBIRTH = "Node Control/Rebirth"
# Births name every metric and give it an alias (the spec's alias-birth requirement); these
# two are the node's own, the devices' metrics take theirs from FIRST_DEVICE_ALIAS on. A host
# may then name the Rebirth control in an NCMD by its alias alone.
BDSEQ_ALIAS = 0
REBIRTH_ALIAS = 1
FIRST_DEVICE_ALIAS = 2
ENG_UNIT = "engUnit"
_SEQ_TAG = bytes(((3 << 3) | 0,))  # field 3 (`seq`), wire type 0 (varint)


@dataclass(frozen=True, slots=True)
class DeviceMetric:
    """One metric as a DBIRTH or DDATA carries it."""

    name: str
    alias: int
    datatype: int
    value: Scalar
    timestamp_ms: int
    unit: str | None = None
    historical: bool = False


def _set_value(metric: pb.Payload.Metric, datatype: int, value: Scalar) -> None:
    if value is None:
        metric.is_null = True
    elif datatype == BOOLEAN:
        metric.boolean_value = bool(value)
    elif datatype == DOUBLE:
        metric.double_value = float(value)
    elif datatype == INT64:
        metric.long_value = int(value)
    elif datatype == STRING:
        metric.string_value = str(value)
    else:  # pragma: no cover - metrics.py makes only the four above
        raise ValueError(f"unsupported Sparkplug datatype {datatype}")


def node_birth(bdseq: int, timestamp_ms: int) -> bytes:
    """NBIRTH: seq 0, the connection's bdSeq and the Rebirth control (false)."""
    payload = pb.Payload(timestamp=timestamp_ms, seq=0)
    payload.metrics.add(
        name=BDSEQ, alias=BDSEQ_ALIAS, datatype=INT64, timestamp=timestamp_ms, long_value=bdseq
    )
    payload.metrics.add(
        name=REBIRTH,
        alias=REBIRTH_ALIAS,
        datatype=BOOLEAN,
        timestamp=timestamp_ms,
        boolean_value=False,
    )
    return payload.SerializeToString()


def node_death(bdseq: int, timestamp_ms: int) -> bytes:
    """NDEATH: the bdSeq of the connection it is the will of; no seq (the spec says none)."""
    payload = pb.Payload(timestamp=timestamp_ms)
    payload.metrics.add(name=BDSEQ, datatype=INT64, timestamp=timestamp_ms, long_value=bdseq)
    return payload.SerializeToString()


def device_payload(metrics: Iterable[DeviceMetric], timestamp_ms: int, *, birth: bool) -> bytes:
    """DBIRTH (`birth`: name, alias, datatype and `engUnit` of every metric) or DDATA (alias
    and value only), without `seq` (`with_seq`)."""
    payload = pb.Payload(timestamp=timestamp_ms)
    for entry in metrics:
        metric = payload.metrics.add(alias=entry.alias, timestamp=entry.timestamp_ms)
        if birth:
            metric.name = entry.name
            metric.datatype = entry.datatype
            if entry.unit is not None:
                metric.properties.keys.append(ENG_UNIT)
                metric.properties.values.add(type=STRING, string_value=entry.unit)
        if entry.historical:
            metric.is_historical = True
        _set_value(metric, entry.datatype, entry.value)
    return payload.SerializeToString()


def with_seq(payload: bytes, seq: int) -> bytes:
    """`payload` with its `seq` (module docstring)."""
    if not 0 <= seq <= 255:
        raise ValueError(f"Sparkplug seq is 0 to 255, not {seq}")
    varint = bytes((seq,)) if seq < 128 else bytes(((seq & 0x7F) | 0x80, seq >> 7))
    return payload + _SEQ_TAG + varint


def rebirth_requested(payload: bytes) -> bool:
    """Whether an NCMD payload asks for a rebirth (`Node Control/Rebirth` = true, named or by
    its alias)."""
    message = pb.Payload()
    try:
        message.ParseFromString(payload)
    except DecodeError:
        return False
    return any(
        (metric.name == REBIRTH or (not metric.name and metric.alias == REBIRTH_ALIAS))
        and metric.WhichOneof("value") == "boolean_value"
        and metric.boolean_value
        for metric in message.metrics
    )
