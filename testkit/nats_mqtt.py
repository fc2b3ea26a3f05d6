"""A real broker that speaks only MQTT 3.1.1, for tests: a private nats-server's MQTT gateway.

`NatsMqttBroker` runs one nats-server (Debian 12's 2.9) on free loopback ports: the NATS client
port and the MQTT listener, with JetStream (the MQTT gateway keeps its sessions and QoS 1
messages there) in the broker's own temporary directory. That store outlives `kill()` and
`restart()`, as a real deployment's would; `close()` removes it. It never touches a system
nats-server.

What this broker is, as far as the tests rely on it: MQTT 3.1.1 only (a v5 CONNECT gets
CONNACK "unacceptable protocol version"), QoS 0 and 1, no `.` in topic names (the connection
is closed: `[hub] dots_as_levels`), no shared subscriptions, sessions with clean_session=False
kept in JetStream (QoS 1 messages for an offline subscriber are redelivered).

Every wait here is bounded; a failed one says what the log shows.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

from testkit.broker import BrokerError, free_loopback_port

__all__ = ["INSTALL_HINT", "NatsMqttBroker", "find_nats_server"]

INSTALL_HINT = "sudo apt-get install -y nats-server"
_START_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 5.0


def find_nats_server() -> str | None:
    """Path of the nats-server binary, or None."""
    found = shutil.which("nats-server")
    if found:
        return found
    candidate = Path("/usr/sbin/nats-server")
    return str(candidate) if candidate.exists() else None


class NatsMqttBroker:
    """One private nats-server with its MQTT gateway on 127.0.0.1 (module docstring).

    The ports are chosen when the object is made; `restart()` reuses them and the store."""

    def __init__(self) -> None:
        binary = find_nats_server()
        if binary is None:
            raise BrokerError(f"nats-server not found; install it: {INSTALL_HINT}")
        self.binary = binary
        self.host = "127.0.0.1"
        self.port = free_loopback_port()  # MQTT
        self.nats_port = free_loopback_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="nats-mqtt-test-"))
        self.conf_path = self.workdir / "nats.conf"
        self.log_path = self.workdir / "nats.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._remove_workdir = weakref.finalize(
            self, shutil.rmtree, str(self.workdir), ignore_errors=True
        )

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _write_config(self) -> None:
        store = self.workdir / "jetstream"
        self.conf_path.write_text(
            f"listen: {self.host}:{self.nats_port}\n"
            f'server_name: "test-{self.port}"\n'
            f'jetstream {{ store_dir: "{store}", max_memory_store: 64MB, '
            "max_file_store: 256MB }\n"
            f"mqtt {{ listen: {self.host}:{self.port} }}\n"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout: float = _START_TIMEOUT_S) -> None:
        """Start nats-server; return once its MQTT port accepts TCP connections."""
        if self.running:
            raise BrokerError(f"nats-server already running on port {self.port}")
        self._write_config()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrokerError(
                    f"nats-server exited with {self._process.returncode}:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise BrokerError(
            f"nats-server's MQTT port {self.port} not open within {timeout} s:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = _STOP_TIMEOUT_S) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. No-op if not running."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._process = None

    def kill(self) -> None:
        """SIGKILL: the broker vanishes mid-stream (its store stays for the restart)."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait(_STOP_TIMEOUT_S)
        self._process = None

    def restart(self, timeout: float = _START_TIMEOUT_S) -> None:
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        self.stop()
        self._remove_workdir()

    def __enter__(self) -> NatsMqttBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
