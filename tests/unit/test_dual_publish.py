"""Dual publish with plain values: the down-conversions `workorder.completed.v3` → v2 and
→ v1, the
window on an injected clock, what status says (the document and `edge-agent status`), and
the config's located errors (`edge-agent check-config` names file:line:key)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.cli import main
from agent.flow.dual_publish import DualPublisher
from agent.service.status_file import StatusFile
from config.loader import ConfigError, load_config
from events.ids import parse_traceparent, record_id, traceparent
from events.kinds import EventKind
from events.models import EVENT_TYPES, Event
from events.versions import DOWN_CONVERSIONS, NotConvertible, retired_id
from events.wire import encode_body, envelope, validate_envelope

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
UNTIL = datetime(2027, 6, 30, tzinfo=UTC)
V1 = "workorder.completed.v1"
V2 = "workorder.completed.v2"
V3 = EVENT_TYPES[EventKind.WORKORDER_COMPLETED]  # the emitted version
MES_PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def completion(order: str, good: float | None = 12.0, unit: str = "1", **extensions: str) -> Event:
    event_id = record_id(site="plant-a", source="mes", key=order, type_name=V3.name)
    return Event(
        event_id, V3, "/plant-a/edge-01/mes", T0, "line1", "good", None,
        {"signal": "/done", "order": order, "product": "P-1", "good": good, "scrap": 1.0,
         "unit": unit},
        {"correlationid": f"order:{order}", **extensions},
    )


class Clock:
    """The agent's clock, set by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_a_v3_completion_in_pieces_becomes_a_v1_event_of_its_own() -> None:
    event = completion("WO-1")
    copy = DOWN_CONVERSIONS[V1].convert(event)
    assert copy.type.name == V1
    assert copy.data == {"signal": "/done", "order": "WO-1", "product": "P-1", "good": 12,
                         "scrap": 1}
    assert copy.id == retired_id(event.id, V1) != event.id
    assert (copy.time, copy.subject, copy.source) == (event.time, event.subject, event.source)
    assert copy.extensions["causationid"] == event.id
    assert copy.extensions["correlationid"] == "order:WO-1"
    # A trace rooted at the v3 event: the copy is a span of that trace.
    assert copy.extensions["traceparent"].split("-")[1] == event.id.replace("-", "")
    validate_envelope({**envelope(copy, site="plant-a", agent="edge-01"), "seq": 2})


def test_a_copy_of_a_traced_event_stays_in_the_callers_trace() -> None:
    parent = parse_traceparent(MES_PARENT)
    assert parent is not None
    event = completion("WO-1", traceparent=traceparent("a" * 32, parent), tracestate="m=1")
    copy = DOWN_CONVERSIONS[V1].convert(event)
    assert copy.extensions["traceparent"].split("-")[1] == MES_PARENT.split("-")[1]
    assert copy.extensions["traceparent"] != event.extensions["traceparent"]
    assert copy.extensions["tracestate"] == "m=1"
    # The stored copy carries its trace, so the publisher does not derive another one.
    assert b"traceparent" in encode_body(copy, site="plant-a", agent="edge-01")


@pytest.mark.parametrize(("event", "why"), [
    (completion("WO-1", unit="kg"), "quantities in 'kg'"),
    (completion("WO-1", good=2.5), "good 2.5 is not a whole number of pieces"),
])
def test_what_v1_cannot_say_is_not_convertible(event: Event, why: str) -> None:
    with pytest.raises(NotConvertible, match=why):
        DOWN_CONVERSIONS[V1].convert(event)


ERP_FIELDS = {
    "operation": "0010", "work_center": "FILL-01", "confirmation": "000482", "rework": 2.0,
    "rework_reason": "R01", "scrap_reason": "S03", "lot": "L-7", "location": "FG01",
    "started_at": "2026-11-26T06:00:00Z", "finished_at": "2026-11-26T08:00:00Z",
    "posting_date": "2026-11-26", "personnel": "10042",
}


def confirmation(order: str, *, final: bool | None) -> Event:
    event = completion(order)
    return replace(event, data={**event.data, **ERP_FIELDS, "final": final})


def test_a_v3_confirmation_becomes_a_v2_event_without_what_v2_cannot_say() -> None:
    event = confirmation("WO-1", final=True)
    copy = DOWN_CONVERSIONS[V2].convert(event)
    assert copy.type.name == V2
    assert copy.data == {"signal": "/done", "order": "WO-1", "product": "P-1", "good": 12.0,
                         "scrap": 1.0, "unit": "1"}
    assert copy.id == retired_id(event.id, V2) != event.id
    assert copy.extensions["causationid"] == event.id
    # v1 is made from the same v3 event, not from the v2 copy.
    assert DOWN_CONVERSIONS[V1].convert(event).extensions["causationid"] == event.id
    # A confirmation that does not say whether it is final is a completion, as every v2 was.
    assert DOWN_CONVERSIONS[V2].convert(confirmation("WO-2", final=None)).data["good"] == 12.0


def test_a_partial_confirmation_has_no_v2_nor_v1() -> None:
    partial = confirmation("WO-1", final=False)
    for retired in (V2, V1):
        with pytest.raises(NotConvertible, match="a partial confirmation"):
            DOWN_CONVERSIONS[retired].convert(partial)


def test_both_retired_versions_follow_each_v3_event() -> None:
    publisher = DualPublisher({V2: UNTIL, V1: UNTIL}, clock=lambda: T0)
    out = publisher.beside([confirmation("WO-1", final=True), confirmation("WO-2", final=False)])
    assert [(e.type.name, e.data["order"]) for e in out] == [
        (V3.name, "WO-1"), (V2, "WO-1"), (V1, "WO-1"), (V3.name, "WO-2"),
    ]
    status = publisher.status()
    assert status["publishes"]["workorder.completed"] == [V3.name, V2, V1]
    assert status["dual_publish"][V2]["skipped_total"] == 1


def test_copies_follow_their_successor_while_the_window_is_open(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(UNTIL - timedelta(seconds=1))
    publisher = DualPublisher({V1: UNTIL}, clock=clock)
    other = replace(completion("WO-0"), type=EVENT_TYPES[EventKind.WORKORDER_RELEASED],
                    data={"signal": "/r", "order": "WO-0", "product": None})
    first, second = completion("WO-1"), completion("WO-2")
    with caplog.at_level(logging.INFO, logger="agent.flow.dual_publish"):
        out = publisher.beside([other, first, completion("WO-3", unit="kg"), second])
        assert [(e.type.name, e.data["order"]) for e in out] == [
            ("workorder.released.v1", "WO-0"), (V3.name, "WO-1"), (V1, "WO-1"),
            (V3.name, "WO-3"), (V3.name, "WO-2"), (V1, "WO-2"),
        ]
        # A repeat of a fact makes the same copy: the buffer drops both as duplicates.
        assert publisher.beside([first])[1].id == out[2].id
        publisher.beside([completion("WO-4", unit="kg")])
        window = publisher.status()["dual_publish"][V1]
        assert (window["open"], window["copies_total"], window["skipped_total"]) == (True, 3, 2)
        clock.now = UNTIL  # the window ends at its moment, for good
        assert publisher.beside([first]) == [first]
        clock.now = UNTIL - timedelta(days=1)  # a clock stepped back does not reopen it
        assert publisher.beside([first]) == [first]
    messages = [record.getMessage() for record in caplog.records]
    assert sum("has no workorder.completed.v1 copy" in m for m in messages) == 1  # once
    assert sum("ended" in m for m in messages) == 1
    status = publisher.status()
    assert status["publishes"]["workorder.completed"] == [V3.name]
    assert status["dual_publish"][V1] == {
        "beside": V3.name, "until": "2027-06-30T00:00:00Z", "open": False,
        "copies_total": 3, "skipped_total": 2,
    }


def test_status_lists_every_version_published_newest_first() -> None:
    open_window = DualPublisher({V1: UNTIL}, clock=lambda: T0).status()
    assert open_window["publishes"]["workorder.completed"] == [V3.name, V1]
    assert open_window["publishes"]["telemetry"] == ["telemetry.v1"]
    assert "agent.buffer.overflow.v1" in open_window["publishes"]["agent.buffer.overflow"]
    none = DualPublisher({}).status()
    assert none["dual_publish"] == {} and none["publishes"]["workorder.completed"] == [V3.name]
    # A window already past when the agent starts is closed from the start.
    passed = DualPublisher({V1: T0}, clock=lambda: UNTIL)
    assert passed.beside([completion("WO-1")]) == [completion("WO-1")]
    assert passed.status()["dual_publish"][V1]["open"] is False


def test_edge_agent_status_shows_each_window(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "{state}"
[hub]
url = "mqtt://127.0.0.1:1883"
[contracts]
dual_publish_until = {{ "workorder.completed.v1" = 2027-06-30T00:00:00Z }}
[[sources]]
name = "mes"
type = "mes-http"
auth = "none"
  [[sources.routes]]
  path = "/done"
  event = "workorder.completed"
  asset = "line1"
    [sources.routes.columns]
    order = {{ column = "order" }}
    good = {{ column = "good", type = "float", unit = "1" }}
""")
    loaded = load_config(config)
    publisher = DualPublisher(loaded.contracts.dual_publish_until, clock=lambda: T0)
    publisher.beside([completion("WO-1"), completion("WO-2", good=0.5)])
    # The snapshot as the daemon writes it (`agent.service.daemon`): stopped, with its types.
    StatusFile(state).write({"state": "stopped", "pid": None, "site": "plant-a",
                             "agent": "edge-01", "event_types": publisher.status()})
    assert main(["status", "-c", str(config)]) == 3  # not running
    text = capsys.readouterr().out
    assert ("  dual publish workorder.completed.v1 beside workorder.completed.v3: publishing, "
            "until 2027-06-30T00:00:00Z (1 copies, 1 not convertible)") in text
    assert main(["status", "-c", str(config), "--json"]) == 3
    document = json.loads(capsys.readouterr().out)
    assert document["snapshot"]["event_types"]["publishes"]["workorder.completed"] == [
        V3.name, V1
    ]


@pytest.mark.parametrize(("windows", "key", "why"), [
    ('{ "workorder.completed.v9" = 2027-06-30T00:00:00Z }',
     'contracts.dual_publish_until."workorder.completed.v9"', "is no event type"),
    ('{ "workorder.completed.v3" = 2027-06-30T00:00:00Z }',
     'contracts.dual_publish_until."workorder.completed.v3"',
     "is a version this agent emits, not a retired one"),
    ('{ "workorder.completed.v1" = 2027-06-30T00:00:00 }',
     'contracts.dual_publish_until."workorder.completed.v1"', "timezone"),
])
def test_a_bad_window_is_named_by_file_line_and_key(
    tmp_path: Path, windows: str, key: str, why: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\nsite = "plant-a"\nid = "edge-01"\n[hub]\nurl = "mqtt://127.0.0.1:1883"\n'
        f"\n[contracts]\ndual_publish_until = {windows}\n"
        '[[sources]]\nname = "mes"\ntype = "mes-http"\nauth = "none"\n'
        '  [[sources.routes]]\n  path = "/r"\n  event = "workorder.released"\n'
        '  asset = "line1"\n    [sources.routes.columns]\n    order = { column = "o" }\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    [problem] = raised.value.problems
    assert problem.format().startswith(f"{path}:8: {key}: "), problem.format()
    assert why in problem.format()


def test_a_bad_correlate_by_is_named_by_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[agent]\nsite = "plant-a"\nid = "edge-01"\n[hub]\nurl = "mqtt://127.0.0.1:1883"\n'
        '[[sources]]\nname = "mes"\ntype = "mes-http"\nauth = "none"\n'
        '  [[sources.routes]]\n  path = "/c"\n  event = "material.consumed"\n'
        '  asset = "line1"\n  correlate_by = "quantity"\n'
        '    [sources.routes.columns]\n    material = { column = "m" }\n'
        '    quantity = { column = "q", type = "float", unit = "kg" }\n'
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    [problem] = raised.value.problems
    assert problem.format() == (
        f"{path}:14: sources[0].routes[0].correlate_by: correlate_by = 'quantity': "
        "material.consumed has no text field 'quantity'; its fields: location, lot, "
        'material, order (or "none" for no correlationid)'
    )
