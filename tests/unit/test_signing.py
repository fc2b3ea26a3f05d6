"""Signed requests, the nonce cache, the [commands] config section, redaction, fleet flags."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from agent.cli.fleet import fleet_rows
from agent.link.commands import parse_request, redacted
from agent.link.signing import (
    NonceCache,
    Refused,
    RequestSigner,
    RequestVerifier,
    canonical_message,
    create_key_pair,
)
from config.schema import CommandsSection

TARGET = "plant-a/edge-01"


def pair(key_id: str = "ops") -> tuple[RequestSigner, bytes]:
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes_raw()
    return RequestSigner(key, key_id), raw


def verifier(keys: dict[str, bytes], *, cache: int = 100) -> RequestVerifier:
    return RequestVerifier(
        keys=keys, allow={"pause": {"ops"}}, target=TARGET, max_skew_s=30, nonce_cache_size=cache
    )


def test_canonical_message_is_sorted_compact_ascii_and_refuses_floats() -> None:
    message = canonical_message(
        command="pause", args={"source": "lïne", "b": [1, None]}, ts=5, nonce="n" * 16,
        key_id="ops", target=TARGET,
    )
    assert message == (
        b'edge-agent-command-v1\n{"args":{"b":[1,null],"source":"l\\u00efne"},'
        b'"command":"pause","key_id":"ops","nonce":"nnnnnnnnnnnnnnnn",'
        b'"target":"plant-a/edge-01","ts":5}'
    )
    with pytest.raises(Refused, match="float"):
        canonical_message(command="x", args={"v": 1.5}, ts=1, nonce="n" * 16, key_id="k",
                          target=TARGET)


def test_verify_accepts_once_and_names_each_refusal() -> None:
    ops, raw = pair()
    check = verifier({"ops": raw, "viewer": pair("viewer")[1]})
    request = ops.sign("pause", {"source": "line1"}, target=TARGET)
    assert check.verify("pause", request) == "ops"

    def reason(command: str, request: dict[str, Any], now: float | None = None) -> str:
        with pytest.raises(Refused) as refused:
            check.verify(command, request, now=now)
        return refused.value.reason

    assert reason("pause", request) == "replayed"
    assert reason("pause", {"args": {}}) == "unsigned"
    assert reason("pause", {"sig": "x"}) == "malformed"
    assert reason("pause", pair("nobody")[0].sign("pause", {}, target=TARGET)) == "unknown_key"
    assert reason("pause", pair("viewer")[0].sign("pause", {}, target=TARGET)) == "key_not_allowed"
    assert reason("reload", ops.sign("reload", {}, target=TARGET)) == "key_not_allowed"
    # One clock reading for signing and checking: `ts` is whole seconds (truncated), so a
    # request signed 31 s ahead can be only 30.01 s ahead, and any delay before the check
    # would bring it inside the ±30 s window.
    now = time.time()
    assert reason("pause", ops.sign("pause", {}, target=TARGET, now=now - 31), now) == "stale"
    assert reason("pause", ops.sign("pause", {}, target=TARGET, now=now + 31), now) == "stale"
    assert check.verify("pause", ops.sign("pause", {}, target=TARGET, now=now + 29), now=now)
    assert reason("pause", ops.sign("pause", {}, target="plant-b/edge-01")) == "bad_signature"
    signed = ops.sign("pause", {"source": "a"}, target=TARGET)
    assert reason("pause", {**signed, "args": {"source": "b"}}) == "bad_signature"
    assert reason("pause", {**signed, "sig": "%%%"}) == "malformed"
    assert reason("pause", {**signed, "ts": "now"}) == "malformed"
    assert reason("pause", {**signed, "ts": True}) == "malformed"
    assert reason("pause", {**signed, "nonce": "short"}) == "malformed"
    assert reason("pause", {**signed, "args": [1]}) == "malformed"


def test_nonce_cache_is_bounded_and_forgets_only_stale_nonces() -> None:
    cache = NonceCache(max_size=2, window_s=10)
    cache.add("a" * 16, ts=100, now=100)
    cache.add("b" * 16, ts=100, now=100)
    with pytest.raises(Refused) as busy:
        cache.add("c" * 16, ts=100, now=105)
    assert busy.value.reason == "busy"
    cache.add("c" * 16, ts=111, now=111)  # a and b expired at 110
    assert len(cache) == 1 and "a" * 16 not in cache


def test_unsigned_garbage_cannot_fill_the_nonce_cache() -> None:
    ops, raw = pair()
    check = verifier({"ops": raw}, cache=16)
    for index in range(50):
        forged = {**ops.sign("pause", {}, target=TARGET), "sig": base64.b64encode(b"x" * 64)
                  .decode()}
        forged["nonce"] = f"{index:016d}"
        with pytest.raises(Refused):
            check.verify("pause", forged)
    assert len(check.nonces) == 0


def test_parse_request_refuses_garbage_with_what_was_wrong() -> None:
    assert parse_request(b"") == {}
    for payload, words in [
        (b"\xff", "not UTF-8"),
        (b"{", "not JSON"),
        (b"[" * 5000, "nested too deeply"),
        (b"[]", "an array"),
        (b'{"args": "x"}', "args must be a JSON object"),
        (b'{"hack": 1}', "unknown field"),
    ]:
        with pytest.raises(Refused, match=words):
            parse_request(payload)


def test_create_key_pair_files_and_the_config_forms(tmp_path: Path) -> None:
    private, public, raw = create_key_pair(tmp_path / "keys", "ops")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    signer = RequestSigner.from_file(private)
    assert signer.key_id == "ops"
    section = CommandsSection(keys={"ops": f"ed25519:{raw}"}, allow={"pause": ["ops"]})
    assert section.allow["pause"] == ["ops"]
    with pytest.raises(FileExistsError):
        create_key_pair(tmp_path / "keys", "ops")
    with pytest.raises(ValidationError, match="32 bytes"):
        CommandsSection(keys={"ops": "ed25519:AAAA"})
    with pytest.raises(ValidationError, match="unknown key"):
        CommandsSection(keys={}, allow={"pause": ["ghost"]})
    with pytest.raises(ValidationError):
        # A command that does not exist, on purpose.
        CommandsSection(allow={"format-disk": []})  # type: ignore[dict-item]
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_config_answer_redacts_secrets() -> None:
    document = {
        "hub": {"url": "mqtts://user:hunter2@hub:8883", "password": "credential:mqtt",
                "client_id": "a"},
        "sources": [{"token": "abc", "name": "line1"}],
    }
    clean = redacted(document)
    assert clean["hub"]["password"] == "***" and clean["sources"][0]["token"] == "***"
    assert clean["hub"]["url"] == "mqtts://user:***@hub:8883"
    assert clean["hub"]["client_id"] == "a" and clean["sources"][0]["name"] == "line1"


def test_fleet_flags_stale_behind_and_offline() -> None:
    now = 1_000_000.0
    from datetime import UTC, datetime

    def at(seconds_ago: float) -> str:
        return datetime.fromtimestamp(now - seconds_ago, UTC).isoformat()

    def online(seconds_ago: float, oldest: float | None) -> dict[str, Any]:
        return {
            "state": "online", "at": at(seconds_ago), "interval_s": 30,
            "sources": {"line1": {"connected": True, "state": "running"}},
            "buffer": {"classes": {"telemetry": {"pending": 3}}, "oldest_pending_age_s": oldest},
            "forwarder": {"connected": True, "last_puback_at": at(1)},
        }

    rows = {row["agent"]: row for row in fleet_rows({
        "a/fresh": online(5, None),
        "a/stale": online(200, None),
        "a/behind": online(5, 900.0),
        "a/gone": {"state": "offline", "reason": "connection lost", "at": at(50)},
    }, behind_s=300, now=now)}
    assert rows["a/fresh"]["flags"] == []
    assert rows["a/stale"]["flags"] == ["STALE"]
    assert rows["a/behind"]["flags"] == ["BEHIND"]
    assert rows["a/gone"]["flags"] == ["OFFLINE"]
    assert rows["a/fresh"]["backlog"] == {"telemetry": 3}


def test_check_config_names_a_bad_key_file(tmp_path: Path) -> None:
    from config.loader import ConfigError, load_config

    _, public, _ = create_key_pair(tmp_path / "keys", "ops")
    (tmp_path / "keys" / "wrong.pem").write_text("not a key")
    text = f"""
[agent]
site = "plant-a"
id = "edge-01"

[hub]
url = "mqtt://127.0.0.1:1883"

[commands.keys]
ops = "keys/{public.name}"
broken = "keys/wrong.pem"
private = "keys/ops.key.pem"

[[sources]]
name = "line1"
type = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"

  [[sources.signals]]
  node = "ns=2;s=A"
  event = "telemetry"
  asset = "line1/filler"
"""
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    problems = {problem.key: problem for problem in error.value.problems}
    assert set(problems) == {"commands.keys.broken", "commands.keys.private"}
    assert problems["commands.keys.broken"].line == 11
    assert "not a PEM public key" in problems["commands.keys.broken"].message
    assert "private key" in problems["commands.keys.private"].message
    path.write_text(text.replace('broken = "keys/wrong.pem"\n', "").replace(
        'private = "keys/ops.key.pem"\n', ""))
    config = load_config(path)
    assert config.commands.keys["ops"] == str(tmp_path / "keys" / public.name)
