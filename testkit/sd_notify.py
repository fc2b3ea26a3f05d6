"""A real sd_notify peer for tests: an AF_UNIX datagram socket that collects what the agent sends
to `NOTIFY_SOCKET`, the way systemd would receive it (no mock: the agent's real socket code)."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

Notification = dict[str, str]


class NotifyListener:
    """Binds a datagram socket in a short temporary directory (AF_UNIX paths are limited to 108
    bytes) and records every notification, parsed into a dict, in arrival order."""

    def __init__(self) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="sdnotify-"))
        self.path = self._directory / "notify.sock"
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(self.path))
        self._socket.settimeout(0.2)
        self._messages: list[Notification] = []
        self._condition = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._receive, name="sd-notify", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closing:
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(
                line.split("=", 1) for line in data.decode().splitlines() if "=" in line
            )
            with self._condition:
                self._messages.append(fields)
                self._condition.notify_all()

    @property
    def messages(self) -> list[Notification]:
        with self._condition:
            return list(self._messages)

    def wait_for(
        self, predicate: Callable[[Notification], bool], *, after: int = 0, timeout: float = 20.0
    ) -> int:
        """Index of the first notification at or after `after` that matches (bounded wait)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                for index in range(after, len(self._messages)):
                    if predicate(self._messages[index]):
                        return index
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no matching notification within {timeout} s; got {self._messages[-20:]}"
                    )
                self._condition.wait(remaining)

    def close(self) -> None:
        self._closing = True
        self._thread.join(timeout=2.0)
        self._socket.close()
        shutil.rmtree(self._directory, ignore_errors=True)

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
