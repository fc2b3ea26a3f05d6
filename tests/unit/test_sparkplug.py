"""Sparkplug B pieces that need no broker: events as metrics, the seq splice, the bdSeq file,
reading an NCMD, and the `[sparkplug]` section's errors. The whole path is
tests/integration/test_sparkplug.py (with an independent decoder); here the agent's own
generated protobuf code reads back what the payload functions wrote."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.link.sparkplug import sparkplug_b_pb2 as pb
from agent.link.sparkplug.edge_node import BdSeqFile
from agent.link.sparkplug.metrics import (
    BOOLEAN,
    DOUBLE,
    STRING,
    MetricValue,
    device_id,
    event_metrics,
    topic_safe,
)
from agent.link.sparkplug.payloads import (
    DeviceMetric,
    device_payload,
    rebirth_requested,
    with_seq,
)
from config.loader import ConfigError, load_config

TIME = "2026-11-26T15:29:12.491Z"
MS = 1_795_706_952_491  # TIME in ms since the epoch


def test_device_is_the_asset_made_one_topic_level() -> None:
    assert device_id({"assetpath": "acme/plant-a/line1", "subject": "line1"}) == (
        "acme:plant-a:line1"
    )
    assert device_id({"subject": "line1/filler"}) == "line1:filler"
    assert device_id({}) == "agent"
    assert topic_safe("a+b#c/d") == "a_b_c:d"


def test_telemetry_is_one_metric_named_after_its_signal_with_its_unit() -> None:
    envelope = {
        "type": "telemetry.v1",
        "time": TIME,
        "data": {"signal": "temp", "value": 72, "unit": "Cel"},
    }
    assert event_metrics(envelope) == [MetricValue("temp", DOUBLE, 72.0, "Cel", MS)]


def test_other_types_give_a_metric_per_field() -> None:
    envelope = {
        "type": "machine.state.v1",
        "time": TIME,
        "data": {
            "signal": "state",
            "state": "running",
            "raw": 1,
            "flags": {"auto": True},
            "previous": None,
            "tags": [1, 2],
        },
    }
    assert event_metrics(envelope) == [
        MetricValue("machine.state/state/state", STRING, "running", None, MS),
        MetricValue("machine.state/state/raw", DOUBLE, 1.0, None, MS),
        MetricValue("machine.state/state/flags/auto", BOOLEAN, True, None, MS),
        MetricValue("machine.state/state/previous", None, None, None, MS),
        MetricValue("machine.state/state/tags", STRING, "[1,2]", None, MS),
    ]


def test_an_event_without_a_time_cannot_be_metrics() -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        event_metrics({"type": "telemetry.v1", "time": "yesterday", "data": {}})


@pytest.mark.parametrize("seq", [0, 1, 127, 128, 255])
def test_seq_is_spliced_as_the_protobuf_field(seq: int) -> None:
    metrics = [DeviceMetric("temp", 7, DOUBLE, 1.5, MS, unit="Cel")]
    payload = pb.Payload()
    payload.ParseFromString(with_seq(device_payload(metrics, MS, birth=True), seq))
    assert payload.seq == seq
    [metric] = payload.metrics
    assert (metric.name, metric.alias, metric.datatype, metric.double_value) == (
        "temp",
        7,
        DOUBLE,
        1.5,
    )
    assert list(metric.properties.keys) == ["engUnit"]
    assert metric.properties.values[0].string_value == "Cel"


def test_seq_outside_0_to_255_is_refused() -> None:
    with pytest.raises(ValueError, match="0 to 255"):
        with_seq(b"", 256)


def test_ddata_names_metrics_by_alias_and_flags_history() -> None:
    metrics = [DeviceMetric("temp", 7, DOUBLE, None, MS, historical=True)]
    payload = pb.Payload()
    payload.ParseFromString(device_payload(metrics, MS, birth=False))
    [metric] = payload.metrics
    assert not metric.HasField("name") and metric.alias == 7
    assert metric.is_historical and metric.is_null


def test_bdseq_starts_at_0_goes_on_and_wraps(tmp_path: Path) -> None:
    file = BdSeqFile(tmp_path / "bdseq")
    assert [file.next(), file.next()] == [0, 1]
    assert BdSeqFile(tmp_path / "bdseq").next() == 2  # kept across a restart
    (tmp_path / "bdseq").write_text("255\n")
    assert file.next() == 0
    (tmp_path / "bdseq").write_text("garbage")
    assert file.next() == 0


def test_rebirth_request_is_read_from_an_ncmd() -> None:
    command = pb.Payload()
    command.metrics.add(name="Node Control/Rebirth", datatype=BOOLEAN, boolean_value=True)
    assert rebirth_requested(command.SerializeToString())
    command.metrics[0].boolean_value = False
    assert not rebirth_requested(command.SerializeToString())
    assert not rebirth_requested(b"\xff\xff")  # not protobuf: ignored
    by_alias = pb.Payload()  # as a host sends it once the NBIRTH declared the alias
    by_alias.metrics.add(alias=1, boolean_value=True)
    assert rebirth_requested(by_alias.SerializeToString())


def test_a_bad_sparkplug_id_names_its_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\nsite = "plant-a"\nid = "edge-01"\n\n[hub]\nurl = "mqtt://127.0.0.1:1883"\n\n'
        '[sparkplug]\nenabled = true\ngroup_id = "plant/a"\n\n'
        '[[sources]]\nname = "sim"\ntype = "simulated"\n[[sources.signals]]\nnode = "c"\n'
        'event = "production.count"\nasset = "line1/sim"\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    text = str(raised.value)
    assert "sparkplug.group_id" in text and ":10" in text, text
