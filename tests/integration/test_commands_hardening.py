"""Command hardening against a real broker (issue 13, items 10 and 11): the real agent runs in
the test's loop with a real asyncua plant, an independent paho client sends the requests, and
a second subscriber on `#` sees everything published.

- A Response Topic that would put a JSON answer into an event, status or command stream (of
  this agent or another, spelled with a missing or extra slash) gets no publish at all; the
  refusal is counted and logged once. A legitimate reply topic still gets its answer.
- A request whose numbers or nesting would raise deep in `json` or the verifier (a 5,000-digit
  integer, a timestamp too large for a float, infinity, NaN, deep nesting) is answered
  `malformed` with a short reason, counted, and logged once a minute, never with a traceback.
"""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from agent.demo.plant import FillingLinePlant
from testkit.broker import MosquittoBroker, Subscriber
from testkit.commands import Requester
from tests.integration.test_commands import running_agent, write_config

ROOT = "mfg/plant-a/edge-01"

# Each would land a JSON answer where consumers decode event batches or statuses.
BYPASSES = [
    f"{ROOT}/events",  # no trailing slash
    f"{ROOT}/events/",
    f"{ROOT}//events/x",  # an empty level
    f"/{ROOT}/events/telemetry",  # a leading empty level
    "mfg//plant-a/edge-01/events/telemetry",
    "mfg/plant-b/edge-02/events/telemetry",  # another agent's events
    "mfg/plant-b/edge-02/events",
    "mfg/plant-b/edge-02/status",  # another agent's status
    f"{ROOT}/status/",
    f"{ROOT}/status/detail",
    "mfg/plant-b/edge-02/cmd/reload",  # another agent's commands
    f"{ROOT}//cmd/ping",
]


def refusals(caplog: pytest.LogCaptureFixture, reason: str) -> list[logging.LogRecord]:
    return [
        record for record in caplog.records
        if record.name == "agent.link.commands" and f"refused ({reason})" in record.getMessage()
    ]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record for record in caplog.records
        if record.name == "agent.link.commands" and record.exc_info is not None
    ]


async def test_answers_never_land_in_an_event_status_or_command_stream(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.link.commands")
    legitimate = "ops/replies/console-1"  # outside every agent's streams
    with Subscriber(broker, "#") as everything, Requester(broker) as hub:
        await everything.wait_subscribed_async()
        async with running_agent(write_config(tmp_path, broker, plant)):
            for topic in BYPASSES:
                hub.send("ping", response_topic=topic)
            hub.send("ping", response_topic=legitimate)
            # The worker takes requests in order: once this answer is here, every request
            # above was handled (answered or refused).
            status = await hub.ask_async("status")
            await everything.wait_for_async(lambda m: m.topic == legitimate, timeout=15)

    published = {message.topic for message in everything.messages}
    landed = sorted(set(BYPASSES) & published)
    assert not landed, f"answers published on {landed}"
    json_in_streams = [
        message.topic for message in everything.messages
        if message.content_type == "application/json"
        and message.topic.split("/")[3:4] in (["events"], ["cmd"])
        and not message.topic.startswith(f"{ROOT}/cmd/")  # the requests themselves
    ]
    assert not json_in_streams, json_in_streams
    assert status["ok"] is True
    assert status["result"]["commands"]["refused_total"]["bad_response_topic"] == len(BYPASSES)
    assert len(refusals(caplog, "bad_response_topic")) == 1  # logged once, the rest counted
    assert not tracebacks(caplog)


def _signed_shape(ts: Any, **fields: Any) -> dict[str, Any]:
    """A request with every signature field present (so the verifier runs), unsigned bytes."""
    return {"args": {"source": "line1"}, "ts": ts, "nonce": "n" * 22, "key_id": "ops",
            "sig": base64.b64encode(bytes(64)).decode(), **fields}


async def test_hostile_numbers_and_nesting_are_refused_as_malformed(
    tmp_path: Path, broker: MosquittoBroker, plant: FillingLinePlant,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.link.commands")
    huge = "9" * 5_000
    nested = "[" * 600 + "]" * 600
    now = int(time.time())
    cases: list[tuple[str, bytes | dict[str, Any]]] = [
        ("status", f'{{"args": {{"n": {huge}}}}}'.encode()),  # int() digit limit in json
        ("ping", f'{{"ts": {huge}, "nonce": "x"}}'.encode()),
        ("resume", _signed_shape(10**400)),  # now - ts: OverflowError in the verifier
        ("resume", _signed_shape(10**30)),  # a 64-bit timestamp it is not
        ("status", b'{"args": {"n": 1e999}}'),  # infinity
        ("status", b'{"args": {"n": -1e999}}'),
        ("status", b'{"args": {"n": NaN}}'),
        ("status", b'{"args": {"n": Infinity}}'),
        ("resume", f'{{"args": {{"x": {nested}}}, "ts": {now}, "nonce": "{"n" * 22}", '
                   f'"key_id": "ops", "sig": "{"A" * 88}"}}'.encode()),  # deep, under json's limit
        ("status", b'{"args": {"x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}"),
        ("status", b"\xc3\x28 not UTF-8"),
    ]
    with Requester(broker) as hub:
        async with running_agent(write_config(tmp_path, broker, plant, "max_request_bytes = "
                                              "262144")):
            answers = [await hub.ask_async(command, payload) for command, payload in cases]
            oversize = await hub.ask_async("status", b"{}" + b" " * 300_000)
            status = (await hub.ask_async("status"))["result"]

    for (command, _payload), answer in zip(cases, answers, strict=True):
        assert answer["ok"] is False, (command, answer)
        assert answer["error"]["reason"] == "malformed", answer
        assert 0 < len(answer["error"]["message"]) <= 120, answer
    assert oversize["error"]["reason"] == "too_large", oversize  # answered, with the limit
    assert "262144 bytes" in oversize["error"]["message"]
    refused = status["commands"]["refused_total"]
    assert refused["malformed"] == len(cases), refused
    assert refused["too_large"] == 1, refused
    assert "internal_error" not in refused, refused
    assert len(refusals(caplog, "malformed")) == 1  # once a minute, the rest counted
    assert not tracebacks(caplog)
