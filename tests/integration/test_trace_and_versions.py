"""Trace, correlation and dual publish through the real agent (in process): a real webhook
source, real HTTP posts, the real SQLite buffer and forwarder, and a real mosquitto. The hub's
side reads the events with the official CloudEvents SDK (structured mode) or the testkit
decoder, never with the agent's own state.

- A post's `traceparent` (and `tracestate`) reaches the hub on every event the post produced;
  a post without one, or with an invalid one, is taken all the same and its events carry a
  trace rooted at themselves.
- The events of one work order carry `order:<order>` as their `correlationid`.
- While `[contracts] dual_publish_until` names a future moment, a consumer of the
  `workorder.completed.v1` (or `.v2`) topic receives the v1 (v2) copy of every v3 completion;
  with a moment that has passed (no sleeping across it), none is made; the retained status
  says which."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cloudevents.core.formats.json import JSONFormat

from agent.cli import main
from agent.link.status import snapshot
from agent.service.daemon import AgentService
from config.loader import load_config
from testkit.broker import MosquittoBroker, ReceivedMessage, Subscriber, free_loopback_port
from testkit.durability import agent_header
from testkit.events import EVENTS_TOPIC, accepted_in_buffer, decode_events, unique_by_id
from testkit.mes_http import TOKEN
from tests.integration.test_first_path import running_agent, until

MES_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
MES_SPAN = "00f067aa0ba902b7"
MES_PARENT = f"00-{MES_TRACE_ID}-{MES_SPAN}-01"
MES_STATE = "mes=00f067aa0ba902b7,vendor=x"
V1_TOPIC = "mfg/plant-a/edge-01/events/workorder.completed.v1"
V2_TOPIC = "mfg/plant-a/edge-01/events/workorder.completed.v2"
BOTH_WINDOWS = (
    'dual_publish_until = { "workorder.completed.v2" = 2999-01-01T00:00:00Z, '
    '"workorder.completed.v1" = 2999-01-01T00:00:00Z }'
)
STATUS_TOPIC = "mfg/plant-a/edge-01/status"


def write_config(tmp_path: Path, hub_url: str, *, contracts: str = "",
                 hub_format: str = "") -> tuple[Path, str]:
    """A webhook with three routes of one work order's life (release, consumption,
    completion in pieces, so that it has a v1) and an inventory route; `contracts` is the
    `[contracts]` table's body."""
    tokens, port = tmp_path / "tokens", free_loopback_port()
    tokens.write_text(f"{TOKEN}\n")
    config = tmp_path / "agent.toml"
    config.write_text(
        agent_header(hub_url=hub_url, state_dir=tmp_path / "state", extra_hub=hub_format)
        + f"""
[contracts]
{contracts}

[[sources]]
name = "mes"
type = "mes-http"
listen = "127.0.0.1:{port}"
tokens_file = "{tokens}"

  [[sources.routes]]
  path = "/released"
  event = "workorder.released"
  asset = "line1"
    [sources.routes.columns]
    order = {{ column = "order" }}
    product = {{ column = "product", required = false }}

  [[sources.routes]]
  path = "/consumed"
  event = "material.consumed"
  asset = "line1"
    [sources.routes.columns]
    material = {{ column = "material" }}
    lot = {{ column = "lot", required = false }}
    order = {{ column = "order", required = false }}
    quantity = {{ column = "qty", type = "float", unit = "kg" }}

  [[sources.routes]]
  path = "/completed"
  event = "workorder.completed"
  asset = "line1"
    [sources.routes.columns]
    order = {{ column = "order" }}
    good = {{ column = "good", type = "float", unit = "1" }}
    scrap = {{ column = "scrap", type = "float", required = false }}

  [[sources.routes]]
  path = "/adjusted"
  event = "inventory.adjusted"
  asset = "warehouse"
    [sources.routes.columns]
    material = {{ column = "material" }}
    lot = {{ column = "lot", required = false }}
    location = {{ value = "WH-1" }}
    delta = {{ column = "delta", type = "float", unit = "kg" }}
    reason = {{ value = "COUNT" }}
"""
    )
    return config, f"http://127.0.0.1:{port}"


async def post(url: str, body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """POST `body`; the 202 answer's body (anything else fails the test)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, json=body, headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})}
        ) as response:
            answer: dict[str, Any] = await response.json()
            assert response.status == 202, answer
            return answer


def sdk_events(messages: list[ReceivedMessage]) -> dict[str, Any]:
    """id -> the event as the official SDK reads a structured-mode message (one event each)."""
    read = JSONFormat().read
    events: dict[str, Any] = {}
    for message in messages:
        if "/events/" in message.topic:
            assert message.content_type == "application/cloudevents+json", message.topic
            event = read(None, message.payload)
            events[event.get_id()] = event
    return events


async def test_a_webhook_requests_trace_and_its_orders_correlation_reach_the_hub(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config, base = write_config(tmp_path, broker.url,
                                hub_format='format = "cloudevents-structured"')
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config):
            traced = {"traceparent": MES_PARENT, "tracestate": MES_STATE}
            # One request, two events of work order WO-1: both in the MES's trace.
            released = await post(f"{base}/released", [
                {"order": "WO-1", "product": "P-1"},
                {"order": "WO-2", "product": "P-1"},
            ], traced)
            consumed = await post(f"{base}/consumed",
                                  {"material": "M-1", "lot": "L-7", "order": "WO-1", "qty": 2.5})
            # Invalid trace headers never refuse a post (`post` asserts the 202).
            invalid = await post(f"{base}/completed", {"order": "WO-1", "good": 12},
                                 {"traceparent": "00-not-a-trace-01", "tracestate": "a=b"})
            adjusted = await post(f"{base}/adjusted",
                                  {"material": "M-1", "lot": "L-7", "delta": -1.0})
            ids = released["ids"] + consumed["ids"] + invalid["ids"] + adjusted["ids"]
            await until(lambda: set(ids) <= set(sdk_events(subscriber.messages)),
                        "every posted event at the hub")
    events = sdk_events(subscriber.messages)
    for event_id in released["ids"]:
        event = events[event_id]
        version, trace_id, span_id, flags = event.get_extension("traceparent").split("-")
        # The MES's trace; the span is the agent's own (docs: "a child of the caller's span").
        assert (version, trace_id, flags) == ("00", MES_TRACE_ID, "01")
        assert span_id != MES_SPAN
        assert event.get_extension("tracestate") == MES_STATE
    # Two events of one request: two spans of one trace.
    assert len({events[i].get_extension("traceparent") for i in released["ids"]}) == 2
    for event_id in consumed["ids"] + invalid["ids"] + adjusted["ids"]:
        # No (valid) trace came with the fact: a trace rooted at the event, from its id.
        trace_id = events[event_id].get_extension("traceparent").split("-")[1]
        assert trace_id == event_id.replace("-", ""), event_id
        assert events[event_id].get_extension("tracestate") is None
    # The business object: one work order's release, consumption and completion.
    correlation = {event_id: events[event_id].get_extension("correlationid") for event_id in ids}
    assert [correlation[i] for i in released["ids"]] == ["order:WO-1", "order:WO-2"]
    assert correlation[consumed["ids"][0]] == "order:WO-1"
    assert correlation[invalid["ids"][0]] == "order:WO-1"
    assert correlation[adjusted["ids"][0]] == "lot:L-7"


def status_document(subscriber: Subscriber) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(subscriber.messages[-1].payload)
    return document


async def test_a_retired_version_is_published_beside_its_successor_for_the_window(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config, base = write_config(tmp_path, broker.url, contracts=BOTH_WINDOWS)
    with (
        Subscriber(broker, V1_TOPIC) as v1_consumer,
        Subscriber(broker, V2_TOPIC) as v2_consumer,
        Subscriber(broker, STATUS_TOPIC) as status,
    ):
        async with running_agent(config) as agent:
            pieces = await post(f"{base}/completed", [
                {"order": "WO-1", "good": 12, "scrap": 1},
                {"order": "WO-2", "good": 7},
            ])
            # A fraction of a piece has no v1 (which counts whole pieces): not copied, counted.
            part = await post(f"{base}/completed", {"order": "WO-3", "good": 2.5})
            await until(lambda: len(unique_by_id(decode_events(v1_consumer.messages))) >= 2,
                        "2 v1 copies on the v1 topic")
            await until(lambda: len(unique_by_id(decode_events(v2_consumer.messages))) >= 3,
                        "3 v2 copies on the v2 topic")
            await until(lambda: agent.forwarder.counters.events_forwarded_total >= 8,
                        "the 3 v3 events, the 3 v2 and the 2 v1 copies forwarded")
            await until(lambda: bool(status.messages), "the retained status")
            retained = status_document(status)
            # The counts as the `status` command answers them (the retained one is from the
            # connect, before the posts).
            answered = await snapshot(agent)
    copies = list(unique_by_id(decode_events(v1_consumer.messages)).values())
    assert [copy["type"] for copy in copies] == ["workorder.completed.v1"] * 2
    by_cause = {copy["causationid"]: copy for copy in copies}
    assert set(by_cause) == set(pieces["ids"])  # each copy names the v3 event it was made from
    first = by_cause[pieces["ids"][0]]
    assert first["data"] == {"signal": "/completed", "order": "WO-1", "product": None,
                             "good": 12, "scrap": 1}
    assert first["correlationid"] == "order:WO-1"
    assert first["id"] not in pieces["ids"] and part["ids"][0] not in by_cause
    # v2 says quantities in a unit: every completion has a v2 copy, made from its v3 event.
    v2_copies = {c["causationid"]: c for c in unique_by_id(decode_events(v2_consumer.messages))
                 .values()}
    assert set(v2_copies) == {*pieces["ids"], *part["ids"]}
    assert all(c["type"] == "workorder.completed.v2" for c in v2_copies.values())
    assert v2_copies[pieces["ids"][0]]["data"] == {
        "signal": "/completed", "order": "WO-1", "product": None, "good": 12.0, "scrap": 1.0,
        "unit": "1",
    }
    types = retained["event_types"]
    assert types["publishes"]["workorder.completed"] == [
        "workorder.completed.v3", "workorder.completed.v2", "workorder.completed.v1"
    ]
    window = types["dual_publish"]["workorder.completed.v1"]
    assert window["open"] is True and window["until"] == "2999-01-01T00:00:00Z"
    assert window["beside"] == "workorder.completed.v3"
    counted = answered["event_types"]["dual_publish"]["workorder.completed.v1"]
    assert (counted["copies_total"], counted["skipped_total"]) == (2, 1)
    counted = answered["event_types"]["dual_publish"]["workorder.completed.v2"]
    assert (counted["copies_total"], counted["skipped_total"]) == (3, 0)


async def test_after_the_window_no_copy_is_made(tmp_path: Path, broker: MosquittoBroker) -> None:
    config, base = write_config(
        tmp_path, broker.url,
        contracts='dual_publish_until = { "workorder.completed.v1" = 2020-01-01T00:00:00Z }',
    )
    with (
        Subscriber(broker, EVENTS_TOPIC) as hub,
        Subscriber(broker, STATUS_TOPIC) as status,
    ):
        async with running_agent(config) as agent:
            pieces = await post(f"{base}/completed", [{"order": "WO-1", "good": 12}])
            await until(lambda: pieces["ids"][0] in unique_by_id(decode_events(hub.messages)),
                        "the v3 completion at the hub")
            await until(lambda: bool(status.messages), "the retained status")
            retained = status_document(status)
            stats = await agent.buffer.stats()
    # Everything the agent ever accepted is in its buffer, all of it delivered: no v1 copy was
    # made, so none can reach the hub, now or later.
    held = accepted_in_buffer(tmp_path / "state" / "buffer.sqlite")
    assert set(held) == set(pieces["ids"]) and stats.pending == 0
    assert {event["type"] for event in decode_events(hub.messages)} == {"workorder.completed.v3"}
    types = retained["event_types"]
    assert types["publishes"]["workorder.completed"] == ["workorder.completed.v3"]
    assert types["dual_publish"]["workorder.completed.v1"] == {
        "beside": "workorder.completed.v3", "until": "2020-01-01T00:00:00Z", "open": False,
        "copies_total": 0, "skipped_total": 0,
    }


async def test_edge_agent_status_shows_the_window_from_the_state_dir(
    tmp_path: Path, broker: MosquittoBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    """The service as systemd runs it (in process): its `status.json` says which versions it
    published, and `edge-agent status` prints each window."""
    config, base = write_config(
        tmp_path, broker.url,
        contracts='dual_publish_until = { "workorder.completed.v1" = 2999-01-01T00:00:00Z }',
    )
    service, stop = AgentService(load_config(config), config), asyncio.Event()
    with Subscriber(broker, V1_TOPIC) as v1_consumer:
        running = asyncio.create_task(service.run(stop))
        try:
            await until(lambda: (tmp_path / "state" / "status.json").exists(), "status.json")
            await post(f"{base}/completed", {"order": "WO-1", "good": 3})
            await until(lambda: bool(decode_events(v1_consumer.messages)), "the v1 copy")
        finally:
            stop.set()
            await asyncio.wait_for(running, timeout=30)
    assert main(["status", "-c", str(config)]) == 3  # stopped
    assert (
        "  dual publish workorder.completed.v1 beside workorder.completed.v3: publishing, "
        "until 2999-01-01T00:00:00Z (1 copies, 0 not convertible)"
    ) in capsys.readouterr().out
