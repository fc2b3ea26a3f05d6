"""The mapping stage with plain values: no server, no broker, no files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.flow.mapping import MappingContext, SignalMapper, UnmappableReading
from config.schema import SignalMapping
from connectors.base import Quality, Reading, Value

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
CONTEXT = MappingContext(site="plant-a", agent="edge-01")


def mapper(**rule: object) -> SignalMapper:
    return SignalMapper(CONTEXT, "line1", "ns=2;s=X", SignalMapping.model_validate(rule))


def reading(value: Value, seconds: float = 0, quality: Quality = Quality.GOOD) -> Reading:
    return Reading("line1", "ns=2;s=X", value, T0 + timedelta(seconds=seconds), quality)


def test_telemetry_carries_value_unit_quality_and_asset() -> None:
    [event] = mapper(event="telemetry", asset="line1/tank", unit="Cel", name="temp").map(
        reading(21.5)
    )
    assert event.type.name == "telemetry.v1"
    assert event.subject == "line1/tank"
    assert event.data == {"signal": "temp", "value": 21.5, "unit": "Cel"}
    assert event.quality == "good" and event.time == T0
    assert event.source == "/plant-a/edge-01/line1"


def test_same_fact_same_id_and_different_facts_different_ids() -> None:
    first = mapper(event="telemetry", asset="a").map(reading(1.0))[0].id
    again = mapper(event="telemetry", asset="a").map(reading(1.0))[0].id
    later = mapper(event="telemetry", asset="a").map(reading(1.0, seconds=1))[0].id
    other = mapper(event="telemetry", asset="a").map(reading(2.0))[0].id
    assert first == again
    assert len({first, later, other}) == 3


def test_counter_increments_and_reset() -> None:
    counter = mapper(event="production.count", asset="a")
    values = [10, 12, 12, 3, 5]
    data = [counter.map(reading(v, i))[0].data for i, v in enumerate(values)]
    assert [(d["count"], d["increment"], d["reset"]) for d in data] == [
        (10, None, False), (12, 2, False), (12, 0, False), (3, 3, True), (5, 2, False)
    ]


def test_bad_counter_reading_without_value_makes_no_event() -> None:
    counter = mapper(event="production.count", asset="a")
    assert counter.map(reading(None, quality=Quality.BAD)) == []


@pytest.mark.parametrize("value", ["12", 1.5, -1, True])
def test_counter_rejects_what_is_not_a_whole_count(value: Value) -> None:
    with pytest.raises(UnmappableReading, match="counter"):
        mapper(event="production.count", asset="a").map(reading(value))


def test_state_changes_only_with_previous_and_duration() -> None:
    states = mapper(
        event="machine.state", asset="a", states={"0": "idle", "1": "running", "3": "fault"}
    )
    out = [states.map(reading(v, s)) for v, s in [(0, 0), (0, 5), (1, 10), (3, 70)]]
    assert out[1] == []  # same state again: no event
    assert [e[0].data["state"] for e in (out[0], out[2], out[3])] == ["idle", "running", "fault"]
    assert out[2][0].data["previous"] == "idle"
    assert out[2][0].data["previous_duration_s"] == 10.0
    assert out[3][0].data["previous_duration_s"] == 60.0


def test_state_value_missing_from_table_is_rejected_with_reason() -> None:
    states = mapper(event="machine.state", asset="a", states={"0": "idle"})
    with pytest.raises(UnmappableReading, match=r"value 7 is not in its states table \(0\)"):
        states.map(reading(7))


def test_telemetry_text_value_is_rejected() -> None:
    with pytest.raises(UnmappableReading, match="expected a number"):
        mapper(event="telemetry", asset="a").map(reading("hot"))


def test_bad_quality_telemetry_is_forwarded_marked_bad() -> None:
    [event] = mapper(event="telemetry", asset="a").map(reading(None, quality=Quality.BAD))
    assert event.quality == "bad" and event.data["value"] is None
