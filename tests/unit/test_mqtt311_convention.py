"""The MQTT 3.1.1 convention (agent.link.mqtt311) without a broker: what the config refuses,
how the hub reads a message that lost its properties, and the in-payload reply fields."""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path

import msgpack
import pytest

from agent.link.mqtt311 import (
    ReplyFieldError,
    marked_topic,
    reply_in_payload,
    split_marker,
)
from agent.link.mqtt_session import InboundMessage
from buffer.base import StoredRecord
from config.loader import ConfigError, load_config
from events.formats import (
    BACKLOG_PROPERTY,
    FORMATS,
    REPLAY_PROPERTY,
    FormatName,
    sniff_content_type,
)
from hub.ingest import read_message

TOPIC = "mfg/plant-a/edge-01/events/telemetry.v1"

CONFIG = """\
[agent]
site = "plant-a"
id = "edge-01"

[hub]
url = "mqtt://127.0.0.1:1883"
protocol = "{protocol}"
format = "{format}"

[[sources]]
name = "sim"
type = "simulated"

  [[sources.signals]]
  node = "counter"
  event = "production.count"
  asset = "line1/filler"
  name = "good"
"""


@pytest.mark.parametrize("protocol", ["3.1.1", "auto"])
def test_binary_mode_on_311_is_refused_naming_the_key_and_line(
    tmp_path: Path, protocol: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(protocol=protocol, format="cloudevents-binary"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert (problem.file, problem.line, problem.key) == (path, 8, "hub.format")
    assert "needs MQTT v5" in problem.message and f'"{protocol}"' in problem.message
    assert "cloudevents-structured" in problem.message, "says what to use instead"


@pytest.mark.parametrize("fmt", ["cloudevents-structured", "cloudevents-batch-msgpack"])
def test_the_other_formats_load_on_311(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(protocol="3.1.1", format=fmt))
    assert load_config(path).hub.protocol == "3.1.1"


def test_an_unknown_protocol_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG.format(protocol="3", format="cloudevents-structured"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    [problem] = caught.value.problems
    assert (problem.line, problem.key) == (7, "hub.protocol")


def _stored(seq: int) -> StoredRecord:
    event_id = str(uuid.uuid4())
    body = msgpack.packb(
        {
            "specversion": "1.0",
            "id": event_id,
            "type": "telemetry.v1",
            "source": "/p/e/t",
            "site": "plant-a",
            "agent": "edge-01",
            "data": {"n": seq},
        }
    )
    return StoredRecord(seq, event_id, "telemetry.v1", 0, body, accepted_at=time.time())


@pytest.mark.parametrize(
    "wire_format", ["cloudevents-batch-msgpack", "cloudevents-batch-json", "cloudevents-structured"]
)
def test_the_hub_reads_a_311_message_as_its_v5_twin(wire_format: FormatName) -> None:
    """No properties at all (a 3.1.1 hop): the format by the payload, the marker by the topic."""
    message = FORMATS[wire_format].encode([_stored(7)], None)
    assert sniff_content_type(message.payload) == message.content_type
    for topic, replayed in (
        (TOPIC, False),
        (marked_topic(TOPIC, BACKLOG_PROPERTY), False),
        (marked_topic(TOPIC, REPLAY_PROPERTY), True),
    ):
        rows, rejects = read_message(InboundMessage(topic, message.payload, None, 1, 1, print))
        assert not rejects, rejects
        [row] = rows
        assert (row.seq, row.replayed, row.topic) == (7, replayed, TOPIC)


def test_markers_are_only_a_last_level() -> None:
    assert split_marker(f"{TOPIC}/backlog") == (TOPIC, BACKLOG_PROPERTY)
    assert split_marker(f"{TOPIC}/replay") == (TOPIC, REPLAY_PROPERTY)
    assert split_marker(TOPIC) == (TOPIC, None)
    assert split_marker("replay") == ("replay", None)
    assert split_marker("mfg/replay/x") == ("mfg/replay/x", None)


def test_reply_fields_in_the_payload() -> None:
    correlation = uuid.uuid4().bytes
    encoded = base64.b64encode(correlation).decode()
    assert reply_in_payload({"response_topic": "r/1", "correlation_data": encoded}) == (
        "r/1",
        correlation,
    )
    assert reply_in_payload({"args": {}}) == (None, None)
    with pytest.raises(ReplyFieldError, match="response_topic"):
        reply_in_payload({"response_topic": 5})
    with pytest.raises(ReplyFieldError, match="not base64"):
        reply_in_payload({"response_topic": "r/1", "correlation_data": "%%%"})
    with pytest.raises(ReplyFieldError, match="at most 64"):
        reply_in_payload({"correlation_data": base64.b64encode(b"x" * 65).decode()})
