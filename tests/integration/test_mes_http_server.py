"""The webhook HTTP layer on a real socket: a real `WebhookServer` on 127.0.0.1 (port 0), real
HTTP calls with aiohttp's client, and the test's own handler on the other side, which records
what reached it and answers with the outcome the test chose. Plus the settings' validation."""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from connectors.base import SourceConfigError
from connectors.mes_http.config import MesHttpSettings, RouteSettings
from connectors.mes_http.server import (
    Accepted,
    Busy,
    Conflict,
    Outcome,
    Rejected,
    TraceHeaders,
    WebhookServer,
)
from testkit.tls import cert_pem, issue, key_pem, make_ca

TOKEN = "s3cret-token-one"
ROUTE = "/mes/completions"

COLUMNS = {"order": {"column": "order"}}  # the record part (connectors.records)


def route(path: str) -> dict[str, object]:
    return {"path": path, "event": "e", "columns": COLUMNS}


@dataclass
class Call:
    route: str
    items: list[dict[str, Any]]
    key: str | None


@dataclass
class RecordingHandler:
    """The MES connector's stand-in: records each call and answers with `outcome`."""

    outcome: Outcome | Exception = field(default_factory=lambda: Accepted(ids=["e1"]))
    calls: list[Call] = field(default_factory=list)

    async def __call__(
        self, route: RouteSettings, items: list[dict[str, Any]], key: str | None,
        trace: TraceHeaders = (),
    ) -> Outcome:
        self.calls.append(Call(route.path, items, key))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def settings(tmp_path: Path, **overrides: Any) -> MesHttpSettings:
    tokens = tmp_path / "tokens"
    if not tokens.exists():
        tokens.write_text(f"# MES webhook tokens\n\n{TOKEN}\n")
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "tokens_file": tokens,
        "idempotency_field": "messageId",
        "routes": [{"path": ROUTE, "event": "workorder.completed", "columns": COLUMNS},
                   {"path": "/mes/inventory", "event": "inventory.adjusted", "columns": COLUMNS}],
    }
    return MesHttpSettings.model_validate(values | overrides)


@asynccontextmanager
async def serving(
    config: MesHttpSettings, handler: RecordingHandler, scheme: str = "http"
) -> AsyncIterator[str]:
    async with WebhookServer(config, handler) as server:
        yield f"{scheme}://127.0.0.1:{server.port}"


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def bearer(token: str = TOKEN, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


JSON = {"Content-Type": "application/json"}


async def post(
    client: aiohttp.ClientSession, url: str, body: str | bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    async with client.post(url, data=body, headers=headers) as response:
        return response.status, await response.json(), response


async def test_healthz_answers_without_auth(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    async with serving(settings(tmp_path), RecordingHandler()) as base:
        async with client.get(f"{base}/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}


async def test_bearer_token_missing_wrong_and_right(
    tmp_path: Path, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    handler = RecordingHandler()
    url = ""
    async with serving(settings(tmp_path), handler) as base:
        url = base + ROUTE
        with caplog.at_level(logging.INFO, logger="connectors.mes_http.server"):
            status, body, response = await post(client, url, '{"a": 1}', JSON)
            assert (status, response.headers["WWW-Authenticate"]) == (401, "Bearer")
            assert "Authorization" in body["error"]
            caplog.clear()
            status, body, response = await post(
                client, url, '{"a": 1}', bearer("not-the-token", **JSON)
            )
            assert status == 401 and body == {"error": "wrong bearer token"}
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            refusals = [r.getMessage() for r in caplog.records]
            assert len(refusals) == 1 and "401" in refusals[0] and ROUTE in refusals[0]
            assert "not-the-token" not in refusals[0]
            # A stranger does not learn which paths exist.
            status, _, _ = await post(client, base + "/nowhere", "{}", JSON)
            assert status == 401
        assert handler.calls == []
        status, body, _ = await post(client, url, '{"a": 1}', bearer(**JSON))
        assert (status, body) == (202, {"accepted": 1, "ids": ["e1"], "replayed": False})
        assert handler.calls == [Call(ROUTE, [{"a": 1}], None)]


async def test_tokens_file_rotation_without_restart(
    tmp_path: Path, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MES_TOKEN", "from-the-environment")
    config = settings(tmp_path, token_env="MES_TOKEN")
    async with serving(config, RecordingHandler()) as base:
        url = base + ROUTE
        assert (await post(client, url, "{}", bearer(**JSON)))[0] == 202
        assert (await post(client, url, "{}", bearer("from-the-environment", **JSON)))[0] == 202

        # Rotate the way an operator should: write a new file, rename it over the old one.
        staged = tmp_path / "tokens.new"
        staged.write_text("rotated-token\n")
        staged.replace(tmp_path / "tokens")
        assert (await post(client, url, "{}", bearer(**JSON)))[0] == 401
        assert (await post(client, url, "{}", bearer("rotated-token", **JSON)))[0] == 202

        # An unreadable file accepts none of its tokens; the environment's token still works.
        (tmp_path / "tokens").unlink()
        assert (await post(client, url, "{}", bearer("rotated-token", **JSON)))[0] == 401
        assert (await post(client, url, "{}", bearer("from-the-environment", **JSON)))[0] == 202


async def test_invalid_json_names_line_and_column(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    handler = RecordingHandler()
    async with serving(settings(tmp_path), handler) as base:
        body = '{\n  "order": "WO-1",\n  "good": \n}'
        status, answer, _ = await post(client, base + ROUTE, body, bearer(**JSON))
        assert status == 400
        assert "line 4 column 1" in answer["error"], answer
        status, answer, _ = await post(client, base + ROUTE, '{"good": NaN}', bearer(**JSON))
        assert status == 400 and "NaN" in answer["error"]
        status, answer, _ = await post(client, base + ROUTE, b'{"a": "\xff"}', bearer(**JSON))
        assert status == 400 and "UTF-8" in answer["error"]
    assert handler.calls == []


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ('[{"order": "WO-1"}, 42]', "item 1 of the array is a number"),
        ('[{"order": "WO-1"}, [1]]', "item 1 of the array is an array"),
        ('"just text"', "body is a string"),
        ("null", "body is null"),
        ("[]", "empty array"),
    ],
)
async def test_anything_but_objects_is_refused(
    tmp_path: Path, client: aiohttp.ClientSession, body: str, where: str
) -> None:
    handler = RecordingHandler()
    async with serving(settings(tmp_path), handler) as base:
        status, answer, _ = await post(client, base + ROUTE, body, bearer(**JSON))
    assert status == 400 and where in answer["error"], answer
    assert handler.calls == []


async def test_body_above_the_limit_is_413_with_json(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    handler = RecordingHandler()
    big = '{"blob": "' + "x" * 5000 + '"}'
    async with serving(settings(tmp_path, max_body_bytes=4096), handler) as base:
        status, answer, _ = await post(client, base + ROUTE, big, bearer(**JSON))
        assert status == 413 and "4096" in answer["error"]

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: caught while reading
            for _ in range(5):
                yield b" " * 1000
            yield b"{}"

        async with client.post(base + ROUTE, data=chunked(), headers=bearer(**JSON)) as response:
            assert response.status == 413
            assert "4096" in (await response.json())["error"]
        # Just below the limit passes.
        fits = '{"blob": "' + "x" * 4000 + '"}'
        assert (await post(client, base + ROUTE, fits, bearer(**JSON)))[0] == 202
    assert len(handler.calls) == 1


async def test_content_type_path_and_method(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    async with serving(settings(tmp_path), RecordingHandler()) as base:
        status, answer, _ = await post(
            client, base + ROUTE, "{}", bearer(**{"Content-Type": "text/plain"})
        )
        assert status == 415 and "application/json" in answer["error"]
        latin = {"Content-Type": "application/json; charset=latin-1"}
        status, answer, _ = await post(client, base + ROUTE, "{}", bearer(**latin))
        assert status == 415 and "latin-1" in answer["error"]
        status, answer, _ = await post(client, base + "/mes/unknown", "{}", bearer(**JSON))
        assert status == 404 and "/mes/unknown" in answer["error"]
        async with client.get(base + ROUTE, headers=bearer()) as response:
            assert response.status == 405
            assert response.headers["Allow"] == "POST"
            assert "GET" in (await response.json())["error"]


async def test_batch_array_and_idempotency_keys(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    handler = RecordingHandler(outcome=Accepted(ids=["e1", "e2", "e3"]))
    async with serving(settings(tmp_path), handler) as base:
        url = base + "/mes/inventory"
        batch = '[{"messageId": "m1"}, {"messageId": "m2"}, {"sku": "A"}]'
        status, answer, _ = await post(client, url, batch, bearer(**JSON))
        assert (status, answer["accepted"], answer["ids"]) == (202, 3, ["e1", "e2", "e3"])
        # The header wins; the payload field serves a single object or a batch of one.
        await post(client, url, '{"messageId": "m1"}', bearer(**{"Idempotency-Key": "h-1"}, **JSON))
        await post(client, url, '{"messageId": "m1"}', bearer(**JSON))
        await post(client, url, '[{"messageId": 17}]', bearer(**JSON))
        await post(client, url, '{"sku": "A"}', bearer(**JSON))
    assert [(call.route, len(call.items), call.key) for call in handler.calls] == [
        ("/mes/inventory", 3, None),
        ("/mes/inventory", 1, "h-1"),
        ("/mes/inventory", 1, "m1"),
        ("/mes/inventory", 1, "17"),
        ("/mes/inventory", 1, None),
    ]
    assert handler.calls[0].items[2] == {"sku": "A"}


@pytest.mark.parametrize(
    ("headers", "body", "where"),
    [
        ({"Idempotency-Key": "k" * 201}, "{}", "Idempotency-Key header"),
        ({"Idempotency-Key": "tab\there"}, "{}", "Idempotency-Key header"),
        ({}, '{"messageId": {"nested": 1}}', "'messageId' (the idempotency key) is an object"),
        ({}, '{"messageId": ""}', "'messageId' (the idempotency key) must be"),
    ],
)
async def test_bad_idempotency_key_is_400(
    tmp_path: Path, client: aiohttp.ClientSession, headers: dict[str, str], body: str,
    where: str,
) -> None:
    handler = RecordingHandler()
    async with serving(settings(tmp_path), handler) as base:
        status, answer, _ = await post(client, base + ROUTE, body, bearer(**headers, **JSON))
    assert status == 400 and where in answer["error"], answer
    assert handler.calls == []


@pytest.mark.parametrize(
    ("outcome", "status", "expected"),
    [
        (Accepted(ids=["e7"], replayed=True), 202,
         {"accepted": 1, "ids": ["e7"], "replayed": True}),
        (
            Rejected(errors=[{"index": 0, "field": "good", "message": "not an integer"}]),
            400,
            {
                "error": "1 error(s) in the payload; first: item 0, field 'good': not an integer",
                "errors": [{"index": 0, "field": "good", "message": "not an integer"}],
            },
        ),
        (Conflict("key k-1 was used with a different body"), 409,
         {"error": "key k-1 was used with a different body"}),
        (Busy("buffer full", retry_after_s=2.5), 503, {"error": "buffer full"}),
        (RuntimeError("bug in the mapping"), 500,
         {"error": "internal error in the agent (see its log); resend later"}),
    ],
)
async def test_each_outcome_maps_to_its_status_and_body(
    tmp_path: Path, client: aiohttp.ClientSession, outcome: Outcome | Exception, status: int,
    expected: dict[str, Any],
) -> None:
    async with serving(settings(tmp_path), RecordingHandler(outcome=outcome)) as base:
        got, answer, response = await post(
            client, base + ROUTE, '{"good": "x"}', bearer(**{"Idempotency-Key": "k-1"}, **JSON)
        )
    assert (got, answer) == (status, expected)
    if isinstance(outcome, Busy):
        assert response.headers["Retry-After"] == "3"


async def test_port_in_use_is_a_config_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = WebhookServer(settings(tmp_path, listen=f"127.0.0.1:{port}"), RecordingHandler())
        with pytest.raises(SourceConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            await server.start()


async def test_unusable_tokens_or_tls_files_are_config_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MES_TOKEN", raising=False)
    cases = {
        "MES_TOKEN holds no token": settings(tmp_path, tokens_file=None, token_env="MES_TOKEN"),
        "cannot read tokens_file": settings(tmp_path, tokens_file=tmp_path / "missing"),
        "cannot load TLS certificate": settings(
            tmp_path, tls_cert=tmp_path / "no.pem", tls_key=tmp_path / "no.key"
        ),
    }
    (tmp_path / "empty").write_text("# nothing yet\n")
    cases["holds no token"] = settings(tmp_path, tokens_file=tmp_path / "empty")
    for message, config in cases.items():
        with pytest.raises(SourceConfigError, match=message):
            await WebhookServer(config, RecordingHandler()).start()


async def test_https_with_a_certificate_made_in_the_test(tmp_path: Path) -> None:
    ca = make_ca("mes-http test CA")
    leaf = issue(ca, "127.0.0.1", server=True)
    (tmp_path / "ca.pem").write_text(cert_pem(ca))
    (tmp_path / "server.pem").write_text(cert_pem(leaf))
    (tmp_path / "server.key").write_text(key_pem(leaf))
    os.chmod(tmp_path / "server.key", 0o600)
    config = settings(tmp_path, tls_cert="server.pem", tls_key="server.key").with_base_dir(
        tmp_path
    )
    trusting = ssl.create_default_context(cafile=tmp_path / "ca.pem")
    handler = RecordingHandler()
    async with serving(config, handler, scheme="https") as base, aiohttp.ClientSession() as client:
        async with client.post(base + ROUTE, json={"a": 1}, headers=bearer(), ssl=trusting) as r:
            assert r.status == 202
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await client.post(base + ROUTE, json={"a": 1}, headers=bearer())  # system CAs only
        with pytest.raises(aiohttp.ClientError):
            await client.post(base.replace("https", "http") + ROUTE, json={}, headers=bearer())
    assert handler.calls == [Call(ROUTE, [{"a": 1}], None)]


# --- settings validation (pure) -------------------------------------------------------------


ROUTES = [{"path": ROUTE, "event": "workorder.completed", "columns": COLUMNS}]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"routes": ROUTES}, 'needs tokens_file and/or token_env'),
        ({"auth": "none", "token_env": "T", "routes": ROUTES}, "takes no tokens_file"),
        ({"token_env": "T", "routes": []}, "at least 1 item"),
        ({"token_env": "T", "listen": "8088", "routes": ROUTES}, "HOST:PORT"),
        ({"token_env": "T", "listen": "host:99999", "routes": ROUTES}, "HOST:PORT"),
        ({"token_env": "T", "listen": "bad host:80", "routes": ROUTES}, "not an IPv4"),
        ({"token_env": "T", "listen": "[nope]:80", "routes": ROUTES}, "not an IPv6"),
        ({"token_env": "1BAD", "routes": ROUTES}, "token_env"),
        ({"token_env": "T", "max_body_bytes": 100, "routes": ROUTES}, "max_body_bytes"),
        ({"token_env": "T", "max_body_bytes": 2**27, "routes": ROUTES}, "max_body_bytes"),
        ({"token_env": "T", "tls_cert": "c.pem", "routes": ROUTES}, "both or neither"),
        ({"token_env": "T", "commit_timeout_s": 0, "routes": ROUTES}, "commit_timeout_s"),
        ({"token_env": "T", "routes": [route("mes")]}, "routes.0.path"),
        ({"token_env": "T", "routes": [route("/a//b")]}, "routes.0.path"),
        ({"token_env": "T", "routes": [route("/healthz")]}, "health check"),
        ({"token_env": "T", "routes": ROUTES * 2}, "unique: /mes/completions"),
        ({"token_env": "T", "routes": [{**route("/a"), "x": 1}]}, "routes.0.x"),
        ({"token_env": "T", "routes": ROUTES, "port": 80}, "port"),
    ],
)
def test_settings_refuse_invalid_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MesHttpSettings.model_validate(values)


def test_settings_defaults_listen_and_base_dir() -> None:
    config = MesHttpSettings.model_validate(
        {"tokens_file": "tokens", "tls_cert": "/etc/tls/c.pem", "tls_key": "k.pem",
         "routes": ROUTES}
    )
    assert (config.host, config.port, config.max_body_bytes) == ("127.0.0.1", 8088, 2**20)
    based = config.with_base_dir(Path("/etc/edge-agent"))
    assert based.tokens_file == Path("/etc/edge-agent/tokens")
    assert based.tls_cert == Path("/etc/tls/c.pem")
    assert based.tls_key == Path("/etc/edge-agent/k.pem")
    assert MesHttpSettings.model_validate(
        {"listen": "[::1]:9000", "auth": "none", "routes": ROUTES}
    ).host == "::1"
