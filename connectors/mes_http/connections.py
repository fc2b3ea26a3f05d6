"""The webhook's connection limits: how many connections it serves at once, and how long a
connection may take to send its request headers. They keep any network client, with or
without a token, from holding the agent's file descriptors (idle sockets, slowloris).

`ConnectionGate` sits between the listening socket and aiohttp: every accepted connection goes
through its protocol factory (`protocol_factory`), and the outermost middleware tells it when a
request starts and ends (`request_started`, `request_finished`).

Invariants
----------
- At most `max_connections` connections are served at once. One more is accepted, answered at
  once with 503 (`Retry-After`, `Connection: close`) and closed: it holds its descriptor only
  for that write, whatever the client does next. Counted in `connections_refused_total`;
  logged once when the limit is reached and once when the served connections are down to half
  of it again.
- A served connection that has not sent complete request headers within `header_timeout_s`
  of being opened, or of the end of its previous request (keep-alive), is closed and counted in
  `connections_timed_out_total`. A request in progress is never cut by this timer; its body has
  its own deadline (`body_timeout_s`, in `connectors.mes_http.server`): the 408 that answers a
  late body closes the connection, `CLOSE_GRACE_S` after the answer at the latest.
- With TLS, a connection counts once its handshake is done; the handshake itself is bounded by
  `header_timeout_s` (the server passes it as `ssl_handshake_timeout`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

# How long a connection whose answer closes it (408) has to read that answer.
CLOSE_GRACE_S = 1.0
_BUSY_BODY = b'{"error": "too many connections to the webhook; retry later"}'
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)


class ConnectionGate:
    """Caps and times the webhook's connections; see the module docstring."""

    def __init__(
        self,
        *,
        max_connections: int,
        header_timeout_s: float,
        name: str,
        counters: dict[str, int],
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self._name = name
        self.counters = counters  # the two counters below appear once they are not 0
        self._served: dict[asyncio.BaseTransport, _ServedConnection] = {}
        self._at_limit = False

    @property
    def open_connections(self) -> int:
        return len(self._served)

    def protocol_factory(
        self, serve: Callable[[], asyncio.Protocol]
    ) -> Callable[[], asyncio.Protocol]:
        """What the listening socket calls per accepted connection: `serve()`'s protocol
        (aiohttp's) behind the timer, or the 503 answer beyond the limit."""

        def accepted() -> asyncio.Protocol:
            if len(self._served) >= self.max_connections:
                self._count("connections_refused_total")
                if not self._at_limit:
                    self._at_limit = True
                    log.warning(
                        "%s: %d connections open, the limit (max_connections): further ones "
                        "are answered 503 until some close", self._name, self.max_connections,
                    )
                return _TurnedAway()
            return _ServedConnection(self, serve())

        return accepted

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        """The headers of a request arrived: its connection's header timer stops."""
        connection = self._served.get(transport) if transport is not None else None
        if connection is not None:
            connection.disarm()

    def request_finished(
        self, transport: asyncio.BaseTransport | None, *, closing: bool = False
    ) -> None:
        """The request was answered: the next one's headers have `header_timeout_s`; an
        answer that ends the connection (`closing`: what follows it is junk, e.g. the rest of
        a late body) leaves it `CLOSE_GRACE_S` to be read."""
        connection = self._served.get(transport) if transport is not None else None
        if connection is not None:
            connection.arm(CLOSE_GRACE_S if closing else self.header_timeout_s)

    def _opened(self, transport: asyncio.BaseTransport, connection: _ServedConnection) -> None:
        self._served[transport] = connection

    def _closed(self, transport: asyncio.BaseTransport) -> None:
        self._served.pop(transport, None)
        if self._at_limit and len(self._served) <= self.max_connections // 2:
            self._at_limit = False
            log.info("%s: connections down to %d, below the limit again", self._name,
                     len(self._served))

    def _timed_out(self) -> None:
        self._count("connections_timed_out_total")

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


class _ServedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the header timer around it."""

    def __init__(self, gate: ConnectionGate, inner: asyncio.Protocol) -> None:
        self._gate = gate
        self._inner = inner
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, timeout_s: float) -> None:
        self.disarm()
        self._timer = asyncio.get_running_loop().call_later(timeout_s, self._expire)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            self._gate._timed_out()
            log.debug("connection closed: no (further) request in time")
            if isinstance(self._transport, asyncio.Transport):
                self._transport.abort()  # a slow or silent client gets no more of our time
            else:
                self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._gate._opened(transport, self)
        self.arm(self._gate.header_timeout_s)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self._transport is not None:
            self._gate._closed(self._transport)
        self._inner.connection_lost(exc)


class _TurnedAway(asyncio.Protocol):
    """A connection beyond the limit: answered 503 and closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BUSY_RESPONSE)
        transport.close()
