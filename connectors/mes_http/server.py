"""The HTTP layer of the webhook connector: who may post, what a post must look like, and
which status code says what. It knows nothing of events or buffers; a `Handler` decides what
the objects become and answers with an `Outcome`.

A request is checked in this order; the first failed check answers, and the handler never
sees a request that failed one:

1. `GET /healthz` answers 200 `{"status": "ok"}`, without authentication.
2. 401 (`WWW-Authenticate: Bearer`) unless `Authorization: Bearer <token>` carries a token of
   the tokens file or `token_env` (every other path: a stranger learns nothing, not even which
   paths exist). Tokens compare in constant time; the file is re-read when it changes, so a
   token is rotated by editing or replacing the file, and an unreadable file accepts none of
   its tokens until it is readable again (fail closed).
3. 404 for a path that is no route, 405 (with `Allow`) for a method other than POST on one.
4. 415 unless `Content-Type: application/json` (charset, if given, utf-8).
5. 413 for a body above `max_body_bytes`.
6. 400 for a body that is not UTF-8 JSON (the message names line and column), an empty array,
   or anything but one object or an array of objects; the objects reach the handler as a list.
7. 400 for a bad idempotency key. The key is the `Idempotency-Key` header (1..200 printable
   ASCII characters), else the payload's `idempotency_field` when the body holds exactly one
   object, else None.
8. The handler's `Outcome`: `Accepted` 202, `Rejected` 400 with per-item errors, `Conflict`
   409 (the key was used before with a different body), `Busy` 503 with `Retry-After`. A
   handler that raises answers 500 and is logged with its traceback: a bug, not the client's.

The handler also gets the request's W3C trace context headers (`traceparent`, `tracestate`)
as they came, unchecked (`trace_headers`): they never refuse a request; the mapping continues
a valid one and ignores the rest.

Before any of that, the connection itself (`connectors.mes_http.connections`): beyond
`max_connections` open at once a new one is answered 503 and closed at once; one that has not
sent its request headers within `header_timeout_s` is closed; a body that has not fully arrived
`body_timeout_s` after the headers is answered 408 and its connection closed.

Every error body is JSON `{"error": "<what was wrong and where>"}`. Each 4xx is logged once at
info with the method, path and reason; the access log is off; tokens and payloads are never
logged. The handler bounds its own wait for the commit (`commit_timeout_s`, answering `Busy`);
`stop()` gives requests in flight that long to finish.

Why ~540 lines: every answer the webhook gives (the status table above) is decided here, in
the order a request meets them; kept together so the table can be checked against one file.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypedDict, assert_never

from aiohttp import web
from aiohttp.typedefs import Handler as NextHandler

from connectors.base import SourceConfigError
from connectors.credentials import CredentialUnavailable, resolve
from connectors.mes_http.config import HEALTH_PATH, MesHttpSettings, RouteSettings
from connectors.mes_http.connections import ConnectionGate

log = logging.getLogger(__name__)

MAX_KEY_CHARS = 200


class ItemError(TypedDict):
    """Why one object of a post was refused: its index in the batch and the field at fault."""

    index: int
    field: str
    message: str


@dataclass(frozen=True, slots=True)
class Accepted:
    """The objects are committed (or were, by an earlier post with the same key: `replayed`)."""

    ids: list[str]
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Rejected:
    """The objects cannot be taken as they are; the MES must not resend them unchanged."""

    errors: list[ItemError]


@dataclass(frozen=True, slots=True)
class Busy:
    """Nothing was taken now (buffer full, commit too slow); resend after `retry_after_s`."""

    reason: str
    retry_after_s: float


@dataclass(frozen=True, slots=True)
class Conflict:
    """The idempotency key was used before with a different body."""

    message: str


Outcome = Accepted | Rejected | Busy | Conflict
# The W3C trace context headers of a request, as received: (name, value) pairs.
TraceHeaders = tuple[tuple[str, str], ...]
# (route, the posted objects, idempotency key or None, trace headers) -> what to answer.
Handler = Callable[
    [RouteSettings, list[dict[str, Any]], str | None, TraceHeaders], Awaitable[Outcome]
]
TRACE_HEADERS = ("traceparent", "tracestate")


class WebhookServer:
    """The endpoint, bound from `start()` until `stop()` (or as an async context manager)."""

    def __init__(
        self,
        settings: MesHttpSettings,
        handler: Handler,
        *,
        name: str = "mes-http",
        counters: dict[str, int] | None = None,
    ):
        self._settings = settings
        self._handler = handler
        self._name = name
        # Refusals before the handler (see `_Endpoint._refusal`), counted into this dict.
        self.counters = counters if counters is not None else {}
        self.counters.setdefault("posts_unauthorized_total", 0)
        self.counters.setdefault("posts_refused_total", 0)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve. `SourceConfigError`: port taken, TLS files or tokens unusable."""
        settings = self._settings
        tokens = None
        if settings.auth == "bearer":
            tokens_file = _resolved("tokens_file", settings.tokens_file)
            tokens = BearerTokens(tokens_file, settings.token_env, name=self._name)
        else:
            log.warning("%s: no authentication on %s (auth = \"none\")", self._name,
                        settings.listen)
        tls = _tls_context(
            _resolved("tls_cert", settings.tls_cert), _resolved("tls_key", settings.tls_key)
        )
        gate = ConnectionGate(
            max_connections=settings.max_connections,
            header_timeout_s=settings.header_timeout_s,
            name=self._name,
            counters=self.counters,
        )
        app = webhook_app(settings, self._handler, tokens, name=self._name,
                          counters=self.counters, gate=gate)
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=settings.commit_timeout_s
        )
        await runner.setup()
        site = _GatedSite(runner, settings.host, settings.port, ssl_context=tls, gate=gate)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise SourceConfigError(
                f"cannot listen on {settings.listen}: {error.strerror or error}"
            ) from error
        self._runner = runner
        log.info("%s: listening on %s://%s:%d", self._name, "https" if tls else "http",
                 settings.host, self.port)

    async def stop(self) -> None:
        """Stop listening; requests in flight get `commit_timeout_s` to finish."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def port(self) -> int:
        """The bound port (the chosen one when the settings say port 0)."""
        if self._runner is None:
            raise RuntimeError("the webhook server is not started")
        port: int = self._runner.addresses[0][1]
        return port

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


class _GatedSite(web.TCPSite):
    """aiohttp's TCP site with every accepted connection behind the `ConnectionGate`."""

    __slots__ = ("_gate",)

    # A burst of accepts is bounded by this (asyncio accepts up to `backlog` connections per
    # loop iteration), so one burst cannot take the descriptors kept in reserve.
    ACCEPT_BACKLOG = 32

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None,
        gate: ConnectionGate,
    ) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context,
                         backlog=self.ACCEPT_BACKLOG)
        self._gate = gate

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self._gate.protocol_factory(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            ssl_handshake_timeout=self._gate.header_timeout_s if self._ssl_context else None,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]


class BearerTokens:
    """The accepted bearer tokens: the lines of a file, re-read whenever it changes, and/or one
    from an environment variable. Constructing it checks that there is at least one token."""

    def __init__(self, file: Path | None, env_name: str | None, *, name: str) -> None:
        self._file = file
        self._name = name
        self._fixed: tuple[bytes, ...] = ()
        self._from_file: tuple[bytes, ...] = ()
        self._stamp: tuple[int, int, int] | None = None  # (inode, mtime ns, size) last read
        if env_name is not None:
            value = os.environ.get(env_name, "").strip()
            if not value:
                raise SourceConfigError(f"environment variable {env_name} holds no token")
            self._fixed = (value.encode(),)
        if file is not None:
            try:
                self._read(file.stat())
            except (OSError, ValueError) as error:  # ValueError: not UTF-8
                raise SourceConfigError(
                    f"cannot read tokens_file {file}: {error}"
                ) from error
            if not self._from_file and not self._fixed:
                raise SourceConfigError(f"tokens_file {file} holds no token")

    def why_refused(self, authorization: str | None) -> str | None:
        """None if the `Authorization` header carries an accepted token, else the reason."""
        if authorization is None:
            return "missing Authorization: Bearer <token>"
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return "Authorization is not a Bearer token"
        candidate = presented.strip().encode("utf-8", "surrogateescape")
        matched = False
        for token in (*self._fixed, *self._current_file_tokens()):
            matched |= hmac.compare_digest(candidate, token)
        return None if matched else "wrong bearer token"

    def _current_file_tokens(self) -> tuple[bytes, ...]:
        # A stat per request of a small local file: cheap enough to do on the loop.
        if self._file is None:
            return ()
        try:
            stat = self._file.stat()
            if (stat.st_ino, stat.st_mtime_ns, stat.st_size) != self._stamp:
                self._read(stat)
                log.info("%s: tokens file %s re-read: %d token(s)", self._name, self._file,
                         len(self._from_file))
        except (OSError, ValueError) as error:
            if self._stamp is not None:
                log.warning("%s: cannot read tokens file %s (%s); its tokens are refused "
                            "until it is readable", self._name, self._file, error)
            self._from_file, self._stamp = (), None
        return self._from_file

    def _read(self, stat: os.stat_result) -> None:
        assert self._file is not None
        lines = self._file.read_text(encoding="utf-8").splitlines()
        self._from_file = tuple(
            line.strip().encode() for line in lines if line.strip() and not
            line.lstrip().startswith("#")
        )
        self._stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def webhook_app(
    settings: MesHttpSettings,
    handler: Handler,
    tokens: BearerTokens | None,
    *,
    name: str = "mes-http",
    counters: dict[str, int] | None = None,
    gate: ConnectionGate | None = None,
) -> web.Application:
    """The aiohttp application: one POST route per configured route, and /healthz. `gate`:
    the connection limits the requests report to (None: an app served some other way)."""
    endpoint = _Endpoint(
        settings, handler, tokens, name, counters if counters is not None else {}, gate
    )
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[endpoint.answer_errors, endpoint.authenticate],
    )
    app.router.add_get(HEALTH_PATH, _healthz)
    for route in settings.routes:
        app.router.add_post(route.path, endpoint.receiver(route))
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@dataclass
class _Refused(Exception):
    """Answer the request with this error status and message (raised by the checks)."""

    status: int
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    by_handler: bool = False  # the handler's own outcome, which the handler counted
    close: bool = False  # close the connection after the answer (what is left of it is junk)


@dataclass(frozen=True)
class _Endpoint:
    """The request path of the module docstring: middlewares for errors and auth, then the
    route's checks and the handler call."""

    settings: MesHttpSettings
    on_post: Handler
    tokens: BearerTokens | None
    name: str
    counters: dict[str, int]
    gate: ConnectionGate | None = None

    @web.middleware
    async def answer_errors(
        self, request: web.Request, handler: NextHandler
    ) -> web.StreamResponse:
        if self.gate is None:
            return await self._answer(request, handler)
        self.gate.request_started(request.transport)
        closing = True
        try:
            response = await self._answer(request, handler)
            closing = response.keep_alive is False  # force_close(): None until prepared
            return response
        finally:
            self.gate.request_finished(request.transport, closing=closing)

    async def _answer(self, request: web.Request, handler: NextHandler) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Refused as refused:
            return self._refusal(request, refused)
        except web.HTTPMethodNotAllowed as error:  # from the router
            allowed = ",".join(sorted(error.allowed_methods))
            return self._refusal(request, _Refused(
                405, f"{request.method} is not allowed on {request.path} (only {allowed})",
                headers={"Allow": allowed},
            ))
        except web.HTTPNotFound:  # from the router
            return self._refusal(request, _Refused(404, f"no webhook route at {request.path}"))
        except web.HTTPException as error:
            return self._refusal(request, _Refused(error.status, error.reason))
        except Exception:
            log.exception("%s: %s %s failed", self.name, request.method, request.path)
            return web.json_response(
                {"error": "internal error in the agent (see its log); resend later"}, status=500
            )

    def _refusal(self, request: web.Request, refused: _Refused) -> web.Response:
        if not refused.by_handler:
            counter = "posts_unauthorized_total" if refused.status == 401 else "posts_refused_total"
            self.counters[counter] = self.counters.get(counter, 0) + 1
        # 503 (Busy) is the handler's state to log once, not each post's.
        level = logging.INFO if refused.status < 500 else logging.DEBUG
        log.log(level, "%s: %s %r refused with %d: %s", self.name, request.method,
                request.path[:200], refused.status, refused.message)
        response = web.json_response(
            {"error": refused.message, **refused.extra},
            status=refused.status,
            headers=refused.headers,
        )
        if refused.close:
            response.force_close()
        return response

    @web.middleware
    async def authenticate(
        self, request: web.Request, handler: NextHandler
    ) -> web.StreamResponse:
        if self.tokens is not None and request.path != HEALTH_PATH:
            reason = self.tokens.why_refused(request.headers.get("Authorization"))
            if reason is not None:
                challenge = "Bearer" if "missing" in reason else 'Bearer error="invalid_token"'
                raise _Refused(401, reason, headers={"WWW-Authenticate": challenge})
        return await handler(request)

    def receiver(
        self, route: RouteSettings
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def receive(request: web.Request) -> web.StreamResponse:
            return await self.receive(route, request)

        return receive

    async def receive(self, route: RouteSettings, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            sent = request.headers.get("Content-Type", "none")
            raise _Refused(415, f"Content-Type must be application/json, not {sent[:100]!r}")
        charset = request.charset or "utf-8"
        if charset.lower() != "utf-8":
            raise _Refused(415, f"JSON must be utf-8, not charset {charset[:50]!r}")
        limit = self.settings.max_body_bytes
        if (request.content_length or 0) > limit:
            raise _Refused(413, f"body of {request.content_length} bytes exceeds {limit} bytes")
        timeout = self.settings.body_timeout_s
        try:
            async with asyncio.timeout(timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge as error:
            raise _Refused(413, f"body exceeds {limit} bytes") from error
        except TimeoutError as error:
            raise _Refused(
                408, f"body not received within {timeout:g} s (body_timeout_s)", close=True
            ) from error
        items = parse_objects(body)
        key = idempotency_key(request.headers.get("Idempotency-Key"), items,
                              self.settings.idempotency_field)
        outcome = await self.on_post(route, items, key, trace_headers(request))
        match outcome:
            case Accepted(ids=ids, replayed=replayed):
                body_out = {"accepted": len(ids), "ids": ids, "replayed": replayed}
                return web.json_response(body_out, status=202)
            case Rejected(errors=errors):
                raise _Refused(400, _summary(errors), extra={"errors": errors}, by_handler=True)
            case Conflict(message=message):
                raise _Refused(409, message, by_handler=True)
            case Busy(reason=reason, retry_after_s=retry_after_s):
                retry = str(max(1, math.ceil(retry_after_s)))
                raise _Refused(503, reason, headers={"Retry-After": retry}, by_handler=True)
            case _:
                assert_never(outcome)


def parse_objects(body: bytes) -> list[dict[str, Any]]:
    """The posted objects: one JSON object, or an array of them, as a non-empty list."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise _Refused(400, f"body is not UTF-8 (byte {error.start})") from error
    try:
        document = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as error:
        raise _Refused(
            400, f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}"
        ) from error
    except (ValueError, RecursionError) as error:
        raise _Refused(400, f"invalid JSON: {error}") from error
    if isinstance(document, dict):
        return [document]
    if not isinstance(document, list):
        raise _Refused(400, f"body is {_json_type(document)}, not an object or an array of "
                            "objects")
    if not document:
        raise _Refused(400, "body is an empty array: nothing to accept")
    for index, item in enumerate(document):
        if not isinstance(item, dict):
            raise _Refused(400, f"item {index} of the array is {_json_type(item)}, not an object")
    return document


def idempotency_key(
    header: str | None, items: list[dict[str, Any]], payload_field: str | None
) -> str | None:
    """The header's key, else the single object's `payload_field`, else None."""
    if header is not None:
        return _checked_key(header, "Idempotency-Key header")
    if payload_field is None or len(items) != 1 or payload_field not in items[0]:
        return None
    value = items[0][payload_field]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Refused(400, f"field {payload_field!r} (the idempotency key) is "
                            f"{_json_type(value)}, not a string or an integer")
    return _checked_key(str(value), f"field {payload_field!r} (the idempotency key)")


def trace_headers(request: web.Request) -> TraceHeaders:
    """The request's `traceparent` and `tracestate`, as received. A header sent more than once
    is joined with commas, as HTTP combines repeated fields: a repeated `tracestate` is one
    list, a repeated `traceparent` is invalid (as W3C Trace Context says)."""
    return tuple(
        (name, ",".join(values))
        for name in TRACE_HEADERS
        if (values := request.headers.getall(name, []))
    )


def _checked_key(key: str, where: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_CHARS or not all(" " <= char <= "~" for char in key):
        raise _Refused(400, f"{where} must be 1..{MAX_KEY_CHARS} printable ASCII characters")
    return key


def _summary(errors: list[ItemError]) -> str:
    if not errors:
        return "payload rejected"
    first = errors[0]
    return (f"{len(errors)} error(s) in the payload; first: item {first['index']}, "
            f"field {first['field']!r}: {first['message']}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _resolved(key: str, path: Path | None) -> Path | None:
    """A file setting with a `credential:NAME` resolved (`connectors.credentials`)."""
    if path is None:
        return None
    try:
        return resolve(key, path)
    except CredentialUnavailable as error:
        raise SourceConfigError(str(error)) from error


def _tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise SourceConfigError(f"cannot load TLS certificate {cert} with key {key}: "
                                f"{getattr(error, 'strerror', None) or error}") from error
    return context
