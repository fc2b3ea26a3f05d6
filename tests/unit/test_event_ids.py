"""Event ids and event times are a published contract: consumers de-duplicate by id across
agent upgrades, so these values must never change, however `event_id` and `rfc3339` are
computed. The pinned values were produced by the original implementation (uuid.uuid5 over
the joined fact, isoformat of the time converted to UTC)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from events.ids import _ID_NAMESPACE, event_id, record_id, rfc3339

PINNED: list[tuple[dict[str, Any], str, str]] = [
    (
        dict(site="plant-1", source="press", signal="ns=2;s=Line1.Temp",
             timestamp=datetime(2026, 11, 26, 15, 12, 51, 123456, tzinfo=UTC), value=21.5,
             type_name="telemetry.v1"),
        "2026-11-26T15:12:51.123456Z", "0dc84069-eb5b-5a92-8cbc-184ee90397a3",
    ),
    (
        dict(site="plant-1", source="press", signal="ns=2;s=Line1.Count",
             timestamp=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
             value=42, type_name="production.count.v1"),
        "2026-01-02T01:04:05.000000Z", "5140e95c-7e30-51af-bd9b-f6279fab836c",
    ),
    (
        dict(site="bench", source="bench", signal="nsu=urn:x;s=V0",
             timestamp=datetime(2025, 6, 30, 23, 59, 59, 999999), value=None,
             type_name="telemetry.v1"),
        "2025-06-30T23:59:59.999999Z", "77b2d5c4-f26e-5db7-a6e8-c9e33df3039d",
    ),
    (
        dict(site="größe", source="ü", signal="s=Ä",
             timestamp=datetime(2024, 2, 29, 12, 0, 0, 1, tzinfo=ZoneInfo("Europe/Berlin")),
             value="RUN", type_name="machine.state.v1"),
        "2024-02-29T11:00:00.000001Z", "c0f6d2bf-37de-5d25-a3fa-db1cbc81eb4f",
    ),
    (
        dict(site="s", source="a", signal="b",
             timestamp=datetime(1999, 12, 31, 23, 0, 0, tzinfo=ZoneInfo("America/New_York")),
             value=True, type_name="quality.alert.v1"),
        "2000-01-01T04:00:00.000000Z", "228efe40-ba27-5c49-ba47-7b2410dd47a9",
    ),
]


@pytest.mark.parametrize(("fact", "time", "expected_id"), PINNED)
def test_known_ids_and_times_never_change(
    fact: dict[str, Any], time: str, expected_id: str
) -> None:
    assert rfc3339(fact["timestamp"]) == time
    assert event_id(**fact) == expected_id


def test_known_record_id_never_changes() -> None:
    assert (
        record_id(site="s", source="a", key="k:1", type_name="x.v1")
        == "86b27286-9c71-5206-8563-d3d44c1ebbd0"
    )


def _reference_rfc3339(timestamp: datetime) -> str:
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=UTC)
    return timestamp.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _reference_id(
    *, site: str, source: str, signal: str, timestamp: datetime, value: Any, type_name: str
) -> str:
    key = "\x1f".join(
        (site, source, signal, _reference_rfc3339(timestamp), repr(value), type_name)
    )
    return str(uuid.uuid5(_ID_NAMESPACE, key))


def test_ids_and_times_equal_the_reference_formula() -> None:
    rng = random.Random(8)
    zones = [None, UTC, timezone(timedelta(hours=-5, minutes=-30)), ZoneInfo("Europe/Berlin")]
    values: list[Any] = [None, True, False, 0, -7, 3.25, float("nan"), "", "RUN", "ä\x1fb"]
    for _ in range(2_000):
        moment = datetime(2020, 1, 1) + timedelta(
            seconds=rng.randrange(0, 10**9), microseconds=rng.choice([0, rng.randrange(10**6)])
        )
        moment = moment.replace(tzinfo=rng.choice(zones))
        fact = dict(
            site=rng.choice(["plant-1", "größe"]), source="press",
            signal=f"ns=2;s=V{rng.randrange(100)}", timestamp=moment,
            value=rng.choice(values), type_name="telemetry.v1",
        )
        assert rfc3339(moment) == _reference_rfc3339(moment)
        assert event_id(**fact) == _reference_id(**fact)
