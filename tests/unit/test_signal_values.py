"""Per-signal diagnostics without a peer (`agent.flow.signal_values`, `agent.cli.signals`):
what a status document lists, in which order, how a problem appears and clears, the bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.cli.signals import signals_table
from agent.flow import signal_values
from agent.flow.signal_values import LastValues
from connectors.base import Quality, Reading, Value

T0 = datetime(2026, 12, 7, 16, 0, tzinfo=UTC)


def reading(
    signal: str,
    value: Value,
    *,
    seconds: int = 0,
    status: str | None = None,
    quality: Quality = Quality.GOOD,
    source: str = "line1",
) -> Reading:
    at = T0 + timedelta(seconds=seconds)
    return Reading(
        source=source,
        signal=signal,
        value=value,
        timestamp=at,
        quality=quality,
        status=status,
        source_timestamp=at,
        received_at=at,
    )


def test_a_signal_shows_value_quality_time_and_changes_and_a_bad_status_clears() -> None:
    values = LastValues()
    values.note([reading("t", 20.0), reading("t", 21.0, seconds=1)])
    signals, left_out = values.document("line1", names={"t": "temperature"})
    assert left_out == 0
    assert signals["t"] == {
        "name": "temperature",
        "value": 21.0,
        "quality": "Good",
        "source_timestamp": "2026-12-07T16:00:01.000+00:00",
        "received_at": "2026-12-07T16:00:01.000+00:00",
        "changes": 2,
        "error": None,
        "last_error": None,
        "last_error_at": None,
    }
    values.note([reading("t", 21.0, seconds=2, status="BadSensorFailure", quality=Quality.BAD)])
    bad = values.document("line1")[0]["t"]
    assert (bad["quality"], bad["error"], bad["last_error"]) == ("BadSensorFailure",) * 3
    values.note([reading("t", 22.0, seconds=3)])
    cleared = values.document("line1")[0]["t"]
    assert cleared["error"] is None and cleared["quality"] == "Good" and cleared["changes"] == 4
    assert cleared["last_error"] == "BadSensorFailure"
    assert cleared["last_error_at"] == "2026-12-07T16:00:02.000+00:00"


def test_configured_signals_come_first_with_their_watch_problem_and_the_rest_after() -> None:
    values = LastValues()
    values.note([reading("z-extra", 1), reading("b", 2)])
    signals, _ = values.document(
        "line1", names={"b": "bee", "a": None}, errors={"a": "BadNodeIdUnknown"}
    )
    assert list(signals) == ["b", "a", "z-extra"]
    assert signals["a"]["value"] is None and signals["a"]["error"] == "BadNodeIdUnknown"
    assert signals["a"]["changes"] == 0


def test_the_document_is_bounded_and_says_how_many_were_left_out() -> None:
    values = LastValues()
    values.note([reading(f"s{n:03d}", n) for n in range(40)])
    values.note([reading("long", "x" * 500)])
    signals, left_out = values.document("line1", limit=10)
    assert len(signals) == 10 and left_out == 31
    text = values.document("line1")[0]["long"]["value"]
    assert len(text) == signal_values.MAX_VALUE_CHARS and text.endswith("…")


def test_signals_past_the_store_bound_are_counted_not_kept() -> None:
    values = LastValues()
    bound = signal_values.MAX_SIGNALS_PER_SOURCE
    values.note([reading(f"s{n}", n) for n in range(bound + 3)])
    signals, left_out = values.document("line1", limit=bound)
    assert len(signals) == bound and left_out == 3


def test_the_table_lists_each_signal_and_the_ones_left_out() -> None:
    values = LastValues()
    values.note(
        [reading("t", 21.5), reading("c", 7, status="BadSensorFailure", quality=Quality.BAD)]
    )
    signals, _ = values.document("line1", names={"t": "temperature", "c": "count"})
    lines = signals_table(signals, 2).splitlines()
    assert lines[0].split()[:3] == ["SIGNAL", "ADDRESS", "VALUE"]
    assert lines[1].split() == [
        "temperature",
        "t",
        "21.5",
        "Good",
        "2026-12-07T16:00:00.000+00:00",
        "1",
        "-",
    ]
    assert lines[2].split()[-1] == "BadSensorFailure"
    assert lines[3] == "(2 more signal(s) not listed)"
    assert signals_table({}, 0) == ""
