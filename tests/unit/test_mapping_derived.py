"""The mapping language with plain values: units, scaling, master data, derived events, context.

Each test builds an `AgentConfig` from a small TOML text (as an engineer writes it) and feeds
`Mapper` readings; no server, broker or file other than `tmp_path` CSVs.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.flow.mapping import Mapper
from config.schema import AgentConfig
from connectors.base import Quality, Reading, Value
from events.models import Event
from events.wire import validate_envelope

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)

HEAD = """
[agent]
site = "plant-a"
id = "edge-01"
[hub]
url = "mqtt://127.0.0.1:1883"
"""


def config(mapping: str, signals: str) -> AgentConfig:
    text = f"""{HEAD}
{mapping}
[[sources]]
name = "line1"
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
{signals}
"""
    return AgentConfig.model_validate(tomllib.loads(text))


def signal(node: str, **keys: object) -> str:
    lines = [f'[[sources.signals]]\nnode = "ns=2;s={node}"']
    for key, value in keys.items():
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, str) and value.startswith("{"):  # an inline table, as written
        return value
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


class Feed:
    """A mapper and a clock: `feed(node, value)` maps one reading, one second after the last."""

    def __init__(self, mapper: Mapper) -> None:
        self.mapper = mapper
        self.seconds = 0.0

    def __call__(
        self, node: str, value: Value, *, quality: Quality = Quality.GOOD, dt: float = 1.0
    ) -> list[Event]:
        self.seconds += dt
        reading = Reading("line1", f"ns=2;s={node}", value, T0 + timedelta(seconds=self.seconds),
                          quality)
        events, rejected = self.mapper.map_all([reading])
        if rejected:
            raise AssertionError(rejected)
        return events


def feed_for(mapping: str, *signals: str) -> Feed:
    return Feed(Mapper.from_config(config(mapping, "".join(signals))))


def envelope(event: Event) -> dict[str, Any]:
    """The event as the hub decodes it, checked against its contract."""
    from events.wire import envelope as envelope_of

    decoded = envelope_of(event, site="plant-a", agent="edge-01")
    validate_envelope({**decoded, "seq": 1})
    return decoded


# --- units, scaling, clamping, rounding -------------------------------------------------------


def test_fahrenheit_signal_is_sent_in_celsius_from_the_units_section() -> None:
    feed = feed_for(
        '[units]\ntemperature = "Cel"',
        signal("T", event="telemetry", asset="r1", unit="[degF]", decimals=2),
    )
    [event] = feed("T", 212.0)
    assert event.data == {"signal": "ns=2;s=T", "value": 100.0, "unit": "Cel"}
    assert feed("T", 100.0)[0].data["value"] == 37.78


def test_signal_to_unit_overrides_the_units_section() -> None:
    feed = feed_for(
        '[units]\npressure = "bar"',
        signal("P", event="telemetry", asset="r1", unit="bar", to_unit="kPa"),
    )
    assert feed("P", 2.5)[0].data == {"signal": "ns=2;s=P", "value": 250.0, "unit": "kPa"}


def test_raw_counts_are_scaled_clamped_and_flagged_uncertain_when_clamped() -> None:
    feed = feed_for(
        "",
        signal("S", event="telemetry", asset="l1", unit="/min", scale=600 / 27648,
               clamp=[0, 600], decimals=1),
    )
    [normal] = feed("S", 13824)
    assert normal.data["value"] == 300.0 and normal.quality == "good"
    [clamped] = feed("S", 32767)  # a broken sensor's full-scale value
    assert clamped.data["value"] == 600.0
    assert (clamped.quality, clamped.status) == ("uncertain", "UncertainEngineeringUnitsExceeded")


def test_offset_applies_before_conversion() -> None:
    feed = feed_for("", signal("T", event="telemetry", asset="a", unit="Cel", to_unit="K",
                               scale=0.1, offset=-50.0))
    assert feed("T", 1000)[0].data["value"] == pytest.approx(50.0 + 273.15)


# --- counters ---------------------------------------------------------------------------------


def counts(feed: Feed, values: list[int]) -> list[tuple[object, object, object]]:
    out = []
    for value in values:
        [event] = feed("C", value)
        out.append((event.data["count"], event.data["increment"], event.data["reset"]))
    return out


def test_counter_rollover_at_its_maximum_is_an_increment_not_a_reset() -> None:
    feed = feed_for("", signal("C", event="production.count", asset="a", rollover=65535))
    assert counts(feed, [65530, 65535, 3, 10]) == [
        (65530, None, False), (65535, 5, False), (3, 4, False), (10, 7, False)
    ]


def test_counter_going_far_back_is_a_reset_even_with_rollover() -> None:
    feed = feed_for("", signal("C", event="production.count", asset="a", rollover=65535))
    assert counts(feed, [1000, 1200, 5]) == [(1000, None, False), (1200, 200, False), (5, 5, True)]


def test_count_above_rollover_is_set_aside() -> None:
    mapper = Mapper.from_config(
        config("", signal("C", event="production.count", asset="a", rollover=999))
    )
    _, rejected = mapper.map_all([Reading("line1", "ns=2;s=C", 1000, T0)])
    assert [reason for _, reason in rejected] == ["signal 'ns=2;s=C': count 1000 is above its "
                                                  "rollover 999"]


@given(
    start=st.integers(0, 65535),
    steps=st.lists(st.integers(0, 30000), min_size=1, max_size=40),
)
def test_rollover_counter_increments_add_up_to_the_true_progress(
    start: int, steps: list[int]
) -> None:
    """A 16-bit counter advanced by less than half its range between readings: the increments
    sum to the true number of parts, whatever the wraps."""
    feed = feed_for("", signal("C", event="production.count", asset="a", rollover=65535))
    feed("C", start)
    value, total = start, 0
    for step in steps:
        value = (value + step) % 65536
        [event] = feed("C", value)
        assert event.data["reset"] is False
        total += event.data["increment"]
    assert total == sum(steps)


@given(values=st.lists(st.integers(0, 10**9), min_size=1, max_size=40))
def test_counter_increment_is_never_negative_nor_more_than_the_count(values: list[int]) -> None:
    feed = feed_for("", signal("C", event="production.count", asset="a"))
    previous: int | None = None
    for value in values:
        [event] = feed("C", value)
        increment = event.data["increment"]
        if previous is None:
            assert increment is None
        else:
            assert increment is not None and 0 <= increment
            assert increment == (value - previous if value >= previous else value)
            assert event.data["reset"] is (value < previous)
        previous = value


# --- thresholds with hysteresis -----------------------------------------------------------------


def test_threshold_alert_starts_above_and_ends_below_the_hysteresis_band() -> None:
    feed = feed_for(
        '[units]\ntemperature = "Cel"',
        signal("T", event="telemetry", asset="r1", unit="[degF]", decimals=1,
               trigger="{ above = 90.0, hysteresis = 2.0 }"),
    )
    phases = []
    for fahrenheit in [180.0, 195.0, 193.0, 192.0, 190.0, 195.0]:
        # Cel:            82.2   90.6   89.4   88.9   87.8   90.6
        events = feed("T", fahrenheit)
        assert events[0].type.name == "telemetry.v1"
        phases += [(e.data["phase"], e.data["limit"]) for e in events[1:]]
        alerts = [e for e in events[1:] if e.data["phase"] == "end"]
        if alerts:
            assert alerts[0].data["duration_s"] == 3.0
            assert alerts[0].data["started_at"] is not None
    assert phases == [("start", 90.0), ("end", 88.0), ("start", 90.0)]


def test_downtime_below_a_speed_limit_with_hysteresis() -> None:
    feed = feed_for("", signal("S", event="machine.downtime", asset="a",
                               trigger="{ below = 5.0, hysteresis = 1.0 }"))
    out = [[e.data["phase"] for e in feed("S", v)] for v in [50, 4, 5.5, 6.5, 3]]
    assert out == [[], ["start"], [], ["end"], ["start"]]


def test_boolean_downtime_carries_the_looked_up_reason_on_start_and_end() -> None:
    feed = feed_for(
        '[lookups.reasons]\nentries = { 1 = "JAM", 2 = "STARVED" }\nunmapped = "flag"',
        signal("Stopped", event="machine.downtime", asset="a", name="stopped",
               reason="stop_reason"),
        signal("Reason", asset="a", name="stop_reason", lookup="reasons"),
    )
    assert feed("Stopped", False) == []
    assert feed("Reason", 2) == []
    [start] = feed("Stopped", True)
    assert feed("Reason", 1) == []  # a new reason while stopped does not change this stop
    [end] = feed("Stopped", False, dt=30)
    assert (start.data["phase"], start.data["reason"], start.data["reason_raw"]) == (
        "start", "STARVED", "2"
    )
    assert (end.data["phase"], end.data["reason"], end.data["duration_s"]) == (
        "end", "STARVED", 31.0  # the reason changed 1 s after the start, the end came 30 s later
    )
    feed("Reason", 7)
    [flagged] = feed("Stopped", True)
    assert flagged.data["reason"] == "7" and flagged.extensions["unmapped"] == "reasons:7"
    assert feed.mapper.counters.codes_unmapped_total == {"reasons": 1}
    for event in (start, end, flagged):
        envelope(event)


def test_inverted_boolean_alert() -> None:
    feed = feed_for("", signal("Ok", event="quality.alert", asset="a", severity="info",
                               trigger="{ when = false }"))
    assert [e.data["phase"] for e in feed("Ok", True)] == []
    [start] = feed("Ok", False)
    assert (start.data["phase"], start.data["severity"], start.data["value"]) == (
        "start", "info", False
    )


def test_a_value_less_bad_reading_changes_no_alert() -> None:
    feed = feed_for("", signal("S", event="machine.downtime", asset="a"))
    feed("S", True)
    assert feed("S", None, quality=Quality.BAD) == []
    assert [e.data["phase"] for e in feed("S", False)] == ["end"]


# --- master data ----------------------------------------------------------------------------


def test_csv_and_inline_entries_with_dead_letter_policy(tmp_path: Path) -> None:
    csv = tmp_path / "materials.csv"
    csv.write_text("plant,enterprise\nA-17,MAT-117\nA-18,MAT-118\n", encoding="utf-8")
    feed = feed_for(
        f'[lookups.materials]\nfile = "{csv}"\nentries = {{ "A-18" = "MAT-999" }}\n'
        'unmapped = "dead-letter"',
        signal("P", asset="line1", context="product", lookup="materials"),
        signal("T", event="telemetry", asset="line1/filler", unit="Cel"),
    )
    feed("P", "A-18")
    assert feed("T", 20.0)[0].extensions["product"] == "MAT-999"  # inline wins over the file
    feed("P", "A-17")
    assert feed("T", 21.0)[0].extensions["product"] == "MAT-117"
    mapper = feed.mapper
    _, rejected = mapper.map_all([Reading("line1", "ns=2;s=P", "Z-1", T0)])
    assert [reason for _, reason in rejected] == [
        "signal 'ns=2;s=P': code 'Z-1' is not in lookup 'materials' (unmapped = \"dead-letter\")"
    ]
    assert mapper.counters.codes_dead_lettered_total == {"materials": 1}
    assert feed("T", 22.0)[0].extensions["product"] == "MAT-117"  # context kept


# --- context, asset path, multi-signal events -----------------------------------------------


def test_events_carry_asset_path_work_order_and_product_of_their_line() -> None:
    feed = feed_for(
        '[lookups.materials]\nentries = { "A-17" = "MAT-117" }\n'
        '[assets."line1"]\npath = "acme/plant-a/packaging/line1"',
        signal("Order", asset="line1", context="workorder"),
        signal("Product", asset="line1", context="product", lookup="materials"),
        signal("Good", event="production.count", asset="line1/filler"),
    )
    [before] = feed("Good", 1)
    assert before.extensions == {"assetpath": "acme/plant-a/packaging/line1/filler"}
    feed("Order", "WO-1")
    feed("Product", "B-2")  # not in the table: passed through, flagged
    [after] = feed("Good", 2)
    assert after.extensions == {
        "assetpath": "acme/plant-a/packaging/line1/filler",
        "workorder": "WO-1",
        "product": "B-2",
        "unmapped": "materials:B-2",
        "correlationid": "order:WO-1",  # the business object of the work order context
    }
    decoded = envelope(after)
    assert decoded["workorder"] == "WO-1" and decoded["assetpath"].endswith("/line1/filler")


def workorder_feed() -> Feed:
    return feed_for(
        '[lookups.materials]\nentries = { "RX-PVA" = "MAT-4410" }',
        signal("Done", event="workorder.completed", asset="r1", name="done",
               workorder='{ order = "batch", good = "good", scrap = "scrap", product = "mat" }'),
        signal("Batch", asset="r1", name="batch"),
        signal("Mat", asset="r1", name="mat", lookup="materials"),
        signal("Good", event="production.count", asset="r1", name="good"),
        signal("Scrap", asset="r1", name="scrap"),
    )


def test_workorder_completed_from_siblings_when_the_done_bit_rises() -> None:
    feed = workorder_feed()
    feed("Done", False)
    feed("Batch", "B-42")
    feed("Mat", "RX-PVA")
    feed("Good", 950)
    feed("Scrap", 12)
    [done] = feed("Done", True)
    assert done.data == {
        "signal": "done", "order": "B-42", "product": "MAT-4410", "good": 950, "scrap": 12,
        "unit": "1",
    }
    assert feed("Done", True, dt=0.5) == []  # still high: no second completion
    assert feed("Done", False) == []
    envelope(done)


def test_siblings_in_the_same_batch_and_scan_are_read_before_the_done_bit() -> None:
    feed = workorder_feed()
    mapper = feed.mapper
    feed("Done", False)
    scan = T0 + timedelta(minutes=5)
    readings = [
        Reading("line1", "ns=2;s=Done", True, scan),  # arrives first in the publish
        Reading("line1", "ns=2;s=Batch", "B-43", scan),
        Reading("line1", "ns=2;s=Good", 400, scan),
        Reading("line1", "ns=2;s=Scrap", 3, scan),
    ]
    events, rejected = mapper.map_all(readings)
    assert rejected == []
    [done] = [e for e in events if e.type.name == "workorder.completed.v3"]
    assert (done.data["order"], done.data["good"], done.data["scrap"]) == ("B-43", 400, 3)


def test_done_bit_before_any_order_id_is_set_aside_with_the_reason() -> None:
    mapper = workorder_feed().mapper
    _, rejected = mapper.map_all([Reading("line1", "ns=2;s=Done", True, T0)])
    assert "the done bit rose but the order id 'batch' has not been read yet" in rejected[0][1]


def test_each_derived_event_of_one_reading_has_its_own_stable_id() -> None:
    def ids() -> list[str]:
        feed = feed_for("", signal("T", event="telemetry", asset="a",
                                   trigger="{ above = 1.0 }"))
        return [e.id for e in feed("T", 5.0)]

    first, again = ids(), ids()
    assert first == again and len(set(first)) == 2
