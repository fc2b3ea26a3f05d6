"""The command parse boundary and the Response Topic rule as pure functions (issue 13, items 10
and 11); `tests/integration/test_commands_hardening.py` runs the same cases through a real
broker. Here also what a broker would not even carry (wildcards in a Response Topic)."""

from __future__ import annotations

import base64
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.link.commands import parse_request, response_topic_problem
from agent.link.signing import Refused, RequestVerifier


@pytest.mark.parametrize("topic", [
    "mfg/plant-a/edge-01/events", "mfg/plant-a/edge-01/events/", "mfg/plant-a/edge-01//events/x",
    "/mfg/plant-a/edge-01/events/telemetry", "mfg//plant-a//edge-01/events",
    "mfg/plant-b/edge-02/events/telemetry.v1", "mfg/plant-b/edge-02/status",
    "mfg/plant-b/edge-02/status/x", "mfg/plant-b/edge-02/cmd", "mfg/plant-b/edge-02/cmd/ping",
    "mfg/a/b/+", "mfg/#", "+/x", "$SYS/broker", "/$share/hub/x", "///", "", "x" * 513, "a\x00b",
])
def test_a_response_topic_in_a_stream_or_unsafe_is_refused(topic: str) -> None:
    assert response_topic_problem(topic, "mfg") is not None


@pytest.mark.parametrize("topic", [
    "mfg/plant-a/edge-01/reply/4f1c", "ops/replies/console-1", "mfg/plant-a/edge-01",
    "MFG/plant-a/edge-01/events",  # another topic: MQTT compares case exactly
    "mfg/plant-a/edge-01/Events", "mfg/plant-a/edge-01/events.x", "other/plant-a/edge-01/events",
])
def test_a_reply_topic_outside_every_stream_is_allowed(topic: str) -> None:
    assert response_topic_problem(topic, "mfg") is None


def test_a_multi_level_prefix_is_compared_level_by_level() -> None:
    assert response_topic_problem("acme/mfg/site/agent/events", "acme/mfg") is not None
    assert response_topic_problem("acme//mfg/site/agent/status", "acme/mfg") is not None
    assert response_topic_problem("acme/site/agent/events", "acme/mfg") is None


@pytest.mark.parametrize("payload", [
    b'{"args": {"n": ' + b"9" * 5_000 + b"}}",
    b'{"ts": ' + b"1" * 41 + b"}",
    b'{"args": {"n": -' + b"9" * 41 + b"}}",
    b'{"args": {"n": 1e999}}',
    b'{"args": {"n": NaN}}',
    b'{"args": {"n": -Infinity}}',
    b'{"args": {"x": ' + b"[" * 40 + b"]" * 40 + b"}}",
    b'{"args": {"x": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}}",
    b"[" * 100_000,
    b"\xff\xfe",
])
def test_a_hostile_payload_is_malformed_with_a_short_reason(payload: bytes) -> None:
    with pytest.raises(Refused) as refused:
        parse_request(payload)
    assert refused.value.reason == "malformed"
    assert 0 < len(refused.value.message) <= 120


def test_ordinary_requests_still_parse() -> None:
    assert parse_request(b"") == {}
    assert parse_request(b'{"args": {"since": "2026-01-31T08:00Z", "types": ["telemetry"]}}')
    signed = parse_request(b'{"args": {"a": [[1]]}, "ts": 1767225600, "nonce": "n"}')
    assert signed["ts"] == 1767225600 and signed["args"] == {"a": [[1]]}
    assert parse_request(b'{"args": {"n": -1.5e10, "m": ' + b"9" * 40 + b"}}")["args"]["n"] < 0


@pytest.mark.parametrize("ts", [10**400, -(10**400), 2**63, -(2**63) - 1])
def test_a_timestamp_beyond_64_bits_is_malformed_not_an_overflow(ts: int) -> None:
    public = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    verifier = RequestVerifier(
        keys={"ops": public}, allow={"resume": {"ops"}}, target="plant-a/edge-01",
        max_skew_s=60, nonce_cache_size=16,
    )
    request = {"args": {}, "ts": ts, "nonce": "n" * 22, "key_id": "ops",
               "sig": base64.b64encode(bytes(64)).decode()}
    with pytest.raises(Refused) as refused:
        verifier.verify("resume", request, now=time.time())
    assert refused.value.reason == "malformed", refused.value
