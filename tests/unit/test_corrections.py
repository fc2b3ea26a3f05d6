"""`agent.flow.corrections` on its own: how each keyed record event is judged against what
is remembered of its key (first, re-read, repeat, correction), what it stages for the commit,
and that nothing is remembered before the commit succeeded; and how a correction's retired
copy (dual publish) names the retired copy of what it supersedes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from agent.flow.corrections import Corrections, content_hash, state_key
from agent.flow.mapping import Mapper, MappingContext, RecordRule
from connectors.base import Reading
from events.kinds import EventKind
from events.models import Event
from events.versions import DOWN_CONVERSIONS, retired_id

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
CONTEXT = MappingContext(site="plant-a", agent="edge-01")


def mapper(key: tuple[str, ...] = ("order",)) -> Mapper:
    return Mapper([], records=[RecordRule(
        CONTEXT, "mes", "record", EventKind.WORKORDER_COMPLETED, "line1", ("order",), "file",
        (), key,
    )])


def event(m: Mapper, record: str, order: str, good: float) -> Event:
    reading = Reading("mes", "record", record, NOW, attributes=(
        ("order", order), ("good", good), ("scrap", 1.0), ("unit", "1"),
    ))
    [made], _ = m.map_all([reading])
    return made


class State:
    def __init__(self) -> None:
        self.entries: dict[str, str] = {}
        self.reads = 0

    async def read(self, prefix: str) -> dict[str, str]:
        self.reads += 1
        return {k: v for k, v in self.entries.items() if k.startswith(prefix)}


async def test_first_reread_repeat_and_correction() -> None:
    m, state = mapper(), State()
    corrections = Corrections(m, state.read)
    first = event(m, "f1:2", "WO-1", 480)
    out, staged = await corrections.judge([first])
    assert out == [first]
    key = state_key("mes", ("record", "WO-1"))
    assert json.loads(staged[key]) == {"id": first.id, "hash": content_hash(first.data)}
    # Not committed yet: nothing remembered (a failed commit leaves no trace).
    assert (await corrections.judge([first]))[0] == [first]
    state.entries.update(staged)
    corrections.committed(staged)

    # The same record read again (same id): appended, the buffer drops it; no new state.
    out, staged = await corrections.judge([first])
    assert (out, staged) == ([first], {})
    # The same content from another record: a repeat, dropped.
    out, staged = await corrections.judge([event(m, "f2:2", "WO-1", 480)])
    assert (out, staged, corrections.repeats_total) == ([], {}, 1)
    # Other content: a correction of the first; and a second one in the same batch
    # supersedes the first correction.
    fix = event(m, "f3:2", "WO-1", 470)
    again = event(m, "f4:2", "WO-1", 460)
    out, staged = await corrections.judge([fix, again])
    assert [e.extensions.get("supersedes") for e in out] == [first.id, fix.id]
    assert {e.extensions.get("supersedesreason") for e in out} == {"correction"}
    assert json.loads(staged[key])["id"] == again.id
    assert corrections.corrections_total == 2


async def test_committed_state_is_read_once_per_key_and_keys_differ_by_value() -> None:
    m, state = mapper(("order", "good")), State()
    first = event(m, "a", "WO-1", 1)
    _, staged = await Corrections(m, state.read).judge([first])
    state.entries.update(staged)
    corrections = Corrections(m, state.read)  # a restarted agent: only the buffer knows
    out, _ = await corrections.judge([event(m, "b", "WO-1", 1)])
    assert out == [] and state.reads == 2
    await corrections.judge([event(m, "c", "WO-1", 1)])
    assert state.reads == 2  # cached
    out, _ = await corrections.judge([event(m, "d", "WO-1", 2)])  # another key: a new fact
    assert "supersedes" not in out[0].extensions


async def test_without_a_business_key_nothing_is_judged() -> None:
    m, state = mapper(()), State()
    one, two = event(m, "a", "WO-1", 1), event(m, "b", "WO-1", 1)
    assert await Corrections(m, state.read).judge([one, two]) == ([one, two], {})
    assert state.reads == 0


def test_a_corrections_retired_copy_supersedes_the_earlier_copy() -> None:
    m = mapper()
    fix = event(m, "f3:2", "WO-1", 470)
    marked = Event(**{**{f: getattr(fix, f) for f in fix.__slots__},
                      "extensions": {"supersedes": "earlier", "supersedesreason": "correction"}})
    copy = DOWN_CONVERSIONS["workorder.completed.v1"].convert(marked)
    assert copy.extensions["supersedes"] == retired_id("earlier", "workorder.completed.v1")
    assert copy.extensions["supersedesreason"] == "correction"


@pytest.mark.parametrize("text", ["not json", "{}", "[1]"])
async def test_state_that_is_not_ours_is_a_first(text: str) -> None:
    m, state = mapper(), State()
    state.entries[state_key("mes", ("record", "WO-1"))] = text
    out, _ = await Corrections(m, state.read).judge([event(m, "a", "WO-1", 1)])
    assert "supersedes" not in out[0].extensions


def test_business_key_names_fields_of_the_columns() -> None:
    from pydantic import ValidationError

    from connectors.records import RecordSettings

    columns = {"order": {"column": "WO"}, "good": {"column": "G", "type": "float"}}
    settings = RecordSettings.model_validate({"columns": columns, "business_key": ["order"]})
    assert settings.business_key == ("order",)
    with pytest.raises(ValidationError, match="business_key names 'operation', not in columns"):
        RecordSettings.model_validate({"columns": columns, "business_key": ["operation"]})
    with pytest.raises(ValidationError, match="twice"):
        RecordSettings.model_validate({"columns": columns, "business_key": ["order", "order"]})
