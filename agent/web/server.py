"""The agent's read-only web server (aiohttp): `GET /metrics` and the status page `GET /`.

::

    GET /          the status page (agent.web.page), when `[web] status_page`
    GET /metrics   Prometheus text, or OpenMetrics when the Accept header asks for it
                   (agent.web.metrics), when `[web] metrics`

Lifecycle. `WebServer` is built with the `Agent` (`agent.runtime`): it reads the TLS
certificate and key and the password file then, so a missing or unreadable one stops the
start (or refuses the reload) with the `[web]` key named, like the hub's credentials
(`CredentialError`). `run()` is a task of the agent's run, started with the status publisher
and cancelled before the session closes; with `[web] enabled = false` (the default) it returns
at once and no port is opened. A port that cannot be bound (in use, not allowed) is logged as
an error and tried again with capped backoff: the web server is never a reason for the agent
to stop forwarding. While it runs it also polls the agent's state once a second (`StateLog`)
and takes a history sample every `history_interval_s` (`History`, the ring file).

Security. Read-only: no path changes anything, and the page shows no secret (the config's
secrets are references; the hub URL is shown as configured, which holds no password). Loopback
by default. With `username` and `password_file`, every path asks for HTTP basic auth (401 with
`WWW-Authenticate`; the comparison is constant-time); with `tls_cert` and `tls_key` it serves
HTTPS only. What a crash costs: nothing of the data; the history since its last write.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.link.status import buffer_status, sources_status
from agent.service.credentials import CredentialError, read_secret, resolve_path
from agent.web.history import HISTORY_FILE, History, LastValues, StateLog, take_sample
from agent.web.page import render_page
from config.observability import WebSection
from connectors.backoff import Backoff
from connectors.base import Emit

if TYPE_CHECKING:
    from aiohttp import web
    from prometheus_client.registry import CollectorRegistry

    from agent.view import AgentView
    from agent.web.metrics import AgentCollector

    Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = ["WebServer"]

_log = logging.getLogger(__name__)
_POLL_S = 1.0
_BIND_RETRY_MIN_S = 1.0
_BIND_RETRY_MAX_S = 30.0



class WebServer:
    """See the module docstring."""

    def __init__(self, agent: AgentView, section: WebSection) -> None:
        self._agent = agent
        self.section = section
        self.values = LastValues()
        self.url: str | None = None  # once listening
        self._tls: ssl.SSLContext | None = None
        self._password: str | None = None
        if not section.enabled:
            return
        self._tls = _tls_context(section)
        if section.username is not None and section.password_file is not None:
            self._password = read_secret("web.password_file", str(section.password_file))

    def tap(self, emit: Emit) -> Emit:
        """The sources' `emit`, noting last values for the page (unchanged when it is off)."""
        if not (self.section.enabled and self.section.status_page):
            return emit
        return self.values.tap(emit)

    async def run(self) -> None:
        """Serve until cancelled (module docstring); returns at once when `[web]` is off. A
        failure of its own is logged and ends the web server only, never the agent."""
        if not self.section.enabled:
            return
        try:
            await self._serve()
        except Exception:
            self.url = None
            _log.exception("web: the web server failed; /metrics and the status page are down "
                           "until the agent restarts (the data keeps flowing)")

    async def _serve(self) -> None:
        # aiohttp and prometheus_client are loaded only when `[web]` is on: an agent without
        # it (or without a webhook source) does not carry them (tests/unit/test_source_types).
        from aiohttp import web

        from agent.web.metrics import agent_registry

        section = self.section
        agent = self._agent
        history = History(agent.config.agent.state_dir / HISTORY_FILE, section.history_interval_s)
        await asyncio.to_thread(history.load)
        states = StateLog(agent)
        registry, collector = agent_registry(agent)
        app = self._app(history, states, registry, collector)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        try:
            await self._listen(runner)
            await self._watch(history, states)
        finally:
            self.url = None
            await runner.cleanup()

    async def _listen(self, runner: web.AppRunner) -> None:
        from aiohttp import web

        section = self.section
        backoff = Backoff(_BIND_RETRY_MIN_S, _BIND_RETRY_MAX_S)
        while True:
            site = web.TCPSite(runner, section.host, section.port, ssl_context=self._tls)
            try:
                await site.start()
                break
            except OSError as error:
                if backoff.attempts == 0:
                    _log.error("web: cannot listen on %s:%d (%s); /metrics and the status page "
                               "are down, retrying with backoff (the data keeps flowing)",
                               section.host, section.port, error.strerror or error)
                await asyncio.sleep(backoff.next_s())
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in str(host) else host
        self.url = f"{'https' if self._tls else 'http'}://{shown}:{port}/"
        paths = [p for p, on in (("/", section.status_page), ("/metrics", section.metrics)) if on]
        auth = "basic auth" if self._password is not None else "no auth"
        _log.info("web: serving %s (%s; %s)", self.url, ", ".join(paths), auth)

    async def _watch(self, history: History, states: StateLog) -> None:
        """Poll state changes every second; sample the history every interval."""
        next_sample = time.monotonic()
        while True:
            states.poll()
            if time.monotonic() >= next_sample:
                next_sample += history.interval_s
                next_sample = max(next_sample, time.monotonic())
                try:
                    history.add(await take_sample(self._agent, history))
                except Exception as error:  # a busy buffer: skip a sample, never stop
                    _log.debug("web: history sample skipped: %s", error)
                else:
                    await asyncio.to_thread(history.write)
            await asyncio.sleep(_POLL_S)

    def _app(
        self, history: History, states: StateLog, registry: CollectorRegistry,
        collector: AgentCollector,
    ) -> web.Application:
        from aiohttp import web
        from prometheus_client.exposition import choose_encoder

        agent, section = self._agent, self.section
        lock = asyncio.Lock()  # one scrape at a time reads the collector's buffer figures

        async def metrics(request: web.Request) -> web.Response:
            async with lock:
                await collector.refresh()
                encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
                body = encoder(registry)
            return web.Response(body=body, headers={"Content-Type": content_type})

        async def page(_request: web.Request) -> web.Response:
            text = render_page(
                agent, buffer=await buffer_status(agent), sources=sources_status(agent),
                samples=list(history.samples), interval_s=history.interval_s,
                span_s=history.span_s, values=self.values, changes=list(states.changes),
                refresh_s=section.refresh_s,
            )
            return web.Response(text=text, content_type="text/html", charset="utf-8")

        app = web.Application(middlewares=_auth(section.username, self._password))
        if section.status_page:
            app.router.add_get("/", page)
        if section.metrics:
            app.router.add_get("/metrics", metrics)
        return app


def _auth(username: str | None, password: str | None) -> list[Any]:
    if username is None or password is None:
        return []
    expected = f"{username}:{password}".encode()
    from aiohttp import web

    @web.middleware
    async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        given = b""
        if header.startswith("Basic "):
            with contextlib.suppress(binascii.Error, ValueError):
                given = base64.b64decode(header[6:].strip(), validate=True)
        if not hmac.compare_digest(given, expected):
            return web.Response(status=401, text="authentication required\n",
                                headers={"WWW-Authenticate": 'Basic realm="edge-agent"'})
        return await handler(request)

    return [basic_auth]


def _tls_context(section: WebSection) -> ssl.SSLContext | None:
    if section.tls_cert is None or section.tls_key is None:
        return None
    cert = resolve_path("web.tls_cert", str(section.tls_cert))
    key = resolve_path("web.tls_key", str(section.tls_key))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(Path(cert), Path(key))
    except (OSError, ssl.SSLError) as error:
        raise CredentialError(
            f"web.tls_cert / web.tls_key: cannot load the certificate {cert} with the key "
            f"{key}: {getattr(error, 'strerror', None) or error}"
        ) from error
    return context
