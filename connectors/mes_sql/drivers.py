"""Reading an MES table after a cursor: one `TableReader` per database, and the cursor's text.

The contract of a `TableReader` (the connector owns one per session):

- `connect()` opens the session (read-only where the database allows) and runs the poll
  query once with `LIMIT 0`, so a wrong table, column or query fails here, not later.
- `fetch_after(cursor, limit)` returns at most `limit` rows (column name → value, as the
  driver returns them) whose cursor columns are all non-NULL and, as a tuple, strictly greater
  than `cursor` (`None`: from the start), in ascending cursor order; with `lag_s`, only rows
  whose first cursor column is at least `lag_s` old (see `connectors.mes_sql.config`).
- `close()` ends the session; it never raises and may be called more than once.

Errors, by what the caller must do:
- `SourceUnavailable`: transient. The database cannot be reached, refused the login, does not
  (yet) exist, dropped the session, is busy or shutting down, or a query timed out
  (`timeout_s`). The caller closes the reader and tries again with backoff.
- `SourceConfigError`: the database says the poll query is wrong (unknown table or column,
  syntax error in `query`, a cursor value of the wrong type, a read-only violation), or a
  password cannot be read. Retrying will not help; the message is the database's own.

The poll query, for table `mes.orders` and cursor `(updated_at, id)` (PostgreSQL):

    SELECT * FROM "mes"."orders" AS q
    WHERE q."updated_at" IS NOT NULL AND q."id" IS NOT NULL
      AND (q."updated_at", q."id") > ($1, $2)
      AND q."updated_at" <= now() - $3::float8 * interval '1 second'     -- lag_s > 0 only
    ORDER BY q."updated_at", q."id" LIMIT $4

A configured `query` takes the table's place as `(<query>) AS q`. Names are validated plain
names (`config`), then quoted: double quotes in PostgreSQL, brackets in SQLite (where a
double-quoted unknown name silently becomes a string literal). Values are always parameters.

Cursor text (`encode_cursor`): a JSON list of `[type, value]` pairs, e.g.
`[["datetime","2024-05-01T10:00:00.250000+00:00"],["int",42]]`; types int, float, str,
decimal (text), datetime (ISO 8601; naive stays naive), date.

Adding a database (MS SQL Server via aioodbc, Oracle via oracledb's asyncio API): one class
with these three methods that builds the same query with its own placeholders and quoting and
maps its errors to the two above, plus its URL scheme in `open_reader` and in the config's
URL check. Where the database has no row-value comparison (SQL Server, older Oracle), write the
tuple comparison out: `c1 > $1 OR (c1 = $1 AND c2 > $2)`, with `ORDER BY c1, c2` and its own
row limit (`TOP n`, `FETCH FIRST n ROWS ONLY`). An index on the cursor columns keeps it cheap.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Protocol
from urllib.parse import urlsplit
from uuid import UUID

import aiosqlite
import asyncpg  # type: ignore[import-untyped]

from connectors.base import SourceConfigError, SourceUnavailable
from connectors.credentials import CredentialUnavailable, resolve
from connectors.mes_sql.config import MesSqlSettings

Cursor = tuple[object, ...]
Row = dict[str, object]

APPLICATION_NAME = "plant-edge-agent"
# SQLSTATE classes that mean the poll query itself is wrong: 42 syntax or access (unknown
# table or column, no privilege), 22 data (a value of the wrong type), 0A not supported,
# 25 invalid transaction state (writing in the read-only session). Any other class (08
# connection, 53 resources, 57 shutdown or cancel, 40 deadlock, ...) is transient.
_PG_CONFIG_CLASSES = frozenset({"42", "22", "0A", "25"})


class TableReader(Protocol):
    """One session with one MES database; see the module docstring for the contract."""

    async def connect(self) -> None: ...

    async def fetch_after(self, cursor: Cursor | None, limit: int) -> list[Row]: ...

    async def close(self) -> None: ...


def open_reader(settings: MesSqlSettings) -> TableReader:
    """The reader for the settings' URL scheme (not yet connected)."""
    if settings.scheme == "sqlite":
        return SqliteReader(settings)
    return PostgresReader(settings)


class PostgresReader:
    """PostgreSQL through asyncpg, in a read-only session (`default_transaction_read_only`)."""

    def __init__(self, settings: MesSqlSettings) -> None:
        self._settings = settings
        self._connection: Any = None  # asyncpg.Connection (asyncpg ships no type hints)
        url = urlsplit(settings.url)
        user = f"{url.username}@" if url.username else ""
        self.where = f"PostgreSQL {user}{url.hostname}:{url.port or 5432}{url.path}"

    async def connect(self) -> None:
        password = await _password(self._settings)
        try:
            self._connection = await asyncpg.connect(
                self._settings.url,
                password=password,
                timeout=self._settings.timeout_s,
                server_settings={
                    "application_name": APPLICATION_NAME,
                    "default_transaction_read_only": "on",
                },
            )
        except asyncpg.ClientConfigurationError as error:
            raise SourceConfigError(f"{self.where}: {error}") from error
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            reason = str(error) or f"no answer within {self._settings.timeout_s} s"
            raise SourceUnavailable(f"cannot connect to {self.where}: {reason}") from error
        await _probe(self)

    async def fetch_after(self, cursor: Cursor | None, limit: int) -> list[Row]:
        if self._connection is None:
            raise RuntimeError("fetch_after before connect")
        sql, args = _poll_query(self._settings, cursor, limit, _PG_DIALECT)
        try:
            records = await self._connection.fetch(sql, *args, timeout=self._settings.timeout_s)
        except asyncpg.PostgresError as error:
            if error.sqlstate[:2] in _PG_CONFIG_CLASSES:
                raise SourceConfigError(f"{self.where}: {error}") from error
            raise SourceUnavailable(f"{self.where}: {error}") from error
        except TimeoutError as error:
            timeout = self._settings.timeout_s
            raise SourceUnavailable(f"{self.where}: query timed out after {timeout} s") from error
        except (OSError, asyncpg.InterfaceError) as error:
            raise SourceUnavailable(f"{self.where}: connection lost: {error}") from error
        return [dict(record) for record in records]

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            await connection.close(timeout=self._settings.timeout_s)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            connection.terminate()


class SqliteReader:
    """An SQLite file through aiosqlite, opened read-only (`mode=ro`: a missing file is not
    created). SQLite has no date-time type: times come back as the text or number stored."""

    def __init__(self, settings: MesSqlSettings) -> None:
        self._settings = settings
        self._connection: aiosqlite.Connection | None = None
        self.where = f"SQLite {settings.sqlite_path}"

    async def connect(self) -> None:
        # The file is opened on a thread this call awaits, and aiosqlite is handed the open
        # connection. (`aiosqlite.connect` opens it on its own worker thread, and when that
        # fails it stops the worker without waiting: the worker then reports to the event loop
        # after this call returned, "Event loop is closed" once the loop has ended.) Handed an
        # open connection, aiosqlite's worker cannot fail to start, and `close` waits for it.
        uri = f"{self._settings.sqlite_path.absolute().as_uri()}?mode=ro"
        try:
            opened = await asyncio.to_thread(_open_sqlite, uri, self._settings.timeout_s)
        except sqlite3.Error as error:
            raise SourceUnavailable(f"cannot open {self.where}: {error}") from error
        self._connection = await aiosqlite.Connection(lambda: opened, iter_chunk_size=64)
        self._connection.row_factory = sqlite3.Row
        await _probe(self)

    async def fetch_after(self, cursor: Cursor | None, limit: int) -> list[Row]:
        connection = self._connection
        if connection is None:
            raise RuntimeError("fetch_after before connect")
        sql, args = _poll_query(self._settings, cursor, limit, _SQLITE_DIALECT)
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                rows = await connection.execute_fetchall(sql, args)
        except TimeoutError as error:
            await connection.interrupt()
            timeout = self._settings.timeout_s
            raise SourceUnavailable(f"{self.where}: query timed out after {timeout} s") from error
        except (sqlite3.ProgrammingError, sqlite3.InterfaceError) as error:
            raise SourceConfigError(f"{self.where}: {error}") from error
        except sqlite3.Error as error:
            # SQLITE_ERROR: no such table or column, syntax; NOTADB: not an SQLite file.
            # Others (BUSY, LOCKED, IOERR, CANTOPEN, ...) can pass.
            code = getattr(error, "sqlite_errorcode", None)
            if code in (sqlite3.SQLITE_ERROR, sqlite3.SQLITE_NOTADB):
                raise SourceConfigError(f"{self.where}: {error}") from error
            raise SourceUnavailable(f"{self.where}: {error}") from error
        return [dict(row) for row in rows]

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close()
            except sqlite3.Error:
                pass


def _open_sqlite(uri: str, timeout_s: float) -> sqlite3.Connection:
    """The SQLite file of `uri`, for aiosqlite's worker thread: `check_same_thread=False`, as
    this thread only opens it and that one alone uses it from then on. `timeout`: how long a
    read waits for a writer's lock before "database is locked"."""
    return sqlite3.connect(uri, uri=True, timeout=timeout_s, check_same_thread=False)


async def _probe(reader: TableReader) -> None:
    """Run the poll query with LIMIT 0 (a wrong name fails at connect); close on failure."""
    try:
        await reader.fetch_after(None, 0)
    except BaseException:
        await reader.close()
        raise


class _Dialect(Protocol):
    def placeholder(self, number: int) -> str: ...

    def name(self, name: str) -> str: ...

    def older_than(self, column: str, seconds: str) -> str: ...


class _Postgres:
    def placeholder(self, number: int) -> str:
        return f"${number}"

    def name(self, name: str) -> str:
        return f'"{name}"'

    def older_than(self, column: str, seconds: str) -> str:
        return f"{column} <= now() - {seconds}::float8 * interval '1 second'"


class _Sqlite:
    def placeholder(self, number: int) -> str:
        return "?"

    def name(self, name: str) -> str:
        return f"[{name}]"

    def older_than(self, column: str, seconds: str) -> str:
        return f"julianday({column}) <= julianday('now') - {seconds} / 86400.0"


_PG_DIALECT = _Postgres()
_SQLITE_DIALECT = _Sqlite()


def _poll_query(
    settings: MesSqlSettings, cursor: Cursor | None, limit: int, dialect: _Dialect
) -> tuple[str, list[object]]:
    """The poll query's text and parameters (see the module docstring)."""
    args: list[object] = []

    def bind(value: object) -> str:
        args.append(value)
        return dialect.placeholder(len(args))

    if settings.query is not None:
        source = f"(\n{settings.query}\n) AS q"  # newlines: the query may end in a -- comment
    else:
        source = ".".join(dialect.name(part) for part in str(settings.table).split(".")) + " AS q"
    columns = [f"q.{dialect.name(column)}" for column in settings.cursor]
    where = [f"{column} IS NOT NULL" for column in columns]
    if cursor is not None:
        if len(cursor) != len(columns):
            raise SourceConfigError(
                f"the stored cursor has {len(cursor)} values but `cursor` names "
                f"{len(columns)} columns: reset this source's cursor after changing `cursor`"
            )
        where.append(f"{_row(columns)} > {_row([bind(value) for value in cursor])}")
    if settings.lag_s > 0:
        where.append(dialect.older_than(columns[0], bind(settings.lag_s)))
    order = ", ".join(columns)
    sql = f"SELECT * FROM {source} WHERE {' AND '.join(where)} ORDER BY {order} LIMIT {bind(limit)}"
    return sql, args


def _row(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"({', '.join(items)})"


async def _password(settings: MesSqlSettings) -> str | None:
    """The PostgreSQL password from `password_env` or `password_file` (a path or
    `credential:NAME`, `connectors.credentials`), read at each connect (so a rotated secret is
    picked up); None: asyncpg's defaults (PGPASSWORD, ~/.pgpass)."""
    if settings.password_env is not None:
        password = os.environ.get(settings.password_env)
        if not password:
            raise SourceConfigError(f"password_env: ${settings.password_env} is not set")
        return password
    if settings.password_file is not None:
        try:
            path = resolve("password_file", settings.password_file)
        except CredentialUnavailable as error:
            raise SourceConfigError(str(error)) from error
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except (OSError, UnicodeError) as error:
            raise SourceConfigError(f"password_file: cannot read it: {error}") from error
        return text.rstrip("\r\n")
    return None


# Cursor text ---------------------------------------------------------------------------------

_DECODERS: dict[str, Callable[[Any], object]] = {
    "int": lambda raw: raw if type(raw) is int else _bad(raw),
    "float": lambda raw: float(raw) if type(raw) in (int, float) else _bad(raw),
    "str": lambda raw: raw if isinstance(raw, str) else _bad(raw),
    "decimal": lambda raw: Decimal(raw) if isinstance(raw, str) else _bad(raw),
    "datetime": lambda raw: datetime.fromisoformat(raw) if isinstance(raw, str) else _bad(raw),
    "date": lambda raw: date.fromisoformat(raw) if isinstance(raw, str) else _bad(raw),
}


def encode_cursor(values: Cursor) -> str:
    """The text to store for a row's cursor values (a TypeError for a type that cannot be a
    cursor: the connector reports that as a config error)."""
    return json.dumps([_tagged(value) for value in values], separators=(",", ":"),
                      allow_nan=False)


def decode_cursor(text: str) -> Cursor:
    """The cursor values from their stored text; ValueError if it is not one `encode_cursor`
    wrote."""
    try:
        items = json.loads(text)
        if not isinstance(items, list) or not items:
            raise ValueError("not a non-empty JSON list")
        values = []
        for item in items:
            if not (isinstance(item, list) and len(item) == 2 and item[0] in _DECODERS):
                raise ValueError(f"{item!r} is not a [type, value] pair")
            values.append(_DECODERS[item[0]](item[1]))
        return tuple(values)
    except (ValueError, TypeError, ArithmeticError) as error:  # Decimal: InvalidOperation
        raise ValueError(
            f"stored cursor {text[:200]!r} cannot be read ({error}); reset this source's cursor"
        ) from error


def _tagged(value: object) -> list[object]:
    # bool before int (it is one); datetime before date (it is one).
    if isinstance(value, bool):
        raise TypeError("a bool cannot be a cursor value")
    if isinstance(value, int):
        return ["int", value]
    if isinstance(value, float):
        return ["float", value]
    if isinstance(value, str):
        return ["str", value]
    if isinstance(value, Decimal):
        return ["decimal", str(value)]
    if isinstance(value, datetime):
        return ["datetime", value.isoformat()]
    if isinstance(value, date):
        return ["date", value.isoformat()]
    raise TypeError(
        f"a {type(value).__name__} cannot be a cursor value "
        "(int, float, str, Decimal, datetime or date)"
    )


def _bad(raw: object) -> object:
    raise ValueError(f"{raw!r} does not fit its type tag")


# Row values ----------------------------------------------------------------------------------


def plain(value: object) -> int | float | str | bool | datetime | date | None:
    """A column value as the record mapping takes it: Decimal → int (integral) or float, UUID
    and time of day → text; datetime and date stay. ValueError for bytes and anything else
    (arrays, JSON documents, intervals)."""
    if value is None or isinstance(value, bool | int | float | str | date):
        return value
    if isinstance(value, Decimal):
        integral = value.is_finite() and value == value.to_integral_value()
        return int(value) if integral else float(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        raise ValueError("binary column values cannot go into an event")
    raise ValueError(f"{type(value).__name__} column values cannot go into an event")
