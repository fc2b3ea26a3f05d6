"""A loopback TCP proxy that can stop forwarding without closing anything (a blackhole).

`TcpProxy(upstream_port)` listens on a free 127.0.0.1 port and pipes every accepted connection
to the upstream, one thread per direction. Modes:

- `forward()`: pipe bytes both ways (the default).
- `blackhole()`: keep every connection open and keep accepting new ones, but read and drop
  whatever arrives, in both directions: a peer sees a silent link, no RST, no FIN. Only an
  application-level timer (MQTT keepalive, a CONNACK timeout) can notice.
- `refuse()`: close new connections at once (a peer sees its connect fail quickly); existing
  connections are cut.

`blackhole()` keeps the open connections (they go silent); any other change of mode cuts them
(a blackholed MQTT stream has lost bytes and can never be resumed), so after `forward()` peers
reconnect cleanly.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Literal

Mode = Literal["forward", "blackhole", "refuse"]
_CHUNK = 65_536


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._mode: Mode = "forward"
        self._generation = 0
        self._lock = threading.Lock()
        self._sockets: list[tuple[int, socket.socket]] = []
        self._closed = False
        self.connections_total = 0
        self._accepter = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    def start(self) -> TcpProxy:
        self._accepter.start()
        return self

    def forward(self) -> None:
        self._set_mode("forward")

    def blackhole(self) -> None:
        self._set_mode("blackhole")

    def refuse(self) -> None:
        self._set_mode("refuse")

    def _set_mode(self, mode: Mode) -> None:
        with self._lock:
            if mode == self._mode:
                return
            self._mode = mode
            if mode == "blackhole":
                return  # the open connections stay, silent
            self._generation += 1
            old, self._sockets = self._sockets, []
        for _generation, sock in old:
            _close(sock)

    def close(self) -> None:
        self._closed = True
        _close(self._listener)
        with self._lock:
            old, self._sockets = self._sockets, []
        for _generation, sock in old:
            _close(sock)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections_total += 1
            with self._lock:
                mode, generation = self._mode, self._generation
            if mode == "refuse":
                _close(client)
                continue
            upstream: socket.socket | None = None
            if mode == "forward":
                try:
                    upstream = socket.create_connection(self.upstream, timeout=2.0)
                    upstream.settimeout(None)
                except OSError:
                    _close(client)
                    continue
            with self._lock:
                if generation != self._generation:
                    _close(client)
                    if upstream is not None:
                        _close(upstream)
                    continue
                self._sockets.append((generation, client))
                if upstream is not None:
                    self._sockets.append((generation, upstream))
            if upstream is None:
                threading.Thread(target=_drain, args=(client,), daemon=True).start()
            else:
                for source, target in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                if self._mode != "forward":
                    continue  # blackholed: swallow, keep the connection open
                target.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(target)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(_CHUNK):
            pass
    except OSError:
        pass
    _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
