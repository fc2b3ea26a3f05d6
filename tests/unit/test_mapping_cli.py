"""`edge-agent try`: the events one value would produce, from the README's example configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from events.wire import validate_envelope

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"


def attempt(
    capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, list[dict[str, Any]], str]:
    code = main(["try", *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if code == 0 else [], captured.err


def test_try_shows_converted_telemetry_and_its_alert_with_context(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, events, _ = attempt(
        capsys, "-c", str(EXAMPLES / "filling-line.toml"), "--signal", "fill_weight",
        "--value", "2.3", "--time", "2026-11-26T08:00:00Z",
        "--set", 'product="A-17"', "--set", 'order="WO-4711"',
    )
    assert code == 0
    assert [e["type"] for e in events] == ["telemetry.v1", "quality.alert.v1"]
    telemetry, alert = events
    assert telemetry["data"] == {"signal": "fill_weight", "value": 1.043, "unit": "kg"}
    assert telemetry["time"] == "2026-11-26T08:00:00.000000Z"
    assert (telemetry["product"], telemetry["workorder"]) == ("MAT-000117", "WO-4711")
    assert telemetry["assetpath"] == "acme/plant-a/packaging/line1/filler"
    assert (alert["data"]["phase"], alert["data"]["limit"]) == ("start", 1.1)
    for event in events:
        validate_envelope({**event, "seq": 1})


def test_try_a_counter_with_its_previous_value(capsys: pytest.CaptureFixture[str]) -> None:
    code, [event], _ = attempt(
        capsys, "-c", str(EXAMPLES / "filling-line.toml"), "--signal", "good_count",
        "--value", "2", "--set", "good_count=65530",
    )
    assert code == 0
    assert (event["data"]["count"], event["data"]["increment"]) == (2, 8)  # rolled over


def test_try_a_batch_completion(capsys: pytest.CaptureFixture[str]) -> None:
    code, [event], _ = attempt(
        capsys, "-c", str(EXAMPLES / "batch-reactor.toml"), "--signal", "batch_done",
        "--value", "true", "--set", "material=RX-PVA", "--set", 'batch_id="B-0042"',
    )
    assert code == 0
    assert event["type"] == "workorder.completed.v3"
    assert (event["data"]["order"], event["data"]["product"]) == ("B-0042", "MAT-004410")


def test_try_reports_an_unmappable_value(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = attempt(
        capsys, "-c", str(EXAMPLES / "filling-line.toml"), "--signal", "state", "--value", "9"
    )
    assert code == 1
    assert "value 9 is not in its states table (0, 1, 2, 3)" in err


def test_try_names_the_known_signals_for_an_unknown_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = attempt(
        capsys, "-c", str(EXAMPLES / "filling-line.toml"), "--signal", "nope", "--value", "1"
    )
    assert code == 2
    assert "no signal 'nope'; signals: line1/fill_weight, line1/good_count" in err
