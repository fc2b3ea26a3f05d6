"""The sd_notify protocol, by hand: tell systemd (Type=notify) what the agent is doing.

systemd passes `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace) to the service;
each notification is one datagram of `KEY=VALUE` lines sent to it. This module sends:

- `READY=1` once the buffer is open and the config is valid (`systemctl start` returns then; a
  process that exits before it fails the start);
- `STATUS=...`: one short line that `systemctl status` shows ("hub connected, 2/2 sources
  running, 0 pending");
- `RELOADING=1` + `MONOTONIC_USEC=` when a reload starts, `READY=1` when it is done;
- `STOPPING=1` when the stop begins;
- `WATCHDOG=1` every half `WATCHDOG_USEC` (the unit's `WatchdogSec=`), from a task on the
  event loop, so a loop that hangs stops the pings and systemd kills and restarts the agent.

Invariants: without `NOTIFY_SOCKET` (not under systemd) every call is a no-op. A send never
blocks the event loop (a non-blocking datagram socket; a full socket buffer drops that one
notification, which only delays a status line) and never raises: systemd being unreachable must
not stop the agent; the first failure is logged once. The watchdog honours `WATCHDOG_PID`: a
child process that inherited the environment does not ping for its parent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

_log = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends notifications to `NOTIFY_SOCKET`; build it with `from_environment()`."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self._address: str | bytes | None = None
        if address:
            # "@name" is a socket in the abstract namespace: a leading NUL byte.
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_usec = watchdog_usec
        self._socket: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        env = os.environ if environ is None else environ
        watchdog_usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC") and (not pid or pid == str(os.getpid())):
            try:
                watchdog_usec = int(env["WATCHDOG_USEC"])
            except ValueError:
                _log.warning("ignoring WATCHDOG_USEC=%r: not a number", env["WATCHDOG_USEC"])
            if watchdog_usec is not None and watchdog_usec <= 0:
                watchdog_usec = None
        return cls(env.get("NOTIFY_SOCKET"), watchdog_usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str | int) -> bool:
        """Send `KEY=VALUE` lines (keyword names upper-cased); True if the datagram was sent."""
        if self._address is None:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            if self._socket is None:
                kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                self._socket = socket.socket(socket.AF_UNIX, kind)
                self._socket.setblocking(False)
            self._socket.sendto(message.encode(), self._address)
        except OSError as error:
            if not self._failed:
                self._failed = True
                _log.warning("cannot notify systemd at %s: %s", self._address, error)
            return False
        return True

    def ready(self, status: str) -> None:
        self.notify(ready=1, status=status)

    def status(self, status: str) -> None:
        self.notify(status=status)

    def reloading(self) -> None:
        self.notify(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> None:
        self.notify(stopping=1, status="stopping")

    @property
    def watchdog_interval_s(self) -> float | None:
        """Seconds between two pings: half of systemd's timeout; None without a watchdog."""
        if self.watchdog_usec is None or self._address is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    async def watchdog(self) -> None:
        """Ping systemd's watchdog until cancelled (returns at once without one)."""
        interval = self.watchdog_interval_s
        if interval is None:
            return
        while True:
            self.notify(watchdog=1)
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
