"""The webhook's connection limits on real loopback sockets: a real `WebhookServer` on
127.0.0.1 (port 0), clients that misbehave byte by byte over asyncio streams, and the test's
own handler behind it (the connector's stand-in, as in test_mes_http_server.py).

A slowloris client (headers a byte at a time) and a body that never comes are dropped after
their timeouts; connections beyond `max_connections` are answered 503 at once; and once they
are gone a legitimate post is answered again."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.mes_http.config import MesHttpSettings
from connectors.mes_http.server import WebhookServer
from tests.integration.test_mes_http_server import ROUTE, TOKEN, RecordingHandler, settings

LIMIT_S = 10.0  # every wait below is bounded by this


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def post_bytes(body: bytes, *, content_length: int | None = None) -> bytes:
    length = len(body) if content_length is None else content_length
    return (
        f"POST {ROUTE} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode() + body


async def status_of(reader: asyncio.StreamReader) -> int:
    """The status code of the next response on the stream (bounded wait)."""
    line = await asyncio.wait_for(reader.readline(), LIMIT_S)
    assert line.startswith(b"HTTP/1.1 "), line
    return int(line.split()[1])


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection (EOF or reset), within LIMIT_S."""
    try:
        while await asyncio.wait_for(reader.read(65_536), LIMIT_S):
            pass
    except ConnectionResetError:
        pass
    return True


async def test_headers_sent_a_byte_at_a_time_are_dropped_after_the_header_timeout(
    tmp_path: Path,
) -> None:
    handler = RecordingHandler()
    async with WebhookServer(settings(tmp_path, header_timeout_s=0.5), handler) as server:
        reader, writer = await connect(server.port)
        started = time.monotonic()
        request = post_bytes(b"{}")
        dropped = False
        for byte in request:  # bounded: the request is a few hundred bytes
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                dropped = True
                break
            if reader.at_eof() or time.monotonic() - started > LIMIT_S:
                break
            await asyncio.sleep(0.05)
        dropped = dropped or await closed_by_peer(reader)
        elapsed = time.monotonic() - started
        writer.close()
    assert dropped
    assert 0.4 < elapsed < LIMIT_S, elapsed
    assert server.counters["connections_timed_out_total"] == 1
    assert handler.calls == []  # it never became a request


async def test_an_idle_connection_is_closed_after_the_header_timeout(tmp_path: Path) -> None:
    async with WebhookServer(settings(tmp_path, header_timeout_s=0.3), RecordingHandler()) as s:
        reader, writer = await connect(s.port)
        assert await closed_by_peer(reader)
        writer.close()
    assert s.counters["connections_timed_out_total"] == 1


async def test_a_body_that_never_comes_is_answered_408_and_the_connection_closed(
    tmp_path: Path,
) -> None:
    handler = RecordingHandler()
    config = settings(tmp_path, header_timeout_s=5.0, body_timeout_s=0.5)
    async with WebhookServer(config, handler) as server:
        reader, writer = await connect(server.port)
        writer.write(post_bytes(b'{"order": ', content_length=100))  # 90 bytes never come
        await writer.drain()
        started = time.monotonic()
        assert await status_of(reader) == 408
        assert time.monotonic() - started < LIMIT_S
        assert await closed_by_peer(reader)
        writer.close()
    assert handler.calls == []


async def test_connections_beyond_the_cap_are_answered_503_and_posts_work_again_after(
    tmp_path: Path,
) -> None:
    handler = RecordingHandler()
    async with WebhookServer(settings(tmp_path, max_connections=3), handler) as server:
        held = []
        for _ in range(3):  # three keep-alive connections, each served once, then left open
            reader, writer = await connect(server.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert await status_of(reader) == 200
            held.append((reader, writer))
        reader, writer = await connect(server.port)
        writer.write(post_bytes(json.dumps({"order": "A-1"}).encode()))
        assert await status_of(reader) == 503
        assert await closed_by_peer(reader)
        writer.close()
        assert server.counters["connections_refused_total"] == 1
        assert handler.calls == []
        for _reader, held_writer in held:
            held_writer.close()
        assert await post_until_accepted(server.port) == 202
    assert len(handler.calls) == 1


async def post_until_accepted(port: int) -> int:
    """POST on fresh connections until one is answered 202 (the server has seen the held
    connections close), bounded by LIMIT_S; the last status."""
    deadline = time.monotonic() + LIMIT_S
    status = 0
    while time.monotonic() < deadline:
        reader, writer = await connect(port)
        writer.write(post_bytes(json.dumps({"order": "A-2"}).encode()))
        try:
            status = await status_of(reader)
        finally:
            writer.close()
        if status == 202:
            return status
        await asyncio.sleep(0.05)
    return status


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_connections", 0), ("header_timeout_s", 0), ("body_timeout_s", -1)],
)
def test_the_limits_are_validated(tmp_path: Path, key: str, value: Any) -> None:
    with pytest.raises(ValidationError, match=key):
        settings(tmp_path, **{key: value})


def test_the_limits_have_defaults(tmp_path: Path) -> None:
    config: MesHttpSettings = settings(tmp_path)
    assert (config.max_connections, config.header_timeout_s, config.body_timeout_s) == (
        256, 10.0, 30.0
    )
