"""`edge-agent demo --with-hub`: the hub's half beside the demo plant and agent, on one machine.

::

    demo plant ──OPC UA──▶ agent ──MQTT──▶ broker ──$share/hub/…──▶ hub run ──▶ PostgreSQL
                             ▲                                         │        (edge_demo)
                             └──── signed replay of a gap ◀────────────┘
                                          dashboard and /metrics: http://127.0.0.1:8780/

`DemoHub` makes the demo's database if it is missing (the machine's PostgreSQL, trust auth on
loopback, as Debian's package and CI give it), a key pair for the hub's replay requests (the
demo agent allows it for `replay`), writes `hub.toml` in the demo's state folder and runs the
hub as a child process (its log: `hub.log` there). It imports nothing of `hub`: the hub is a
separate process, as in production. The progress line reads the landed count from the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types

from agent.link.signing import create_key_pair

__all__ = ["DEFAULT_DATABASE", "DemoHub", "DemoHubError"]

DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/edge_demo"
_READY_TIMEOUT_S = 60.0


class DemoHubError(Exception):
    """The demo's hub cannot start: what is missing, said so that a person can fix it."""


class DemoHub:
    """The hub child process of the demo (module docstring)."""

    def __init__(
        self, *, broker_url: str, database_url: str, state_dir: Path, dashboard_port: int
    ) -> None:
        self.broker_url = broker_url
        self.database_url = database_url
        self.state_dir = state_dir.resolve()
        self.dashboard_port = dashboard_port
        self.public_key: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log = self.state_dir / "hub.log"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}/"

    async def prepare(self) -> None:
        """The database (made if missing) and the hub's key pair; DemoHubError if the
        PostgreSQL server cannot be reached."""
        parts = urlsplit(self.database_url)
        if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            raise DemoHubError(
                f"the demo only uses a database on this machine, not {parts.hostname}"
            )
        name = parts.path.lstrip("/")
        if not name.replace("_", "").isalnum():
            raise DemoHubError(f"database name {name!r}: letters, digits and '_' only")
        admin = urlunsplit(parts._replace(path="/postgres"))
        try:
            conn = await asyncpg.connect(admin, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as error:
            raise DemoHubError(
                f"no PostgreSQL answers at {parts.hostname}:{parts.port or 5432} ({error}); "
                "on Debian: sudo apt-get install -y postgresql, or give --database URL"
            ) from error
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        keys = self.state_dir / "keys"
        private, public = keys / "hub.key.pem", keys / "hub.pub.pem"
        if not (private.exists() and public.exists()):
            private, public, _ = create_key_pair(keys, "hub")
        self.public_key = public
        self._write_config(private)

    def _write_config(self, private_key: Path) -> Path:
        path = self.state_dir / "hub.toml"
        path.write_text(f"""# By `edge-agent demo --with-hub`; hub/hub.example.toml: every key.
[broker]
url = "{self.broker_url}"
client_id = "demo-hub"
reconnect_max_s = 5

[database]
url = "{self.database_url}"

[gaps]
key_file = "{private_key}"
check_interval_s = 5
open_after_s = 15
retry_min_s = 10

[status]
sample_interval_s = 5

[dashboard]
port = {self.dashboard_port}
stale_after_s = 30
behind_s = 60
refresh_s = 5
history_hours = 1
""")
        return path

    def start(self) -> None:
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "agent", "hub", "run", "-c",
                 str(self.state_dir / "hub.toml")],
                stdout=log, stderr=log,
            )

    def wait_ready(self) -> None:
        """Until the hub's dashboard listens (bounded); DemoHubError with the log's tail if the
        hub exits or does not come up."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise DemoHubError(f"the hub exited ({self._process.returncode}):\n{self._tail()}")
            if "hub dashboard on" in self._log.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise DemoHubError(f"the hub did not come up within {_READY_TIMEOUT_S:.0f} s:\n"
                           f"{self._tail()}")

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-15:])
        return ""

    async def landed(self) -> int | None:
        """Events in the hub's table (None while it cannot be read)."""
        with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
            conn = await asyncpg.connect(self.database_url, timeout=2)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM events"))
            finally:
                await conn.close()
        return None

    async def wait_landed(self, forwarded: int, timeout: float = 15.0) -> int | None:
        """The landed count once it reached `forwarded` (what the broker acknowledged to the
        agent in this run: the hub lands it a moment later), or what it is after `timeout`."""
        deadline = time.monotonic() + timeout
        landed = await self.landed()
        while (landed is None or landed < forwarded) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            landed = await self.landed()
        return landed

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> DemoHub:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
