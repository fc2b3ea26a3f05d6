"""One real peer per connector, for the connector conformance suite (test_connector_contract.py).

A peer gives the suite what it needs to drive the clauses of `connectors.base` against its
connector, built through its row in `config.source_types`:

- `source()`: a `[[sources]]` entry that works against the peer; `misconfigured()`: one that
  cannot (the connector must end with `SourceConfigError`).
- `offer_fact()`: make the peer report one source fact; called again, the same fact again
  (so two connectors, or one run after another, see the same thing).
- `go_down()`: the peer cannot be reached any more (the connector must end with
  `SourceUnavailable`).
- `open_sessions()`: how many sessions the peer holds open for the agent (None: it cannot
  tell), so the suite sees that a cancelled connector closed its own.

A clause that cannot apply to a peer is listed in `NOT_APPLICABLE` with the reason; the suite
marks that case skipped with it (never a silent skip).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types

from config.source_types import SOURCE_TYPES, Source
from testkit.broker import free_loopback_port
from testkit.opcua_servers import TEMPERATURE, LineServer, serve_line
from testkit.postgres import ADMIN_URL, scratch_database

# The instant every peer's fact carries: a fixed source timestamp, so a fact offered twice is
# the same fact.
FACT_TIME = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
TOKEN = "conformance-token"

RECORD_COLUMNS: dict[str, Any] = {
    "order": {"column": "wo"}, "good": {"column": "good", "type": "float", "unit": "kg"},
}


class Peer(Protocol):
    """What the suite drives (see the module docstring). `one_at_a_time`: two connectors
    cannot share the peer at once (one port, one folder)."""

    one_at_a_time: bool

    def source(self) -> Source: ...

    def misconfigured(self) -> Source: ...

    async def offer_fact(self) -> None: ...

    async def go_down(self) -> None: ...

    async def open_sessions(self) -> int | None: ...



def _validate(entry: dict[str, Any]) -> Source:
    model: Any = SOURCE_TYPES[entry["type"]].model
    source: Source = model.model_validate(entry)
    return source


class OpcUaPeer:
    """A real asyncua server (`testkit.opcua_servers`); the fact: Temperature = 21.5 at
    FACT_TIME."""

    one_at_a_time = True

    def __init__(self, line: LineServer) -> None:
        self.line = line

    def _entry(self, **extra: Any) -> dict[str, Any]:
        return {"name": "line1", "type": "opcua", "endpoint": self.line.endpoint,
                "publishing_interval_ms": 20, "signal_retry_s": 0.2,
                "signals": [{"node": TEMPERATURE, "event": "telemetry", "asset": "line1"}],
                **extra}

    def source(self) -> Source:
        return _validate(self._entry())

    def misconfigured(self) -> Source:
        # A user whose password comes from a variable that is not set: no retry helps.
        return _validate(self._entry(username="operator",
                                     password_env="EDGE_CONFORMANCE_UNSET_PASSWORD"))

    async def offer_fact(self) -> None:
        await self.line.write("Temperature", 21.5, at=FACT_TIME)

    async def go_down(self) -> None:
        await self.line.drop_connections()

    async def open_sessions(self) -> int | None:
        bserver = self.line.server.bserver
        return None if bserver is None else len(bserver.clients)



class SimulatedPeer:
    """No peer: the simulated clock is the source. The fact: tick k of the signal, which every
    connector running at tick k sees alike."""

    one_at_a_time = False

    def source(self) -> Source:
        return _validate({"name": "sim", "type": "simulated", "rate_hz": 50.0,
                          "signals": [{"node": "counter", "event": "telemetry",
                                       "asset": "line1"}]})

    def misconfigured(self) -> Source:
        raise AssertionError("not applicable (NOT_APPLICABLE)")

    async def offer_fact(self) -> None:
        return None

    async def go_down(self) -> None:
        raise AssertionError("not applicable (NOT_APPLICABLE)")

    async def open_sessions(self) -> int | None:
        return None



class MesFilesPeer:
    """A drop folder; the fact: one CSV file with one row."""

    one_at_a_time = True

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()

    def _entry(self) -> dict[str, Any]:
        return {"name": "drop", "type": "mes-files", "folder": str(self.folder),
                "event": "workorder.completed", "asset": "line1", "stable_s": 0, "poll_s": 0.05,
                "time_column": "at", "columns": RECORD_COLUMNS}

    def source(self) -> Source:
        return _validate(self._entry())

    def misconfigured(self) -> Source:
        raise AssertionError("not applicable (NOT_APPLICABLE)")

    async def offer_fact(self) -> None:
        text = f"wo,good,at\nWO-1,12.5,{FACT_TIME.isoformat()}\n"
        (self.folder / "completions.csv").write_text(text)

    async def go_down(self) -> None:
        self.folder.rename(self.folder.with_name("unmounted"))

    async def open_sessions(self) -> int | None:
        return None



class MesHttpPeer:
    """The MES as an HTTP client posting to the webhook; the fact: one completion posted."""

    one_at_a_time = True

    def __init__(self, tokens: Path) -> None:
        self.port = free_loopback_port()
        tokens.write_text(TOKEN + "\n")
        self.tokens = tokens

    def _entry(self, port: int) -> dict[str, Any]:
        return {"name": "webhook", "type": "mes-http", "listen": f"127.0.0.1:{port}",
                "tokens_file": str(self.tokens),
                "routes": [{"path": "/mes/completions", "event": "workorder.completed",
                            "asset": "line1", "time_column": "at", "columns": RECORD_COLUMNS}]}

    def source(self) -> Source:
        return _validate(self._entry(self.port))

    def misconfigured(self) -> Source:
        # Its tokens file holds no token: no post could ever be accepted.
        self.tokens.with_name("empty-tokens").write_text("")
        entry = self._entry(free_loopback_port())
        entry["tokens_file"] = str(self.tokens.with_name("empty-tokens"))
        return _validate(entry)

    async def offer_fact(self) -> None:
        body = {"wo": "WO-1", "good": 12.5, "at": FACT_TIME.isoformat()}
        async with aiohttp.ClientSession() as client:
            async with client.post(f"http://127.0.0.1:{self.port}/mes/completions",
                                   data=json.dumps(body),
                                   headers={"Authorization": f"Bearer {TOKEN}",
                                            "Content-Type": "application/json"}) as answer:
                assert answer.status < 300, await answer.text()

    async def go_down(self) -> None:
        raise AssertionError("not applicable (NOT_APPLICABLE)")

    async def open_sessions(self) -> int | None:
        """1 while the port accepts connections, 0 once nothing listens there."""
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return 0
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return 1



_TABLE = "CREATE TABLE completions (id INTEGER PRIMARY KEY, wo TEXT, good REAL, at TEXT)"
_ROW = "INSERT INTO completions (id, wo, good, at) VALUES (1, 'WO-1', 12.5, '{at}')"


class SqlitePeer:
    """An interface table in an SQLite file; the fact: one row (the same row, read again by a
    connector that starts from no cursor)."""

    one_at_a_time = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute(_TABLE)

    def _entry(self, **extra: Any) -> dict[str, Any]:
        return {"name": "table", "type": "mes-sql", "url": self.url,
                "table": "completions", "cursor": ["id"], "poll_s": 0.05,
                "event": "workorder.completed", "asset": "line1", "time_column": "at",
                "columns": RECORD_COLUMNS, **extra}

    def source(self) -> Source:
        return _validate(self._entry())

    def misconfigured(self) -> Source:
        return _validate(self._entry(table="no_such_table"))

    async def offer_fact(self) -> None:
        with contextlib.closing(sqlite3.connect(self.path)) as db, db:
            db.execute(_ROW.format(at=FACT_TIME.isoformat()).replace("INSERT", "INSERT OR IGNORE"))

    async def go_down(self) -> None:
        self.path.unlink()

    async def open_sessions(self) -> int | None:
        return None



class PostgresPeer(SqlitePeer):
    """The same interface table in a scratch database of the real PostgreSQL on 127.0.0.1:5432
    (`testkit.postgres`)."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def _execute(self, statement: str) -> None:
        db = await asyncpg.connect(self.url)
        try:
            await db.execute(statement)
        finally:
            await db.close()

    async def offer_fact(self) -> None:
        await self._execute(_ROW.format(at=FACT_TIME.isoformat()) + " ON CONFLICT DO NOTHING")

    async def go_down(self) -> None:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE "{self._name}" WITH (FORCE)')
        finally:
            await admin.close()

    @property
    def _name(self) -> str:
        return urlsplit(self.url).path.removeprefix("/")

    async def open_sessions(self) -> int | None:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            count: int = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", self._name)
        finally:
            await admin.close()
        return count


# Clause -> peer name -> why the clause does not apply to that connector.
NOT_APPLICABLE: dict[str, dict[str, str]] = {
    "peer_down": {
        "simulated": "no peer: the simulated clock cannot go away",
        "mes-http": "the webhook is the server: an MES that stops posting is no error",
    },
    "bad_config": {
        "simulated": "every simulated config the schema accepts works",
        "mes-files": "every drop config the schema accepts can work: a missing folder is "
                     "transient (a share not mounted yet), a bad file a poison record",
    },
}
PEERS: Sequence[str] = ("opcua", "simulated", "mes-files", "mes-http", "mes-sql-sqlite",
                        "mes-sql-postgres")


@contextlib.asynccontextmanager
async def open_peer(name: str, tmp_path: Path) -> AsyncIterator[Peer]:
    """The started peer `name` (one of PEERS), stopped after."""
    if name == "opcua":
        async with serve_line(free_loopback_port()) as line:
            yield OpcUaPeer(line)
    elif name == "simulated":
        yield SimulatedPeer()
    elif name == "mes-files":
        yield MesFilesPeer(tmp_path / "drop")
    elif name == "mes-http":
        yield MesHttpPeer(tmp_path / "tokens")
    elif name == "mes-sql-sqlite":
        yield SqlitePeer(tmp_path / "mes.db")
    else:
        async with scratch_database("edge_conf") as url:
            peer = PostgresPeer(url)
            await peer._execute(_TABLE.replace("INTEGER PRIMARY KEY", "BIGINT PRIMARY KEY")
                                .replace("REAL", "float8"))
            yield peer
