"""The MQTT 3.1.1 convention: where what MQTT v5 carries in properties goes on a 3.1.1 link.

MQTT 3.1.1 has no properties and no reason codes. An agent whose hub link speaks 3.1.1
(`[hub] protocol = "3.1.1"`, or `"auto"` after the broker refused v5) says the same things
this way (docs/hub-contract.md, "MQTT 3.1.1 hubs"):

    MQTT v5                              MQTT 3.1.1
    Content Type of an event message     none: the payload tells the format (`sniff_content_type`:
                                         ``[`` the JSON batch, ``{`` structured mode, a msgpack
                                         array the msgpack batch); binary mode needs v5 (its
                                         attributes are user properties): refused at config check
    user property ``backlog=true``       one more topic level: ``{topic}/backlog``
    user property ``replay=true``        one more topic level: ``{topic}/replay``
    a request's Response Topic           the request's JSON field ``response_topic``
    a request's Correlation Data         the request's JSON field ``correlation_data`` (base64);
                                         the answer's JSON repeats it as ``correlation_data``
    PUBACK reason code                   none: a PUBACK is success

Invariants:
- An event type never ends in a level named ``backlog`` or ``replay`` (types end in their
  version, ``.vN``), so `split_marker` cannot mistake a type for a marker.
- A hub reads both conventions at once (`hub.ingest`): a message with the markers as user
  properties and one with them as a topic level land the same, under the topic without it.
- A request carries its reply fields in the payload only when it has no Response Topic
  property; the agent answers the way the request came (`reply_in_payload`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Final

# The topic form of the markers is the wire contract's (the hub reads it too): events.formats.
from events.formats import TOPIC_MARKERS as MARKERS
from events.formats import marked_topic, split_marker

__all__ = [
    "CORRELATION_FIELD",
    "MARKERS",
    "RESPONSE_TOPIC_FIELD",
    "ReplyFieldError",
    "encode_correlation",
    "marked_topic",
    "reply_in_payload",
    "split_marker",
]

RESPONSE_TOPIC_FIELD: Final = "response_topic"
CORRELATION_FIELD: Final = "correlation_data"
_MAX_CORRELATION_BYTES = 64


class ReplyFieldError(ValueError):
    """A request's ``response_topic`` or ``correlation_data`` field is not usable."""


def encode_correlation(correlation: bytes) -> str:
    return base64.b64encode(correlation).decode("ascii")


def reply_in_payload(request: Mapping[str, Any]) -> tuple[str | None, bytes | None]:
    """A parsed request's in-payload reply fields: (response topic, correlation data), each
    None when absent. ReplyFieldError saying what is wrong with one."""
    topic = request.get(RESPONSE_TOPIC_FIELD)
    if topic is not None and (not isinstance(topic, str) or not topic):
        raise ReplyFieldError(f"{RESPONSE_TOPIC_FIELD!r} must be a non-empty string")
    raw = request.get(CORRELATION_FIELD)
    if raw is None:
        return topic, None
    if not isinstance(raw, str):
        raise ReplyFieldError(f"{CORRELATION_FIELD!r} must be a base64 string")
    try:
        correlation = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ReplyFieldError(f"{CORRELATION_FIELD!r} is not base64: {error}") from error
    if len(correlation) > _MAX_CORRELATION_BYTES:
        raise ReplyFieldError(
            f"{CORRELATION_FIELD!r} is {len(correlation)} bytes; at most {_MAX_CORRELATION_BYTES}"
        )
    return topic, correlation
