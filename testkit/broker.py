"""A real mosquitto for tests, and a paho subscriber that watches what reaches it.

`MosquittoBroker` runs one private mosquitto process on a free loopback port, configured from a
file in its own temporary directory: anonymous access, no persistence (a restart forgets every
session and retained message), plus any extra configuration lines a test needs. It never touches
the system broker on 1883.

`Subscriber` is an independent MQTT v5 client on paho's own thread. It keeps a fixed client id
and a persistent session, re-subscribes on every connect (a restarted broker without persistence
has forgotten the session) and reconnects by itself, so a test can kill and restart the broker
under it. Everything it receives is collected, in order, into a thread-safe list.

Every wait here is bounded; a failed wait says what was seen instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

INSTALL_HINT = "sudo apt-get install -y mosquitto"
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0


class BrokerError(RuntimeError):
    """The test broker could not be found, started or stopped."""


def find_mosquitto() -> str:
    """Path of the mosquitto binary, or a BrokerError that says how to install it."""
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.access("/usr/sbin/mosquitto", os.X_OK):
        return "/usr/sbin/mosquitto"
    raise BrokerError(
        f"mosquitto binary not found on PATH or in /usr/sbin; install it: {INSTALL_HINT}"
    )


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class MosquittoBroker:
    """One private mosquitto process on 127.0.0.1.

    The port is chosen when the object is made, so a test can point a client at a broker that is
    not started yet. `restart()` reuses the same port. `extra_conf` lines are appended to the
    generated mosquitto.conf; `{workdir}` in them is replaced by the broker's directory, where
    `files` (name -> text) are written, e.g. an ACL file.

    Run as root, mosquitto drops privileges to the `mosquitto` user after reading its config, so
    the work directory and its files are made world-readable.
    """

    def __init__(
        self,
        extra_conf: Sequence[str] = (),
        *,
        files: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.binary = find_mosquitto()
        self.port = port if port is not None else free_loopback_port()
        self.host = "127.0.0.1"
        self.workdir = Path(tempfile.mkdtemp(prefix="mosquitto-test-"))
        self.workdir.chmod(0o755)
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self._extra_conf = list(extra_conf)
        self._files = dict(files or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._spawned_at = 0  # log size when the current process was spawned
        # A broker that is never closed (e.g. one a test only needed the port of) still leaves
        # no directory behind once it is garbage-collected or the interpreter exits.
        self._remove_workdir = weakref.finalize(
            self, shutil.rmtree, str(self.workdir), ignore_errors=True
        )

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _write_config(self) -> None:
        for name, text in self._files.items():
            path = self.workdir / name
            path.write_text(text)
            path.chmod(0o644)
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            *(line.replace("{workdir}", str(self.workdir)) for line in self._extra_conf),
        ]
        self.conf_path.write_text("\n".join(lines) + "\n")
        self.conf_path.chmod(0o644)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self, timeout: float = _START_TIMEOUT_S) -> None:
        """Start mosquitto and return once its port accepts TCP connections."""
        if self.running:
            raise BrokerError(f"broker already running on port {self.port}")
        self._write_config()
        deadline = time.monotonic() + timeout
        self._spawn()
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                # The port can be held for a moment by a client's own socket: an agent that
                # retries a connect to this (closed) port may get it as its ephemeral source
                # port, even connect to itself (TCP simultaneous open), until it gives up.
                if "Address already in use" in self._log_since_spawn:
                    time.sleep(0.25)
                    self._spawn()
                    continue
                raise BrokerError(
                    f"mosquitto exited with {self._process.returncode} on port {self.port}:\n"
                    f"{self.log_tail()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise BrokerError(
            f"mosquitto did not accept connections on port {self.port} within {timeout} s:\n"
            f"{self.log_tail()}"
        )

    @property
    def _log_since_spawn(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self._spawned_at)
            return log.read().decode(errors="replace")

    def _spawn(self) -> None:
        self._spawned_at = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self, timeout: float = _STOP_TIMEOUT_S) -> None:
        """SIGTERM and wait; SIGKILL if it does not exit in time. No-op if not running."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)  # in case the test paused it
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._process = None

    def kill(self) -> None:
        """SIGKILL: the broker vanishes without sending DISCONNECT to anyone."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait(_STOP_TIMEOUT_S)
        self._process = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered (no PUBACK, no PINGRESP)."""
        if self._process is None:
            raise BrokerError("broker not running")
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is None:
            raise BrokerError("broker not running")
        self._process.send_signal(signal.SIGCONT)

    def write_file(self, name: str, text: str) -> None:
        """(Re)write one of the broker's `files` (e.g. its ACL file), world-readable; it takes
        effect on the next `reload()` or start."""
        self._files[name] = text
        path = self.workdir / name
        path.write_text(text)
        path.chmod(0o644)

    def reload(self) -> None:
        """SIGHUP: mosquitto reloads its configuration, ACL and password files included, and
        keeps every connection. Returns at once; the reload happens in the broker's next loop
        turn (wait on what it changes, bounded)."""
        if not self.running:
            raise BrokerError("broker not running")
        assert self._process is not None
        self._process.send_signal(signal.SIGHUP)

    def restart(self, timeout: float = _START_TIMEOUT_S) -> None:
        """Stop (if running) and start again on the same port."""
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        self.stop()
        self._remove_workdir()

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class ReceivedMessage:
    topic: str
    payload: bytes
    properties: Properties | None
    retain: bool

    @property
    def content_type(self) -> str | None:
        value = getattr(self.properties, "ContentType", None)
        return value if isinstance(value, str) else None


MessagePredicate = Callable[[ReceivedMessage], bool]


class Subscriber:
    """An MQTT v5 client on paho's thread that records what arrives on `topic_filter`.

    Fixed client id, clean_start=False with a session expiry, QoS 1 subscription re-made on every
    connect, reconnect by paho itself after a broker restart. `wait_for` blocks (bounded);
    `wait_for_async` runs it on a worker thread so an event loop under test keeps running.
    """

    def __init__(
        self,
        broker: MosquittoBroker,
        topic_filter: str,
        *,
        client_id: str | None = None,
        qos: int = 1,
        session_expiry_s: int = 300,
    ) -> None:
        self.topic_filter = topic_filter
        self._broker = broker
        self._qos = qos
        self._condition = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        self._subscribed = threading.Event()
        self._subscribe_mid: int | None = None
        self.client_id = client_id or f"test-sub-{uuid.uuid4().hex[:8]}"
        self._session_expiry_s = session_expiry_s
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=1)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # paho thread --------------------------------------------------------------------------
    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            return
        _, mid = client.subscribe(self.topic_filter, qos=self._qos)
        self._subscribe_mid = mid

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        if mid == self._subscribe_mid and not any(r.is_failure for r in reasons):
            self._subscribed.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._subscribed.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        received = ReceivedMessage(
            topic=message.topic,
            payload=bytes(message.payload),
            properties=getattr(message, "properties", None),
            retain=bool(message.retain),
        )
        with self._condition:
            self._messages.append(received)
            self._condition.notify_all()

    # test thread --------------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> Self:
        """Connect and return once the subscription is granted."""
        # paho's Properties is untyped.
        connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect_props.SessionExpiryInterval = self._session_expiry_s
        self._client.connect_async(
            self._broker.host,
            self._broker.port,
            keepalive=5,
            clean_start=False,
            properties=connect_props,
        )
        self._client.loop_start()
        self.wait_subscribed(timeout)
        return self

    def wait_subscribed(self, timeout: float = 5.0) -> None:
        """Block until the current connection's subscription is granted (e.g. after a restart)."""
        if not self._subscribed.wait(timeout):
            raise TimeoutError(
                f"subscriber {self.client_id} not subscribed to {self.topic_filter!r} "
                f"on {self._broker.url} within {timeout} s"
            )

    async def wait_subscribed_async(self, timeout: float = 5.0) -> None:
        await asyncio.to_thread(self.wait_subscribed, timeout)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def messages(self) -> list[ReceivedMessage]:
        with self._condition:
            return list(self._messages)

    def clear(self) -> None:
        with self._condition:
            self._messages.clear()

    def wait_for(
        self, predicate_or_count: MessagePredicate | int = 1, timeout: float = 5.0
    ) -> list[ReceivedMessage]:
        """Block until `count` messages arrived, or one matches `predicate`; return those.

        Raises TimeoutError listing what did arrive.
        """
        if isinstance(predicate_or_count, int):
            count = predicate_or_count

            def done() -> list[ReceivedMessage] | None:
                return list(self._messages) if len(self._messages) >= count else None

            wanted = f"{count} message(s)"
        else:
            predicate = predicate_or_count

            def done() -> list[ReceivedMessage] | None:
                matching = [m for m in self._messages if predicate(m)]
                return matching or None

            wanted = "a matching message"
        deadline = time.monotonic() + timeout
        with self._condition:
            while (result := done()) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(m.topic, len(m.payload), m.retain) for m in self._messages]
                    raise TimeoutError(
                        f"subscriber on {self.topic_filter!r}: no {wanted} within {timeout} s; "
                        f"received (topic, bytes, retain): {seen}"
                    )
                self._condition.wait(remaining)
            return result

    async def wait_for_async(
        self,
        predicate_or_count: MessagePredicate | int = 1,
        timeout: float = 5.0,
    ) -> list[ReceivedMessage]:
        return await asyncio.to_thread(self.wait_for, predicate_or_count, timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
