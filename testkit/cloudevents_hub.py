"""A hub consumer written only against the CloudEvents specs and the official `cloudevents` SDK.

The tests and benchmarks read what an agent published with it, to prove that a standard consumer
reads every hub format (docs/hub-contract.md, "Formats") with no project code: this module
imports nothing of ours, only the SDK, `json` and `msgpack`. The SDK (2.x, `cloudevents.core`)
has no MQTT binding, so each message is handed to the binding that carries attributes the same
way, the Kafka one: headers are raw strings, no percent-encoding, as MQTT v5 user properties.

    MQTT Content Type                       how it is read (SDK calls)
    application/cloudevents+json            structured mode: `kafka.from_structured` (JSON format)
    application/cloudevents-batch+json      the JSON event format's batch: a JSON array, each
                                            element read by the SDK's JSON format (the SDK has no
                                            batch reader)
    application/cloudevents-batch+msgpack   the project's own batch (no SDK reads msgpack): each
                                            msgpack map converted to JSON, then read as above
    anything else                           binary mode: every user property is an attribute
                                            (`ce_` header), the content type `datacontenttype`,
                                            the payload the data: `kafka.from_binary`

Invariants:
- The SDK constructs, so validates, every event: required attributes, attribute types, extension
  names (`[a-z0-9]+`); a message that is none of the formats raises ValueError.
- The agent's delivery user properties (`backlog`, `replay`: how a message was sent, not what an
  event is) are taken out before binary mode reads the rest as attributes (`HubMessage.delivery`);
  a user property name that comes twice in one message is a ValueError (an attribute would
  collide).
- Binary mode carries every attribute as its canonical string: `json_form` types them again from
  the published schema (`integer`, `boolean`), as a hub without the agent's code does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import kafka
from cloudevents.core.formats.json import JSONFormat

__all__ = ["DELIVERY_PROPERTIES", "HubMessage", "json_form", "read_message"]

STRUCTURED = "application/cloudevents+json"
BATCH_JSON = "application/cloudevents-batch+json"
BATCH_MSGPACK = "application/cloudevents-batch+msgpack"
DELIVERY_PROPERTIES = frozenset({"backlog", "replay"})
_JSON = JSONFormat()


@dataclass(frozen=True)
class HubMessage:
    """One MQTT message as the hub read it: its events and its delivery properties."""

    topic: str
    content_type: str
    events: list[BaseCloudEvent]
    delivery: dict[str, str]
    binary: bool

    @property
    def backlog(self) -> bool:
        return self.delivery.get("backlog") == "true"

    @property
    def replay(self) -> bool:
        return self.delivery.get("replay") == "true"


def read_message(
    topic: str,
    payload: bytes,
    content_type: str | None,
    user_properties: Sequence[tuple[str, str]] = (),
) -> HubMessage:
    """One message's events, read with the SDK as the module docstring says."""
    names = [name for name, _ in user_properties]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"{topic}: user properties {twice} appear more than once")
    delivery = {name: value for name, value in user_properties if name in DELIVERY_PROPERTIES}
    attributes = [(name, value) for name, value in user_properties if name not in delivery]
    media_type = (content_type or "").split(";")[0].strip().lower()
    binary = False
    if media_type == STRUCTURED:
        message = kafka.KafkaMessage(
            headers={"content-type": STRUCTURED.encode()}, key=None, value=payload
        )
        events = [kafka.from_structured(message, _JSON)]
    elif media_type == BATCH_JSON:
        events = [_from_json_map(item) for item in _array(json.loads(payload), topic)]
    elif media_type == BATCH_MSGPACK:
        events = [_from_json_map(item) for item in _array(msgpack.unpackb(payload), topic)]
    elif media_type.startswith("application/cloudevents"):
        raise ValueError(f"{topic}: no CloudEvents format {content_type!r}")
    else:
        headers = {f"ce_{name}": value.encode() for name, value in attributes}
        if content_type is not None:
            headers["content-type"] = content_type.encode()
        if "ce_specversion" not in headers:
            raise ValueError(f"{topic}: binary mode without a specversion user property")
        events = [kafka.from_binary(kafka.KafkaMessage(headers, None, payload), _JSON)]
        binary = True
    return HubMessage(topic, media_type, events, delivery, binary)


def json_form(event: BaseCloudEvent, schema: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The event in the CloudEvents JSON format, as a map (what the published schemas describe).
    `schema`: the type's published JSON Schema; attributes it types `integer` or `boolean` that
    came as strings (binary mode) are typed again from it."""
    form: dict[str, Any] = json.loads(_JSON.write(event))
    properties = (schema or {}).get("properties", {})
    for name, value in list(form.items()):
        declared = properties.get(name, {}).get("type") if name != "data" else None
        if isinstance(value, str) and declared == "integer":
            form[name] = int(value)
        elif isinstance(value, str) and declared == "boolean":
            form[name] = value == "true"
    return form


def _array(value: object, topic: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{topic}: a batch must be an array of events")
    return value


def _from_json_map(item: object) -> BaseCloudEvent:
    if not isinstance(item, dict):
        raise ValueError("a batch element must be an event object")
    return _JSON.read(None, json.dumps(item))
