"""Counter baselines across restarts: never counted twice, a lost baseline reported as null."""

from __future__ import annotations

import json
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.flow.mapping import Mapper
from agent.flow.mapping_state import CounterBaselines
from config.schema import AgentConfig
from connectors.base import Reading

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
CONFIG = AgentConfig.model_validate(
    tomllib.loads(
        """
[agent]
site = "plant-a"
id = "edge-01"
[hub]
url = "mqtt://127.0.0.1:1883"
[[sources]]
name = "line1"
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
[[sources.signals]]
node = "ns=2;s=Good"
event = "production.count"
asset = "line1/filler"
[[sources.signals]]
node = "ns=2;s=Reject"
event = "production.count"
asset = "line1/filler"
"""
    )
)


def increments(mapper: Mapper, node: str, *values: int) -> list[object]:
    out = []
    for second, value in enumerate(values):
        reading = Reading("line1", f"ns=2;s={node}", value, T0 + timedelta(seconds=second))
        [event] = mapper.map(reading)
        out.append(event.data["increment"])
    return out


def started(path: Path) -> tuple[Mapper, CounterBaselines]:
    mapper = Mapper.from_config(CONFIG)
    baselines = CounterBaselines(path, mapper)
    baselines.restore()
    return mapper, baselines


async def test_a_committed_baseline_gives_the_first_increment_after_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "counters.json"
    mapper, baselines = started(path)
    assert increments(mapper, "Good", 100, 130) == [None, 30]
    await baselines.before_commit()
    await baselines.after_commit()

    mapper, _ = started(path)  # the restart
    assert increments(mapper, "Good", 170) == [40]
    assert increments(mapper, "Reject", 5) == [None]  # never seen: unknown, not 5


async def test_a_crash_between_state_write_and_commit_gives_null_not_a_double_count(
    tmp_path: Path,
) -> None:
    path = tmp_path / "counters.json"
    mapper, baselines = started(path)
    increments(mapper, "Good", 100)
    increments(mapper, "Reject", 1)
    await baselines.before_commit()
    await baselines.after_commit()  # committed: Good 100, Reject 1
    increments(mapper, "Good", 130)
    await baselines.before_commit()  # then the process dies: was the batch accepted? unknown
    assert json.loads(path.read_text())["pending"] == {"line1/ns=2;s=Good": 130}

    mapper, _ = started(path)
    # Good's last batch may or may not be in the buffer: 100 could count 30 twice, 130 could
    # skip parts, so the first increment is null (unknown). Reject is unaffected.
    assert increments(mapper, "Good", 150, 160) == [None, 10]
    assert increments(mapper, "Reject", 3) == [2]


async def test_nothing_is_written_when_no_count_changed(tmp_path: Path) -> None:
    path = tmp_path / "counters.json"
    _mapper, baselines = started(path)
    await baselines.before_commit()
    await baselines.after_commit()
    assert not path.exists()


def test_a_corrupt_file_is_like_no_file(tmp_path: Path) -> None:
    path = tmp_path / "counters.json"
    path.write_text("{not json")
    mapper, _baselines = started(path)
    assert increments(mapper, "Good", 7) == [None]
