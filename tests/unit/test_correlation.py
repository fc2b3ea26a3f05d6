"""The ids that tie events together, with plain values: `correlationid` (the business object),
`causationid` (the event one was derived from) and `traceparent`/`tracestate` (the W3C trace
context a webhook request came with). Each test builds an `AgentConfig` from TOML, as an
engineer writes it, and feeds `Mapper` readings; no server, broker or file."""

from __future__ import annotations

import logging
import tomllib
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from agent.flow.mapping import Mapper
from buffer.base import StoredRecord
from config.schema import AgentConfig
from connectors.base import Reading
from events.ids import parse_traceparent, traceparent
from events.models import Event
from events.wire import AgentIdentity, encode_body, expand_body, validate_envelope
from tests.unit.test_mapping_derived import HEAD, envelope, feed_for, signal

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
MES_PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MES_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def webhook_config(routes: str) -> AgentConfig:
    return AgentConfig.model_validate(tomllib.loads(f"""{HEAD}
[[sources]]
name = "mes"
type = "mes-http"
auth = "none"
{routes}
"""))


ROUTES = """
  [[sources.routes]]
  path = "/released"
  event = "workorder.released"
  asset = "line1"
    [sources.routes.columns]
    order = { column = "order" }
    product = { column = "product", required = false }

  [[sources.routes]]
  path = "/consumed"
  event = "material.consumed"
  asset = "line1"
    [sources.routes.columns]
    material = { column = "material" }
    lot = { column = "lot", required = false }
    order = { column = "order", required = false }
    quantity = { column = "qty", type = "float", unit = "kg" }

  [[sources.routes]]
  path = "/holds"
  event = "quality.hold"
  asset = "line1"
    [sources.routes.columns]
    lot = { column = "lot" }
    phase = { value = "placed" }
    reason = { value = "QA" }

  [[sources.routes]]
  path = "/adjusted"
  event = "inventory.adjusted"
  asset = "warehouse"
    [sources.routes.columns]
    material = { column = "material" }
    lot = { column = "lot", required = false }
    location = { value = "WH-1" }
    delta = { column = "delta", type = "float", unit = "kg" }
    reason = { value = "COUNT" }

  [[sources.routes]]
  path = "/completed"
  event = "workorder.completed"
  asset = "line1"
  correlate_by = "product"
    [sources.routes.columns]
    order = { column = "order" }
    product = { column = "product", required = false }
    good = { column = "good", type = "float", unit = "1" }

  [[sources.routes]]
  path = "/untied"
  event = "workorder.released"
  asset = "line1"
  correlate_by = "none"
    [sources.routes.columns]
    order = { column = "order" }
"""


def record(
    path: str, n: int, *, trace: tuple[tuple[str, str], ...] = (), **fields: object
) -> Reading:
    """The reading the webhook makes of one posted object on `path` (`attributes`: its
    fields as the route's columns read them, constants included)."""
    return Reading(
        "mes", path, f"key:post-{n}:0", T0 + timedelta(seconds=n),
        attributes=tuple(fields.items()), trace=trace,  # type: ignore[arg-type]
    )


def one(mapper: Mapper, reading: Reading) -> Event:
    events, rejected = mapper.map_all([reading])
    assert not rejected, rejected
    [event] = events
    validate_envelope({**envelope(event), "seq": 1})
    return event


# --- correlationid ---------------------------------------------------------------------------


def test_a_work_orders_release_consumption_and_completion_carry_its_order() -> None:
    mapper = Mapper.from_config(webhook_config(ROUTES))
    released = one(mapper, record("/released", 1, order="WO-1", product="P-1"))
    consumed = one(mapper, record("/consumed", 2, material="M-1", lot="L-7", order="WO-1",
                                  quantity=2.5, unit="kg"))
    assert released.extensions["correlationid"] == "order:WO-1"
    assert consumed.extensions["correlationid"] == "order:WO-1"
    # Without an order, a consumption belongs to its lot; a hold names a lot, never an order.
    loose = one(mapper, record("/consumed", 3, material="M-1", lot="L-7", quantity=1.0,
                               unit="kg"))
    hold = one(mapper, record("/holds", 4, lot="L-7", phase="placed", reason="QA"))
    assert loose.extensions["correlationid"] == "lot:L-7"
    assert hold.extensions["correlationid"] == "lot:L-7"
    # An inventory adjustment: its lot, else its material.
    of_lot = one(mapper, record("/adjusted", 5, material="M-1", lot="L-7", location="WH-1",
                                delta=-1.0, unit="kg", reason="COUNT"))
    of_material = one(mapper, record("/adjusted", 6, material="M-1", location="WH-1",
                                     delta=3.0, unit="kg", reason="COUNT"))
    assert of_lot.extensions["correlationid"] == "lot:L-7"
    assert of_material.extensions["correlationid"] == "material:M-1"


def test_correlate_by_chooses_the_field_or_switches_it_off() -> None:
    mapper = Mapper.from_config(webhook_config(ROUTES))
    completed = one(mapper, record("/completed", 1, order="WO-1", product="P-1", good=5.0,
                                   unit="1"))
    assert completed.extensions["correlationid"] == "product:P-1"
    # The chosen field empty in a record: no correlationid (never another field's).
    bare = one(mapper, record("/completed", 2, order="WO-2", good=5.0, unit="1"))
    assert "correlationid" not in bare.extensions
    untied = one(mapper, record("/untied", 3, order="WO-3"))
    assert "correlationid" not in untied.extensions


@pytest.mark.parametrize(("source", "where"), [
    ('type = "mes-http"\nauth = "none"\n[[sources.routes]]\npath = "/r"\n'
     'event = "workorder.released"\nasset = "line1"\ncorrelate_by = "lot"\n'
     '[sources.routes.columns]\norder = { column = "o" }\n', "routes"),
    ('type = "mes-files"\nfolder = "/tmp/in"\nevent = "workorder.released"\nasset = "line1"\n'
     'correlate_by = "lot"\n[sources.columns]\norder = { column = "o" }\n', "sources"),
])
def test_correlate_by_must_name_a_text_field_of_the_event_type(source: str, where: str) -> None:
    text = f'{HEAD}\n[[sources]]\nname = "mes"\n{source}'
    with pytest.raises(ValidationError) as raised:
        AgentConfig.model_validate(tomllib.loads(text))
    message = str(raised.value)
    assert "correlate_by = 'lot': workorder.released has no text field 'lot'" in message
    assert "its fields: order, product" in message and '"none"' in message


def test_signal_events_carry_the_order_of_their_asset_and_a_completion_its_own() -> None:
    feed = feed_for(
        "",
        signal("Order", asset="line1", name="order", context="workorder"),
        signal("Temp", event="telemetry", asset="line1/filler", unit="Cel"),
        signal("Done", event="workorder.completed", asset="line1", name="done",
               workorder='{ order = "batch" }'),
        signal("Batch", asset="line1", name="batch"),
    )
    [before] = feed("Temp", 20.0)
    assert "correlationid" not in before.extensions
    feed("Order", "WO-7")
    [during] = feed("Temp", 21.0)
    assert during.extensions["correlationid"] == "order:WO-7"
    feed("Batch", "B-42")
    feed("Done", False)
    [completed] = feed("Done", True)
    assert completed.extensions["correlationid"] == "order:B-42"  # its own order wins
    assert envelope(completed)["correlationid"] == "order:B-42"


# --- causationid -----------------------------------------------------------------------------


def test_an_alert_is_caused_by_the_telemetry_event_it_crossed_on() -> None:
    feed = feed_for("", signal("Temp", event="telemetry", asset="r1", unit="Cel",
                               trigger="{ above = 90.0, hysteresis = 2.0 }"))
    [telemetry] = feed("Temp", 80.0)
    assert "causationid" not in telemetry.extensions
    telemetry, alert = feed("Temp", 95.0)
    assert alert.type.name == "quality.alert.v1"
    assert alert.extensions["causationid"] == telemetry.id
    telemetry, end = feed("Temp", 85.0)
    assert end.extensions["causationid"] == telemetry.id
    assert envelope(end)["causationid"] == telemetry.id


def test_a_completion_is_caused_by_the_count_it_reports() -> None:
    feed = feed_for(
        "",
        signal("Done", event="workorder.completed", asset="r1", name="done",
               workorder='{ order = "batch", good = "good", scrap = "scrap" }'),
        signal("Batch", asset="r1", name="batch"),
        signal("Good", event="production.count", asset="r1", name="good"),
        signal("Scrap", asset="r1", name="scrap"),  # a plain sibling: no event of its own
    )
    feed("Batch", "B-1")
    feed("Scrap", 2)
    [first] = feed("Done", True)  # no count read yet: nothing it was derived from
    assert "causationid" not in first.extensions and first.data["good"] is None
    feed("Done", False)
    feed("Good", 10)
    [count] = feed("Good", 12)
    [completed] = feed("Done", True)
    assert completed.data["good"] == 12
    assert completed.extensions["causationid"] == count.id


def test_a_completion_without_a_counted_good_takes_its_scrap_counts_event() -> None:
    feed = feed_for(
        "",
        signal("Done", event="workorder.completed", asset="r1", name="done",
               workorder='{ order = "batch", good = "good", scrap = "scrap" }'),
        signal("Batch", asset="r1", name="batch"),
        signal("Good", asset="r1", name="good"),
        signal("Scrap", event="production.count", asset="r1", name="scrap"),
    )
    feed("Batch", "B-1")
    feed("Good", 10)
    [scrap] = feed("Scrap", 1)
    [completed] = feed("Done", True)
    assert completed.extensions["causationid"] == scrap.id


# --- trace context ---------------------------------------------------------------------------


def test_a_valid_traceparent_makes_the_event_a_span_of_the_callers_trace() -> None:
    mapper = Mapper.from_config(webhook_config(ROUTES))
    trace = (("traceparent", MES_PARENT), ("tracestate", "mes=00f067aa0ba902b7,x=1"))
    event = one(mapper, record("/released", 1, trace=trace, order="WO-1"))
    stored = event.extensions["traceparent"]
    assert parse_traceparent(stored) == stored
    version, trace_id, span_id, flags = stored.split("-")
    assert (version, trace_id, flags) == ("00", MES_TRACE_ID, "01")
    assert span_id != "00f067aa0ba902b7"  # the agent's own span, not the MES's
    assert span_id == event.id.replace("-", "")[16:32]
    assert event.extensions["tracestate"] == "mes=00f067aa0ba902b7,x=1"
    # The same fact with the same header: the same span (ids are stable, so are spans).
    again = Mapper.from_config(webhook_config(ROUTES))
    repeat = one(again, record("/released", 1, trace=trace, order="WO-1"))
    assert repeat.extensions == event.extensions
    assert envelope(event)["traceparent"] == stored


def test_without_a_trace_header_nothing_is_stored() -> None:
    mapper = Mapper.from_config(webhook_config(ROUTES))
    event = one(mapper, record("/released", 1, order="WO-1"))
    assert "traceparent" not in event.extensions and "tracestate" not in event.extensions
    # A tracestate alone means nothing without its traceparent.
    alone = one(mapper, record("/released", 2, trace=(("tracestate", "a=b"),), order="WO-2"))
    assert "traceparent" not in alone.extensions and "tracestate" not in alone.extensions


@pytest.mark.parametrize("header", [
    "junk",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
    f"{MES_PARENT},{MES_PARENT}",  # sent twice (the webhook joins repeated headers)
])
def test_an_invalid_traceparent_is_ignored_counted_and_logged_once_per_route(
    header: str, caplog: pytest.LogCaptureFixture
) -> None:
    mapper = Mapper.from_config(webhook_config(ROUTES))
    trace = (("traceparent", header), ("tracestate", "a=b"))
    with caplog.at_level(logging.WARNING, logger="agent.flow.mapping"):
        first = one(mapper, record("/released", 1, trace=trace, order="WO-1"))
        second = one(mapper, record("/released", 2, trace=trace, order="WO-2"))
        one(mapper, record("/holds", 3, trace=trace, lot="L-1", phase="placed", reason="QA"))
    for event in (first, second):  # never refused; the publisher starts a trace of its own
        assert "traceparent" not in event.extensions and "tracestate" not in event.extensions
        assert event.extensions["correlationid"].startswith("order:")
    assert mapper.counters.trace_headers_invalid_total == {"mes/released": 2, "mes/holds": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # once per route
    assert "route /released" in warnings[0] and "invalid traceparent" in warnings[0]


def test_an_unusable_tracestate_is_dropped_and_the_traceparent_kept() -> None:
    mapper = Mapper.from_config(webhook_config(ROUTES))
    too_long = ",".join(f"k{n}=" + "v" * 20 for n in range(30))
    trace = (("traceparent", MES_PARENT), ("tracestate", too_long))
    event = one(mapper, record("/released", 1, trace=trace, order="WO-1"))
    assert event.extensions["traceparent"].split("-")[1] == MES_TRACE_ID
    assert "tracestate" not in event.extensions
    assert mapper.counters.trace_headers_invalid_total == {"mes/released": 1}


@pytest.mark.parametrize("product", ["traceparent", "«traceparent»"])
def test_a_data_value_that_looks_like_the_key_does_not_hide_the_trace(product: str) -> None:
    """The forwarder derives a `traceparent` for a stored event without one; a data value
    whose bytes are those of the key (msgpack `traceparent`) must not pass for a stored one."""
    mapper = Mapper.from_config(webhook_config(ROUTES))
    for n, trace in enumerate(((), (("traceparent", MES_PARENT),))):
        event = one(mapper, record("/released", n, trace=trace, order="WO-1", product=product))
        stored = StoredRecord(1, event.id, event.type.name, 0,
                              encode_body(event, site="plant-a", agent="edge-01"), 0.0)
        published = expand_body(stored, AgentIdentity(site="plant-a", agent="edge-01"))
        validate_envelope(published)
        expected = event.extensions.get("traceparent") or traceparent(event.id)
        assert published["traceparent"] == expected
        assert published["data"]["product"] == product
