"""The interface-table readers against a real PostgreSQL (a scratch database) and real SQLite
files: cursor order, ties, batches, a custom query, lag, concurrent writes, error classes,
read-only sessions; plus the cursor text, `plain` and the settings' validation."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import aiosqlite
import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types
import pytest
from pydantic import ValidationError

from connectors.base import SourceConfigError, SourceUnavailable
from connectors.mes_sql.config import MesSqlSettings
from connectors.mes_sql.drivers import (
    TableReader,
    decode_cursor,
    encode_cursor,
    open_reader,
    plain,
)
from testkit.broker import free_loopback_port

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


@dataclass
class Scratch:
    """One MES database for a test: a PostgreSQL scratch database or an SQLite file."""

    kind: str  # "postgresql" | "sqlite"
    url: str

    @property
    def timestamp(self) -> str:
        """The column type for times (SQLite stores ISO 8601 text)."""
        return "timestamptz" if self.kind == "postgresql" else "text"

    def settings(self, **fields: Any) -> MesSqlSettings:
        return MesSqlSettings(url=self.url, **fields)

    async def run(self, sql: str, *rows: tuple[object, ...]) -> None:
        """One statement (`?` placeholders), once or once per row of parameters; committed."""
        if self.kind == "postgresql":
            numbers = itertools.count(1)
            connection = await asyncpg.connect(
                self.url, server_settings={"TimeZone": "UTC"}
            )
            try:
                pg_sql = re.sub(r"\?", lambda _: f"${next(numbers)}", sql)
                if rows:
                    await connection.executemany(pg_sql, rows)
                else:
                    await connection.execute(pg_sql)
            finally:
                await connection.close()
            return
        async with aiosqlite.connect(self.url.removeprefix("sqlite:///")) as db:
            texts = [tuple(v.isoformat(" ") if isinstance(v, datetime) else v for v in row)
                     for row in rows]
            await (db.executemany(sql, texts) if rows else db.execute(sql))
            await db.commit()


@pytest.fixture(params=["postgresql", "sqlite"])
def scratch(request: pytest.FixtureRequest, tmp_path: Path) -> Scratch:
    if request.param == "postgresql":
        return Scratch("postgresql", request.getfixturevalue("postgres_url"))
    sqlite3.connect(tmp_path / "mes.db").close()
    return Scratch("sqlite", f"sqlite:///{tmp_path / 'mes.db'}")


@asynccontextmanager
async def connected(settings: MesSqlSettings) -> AsyncIterator[TableReader]:
    reader = open_reader(settings)
    await reader.connect()
    try:
        yield reader
    finally:
        await reader.close()


async def read_all(
    reader: TableReader, columns: list[str], limit: int
) -> list[list[dict[str, object]]]:
    """Every batch from the start until an empty one, each fetched after the last row's cursor
    (through its stored text, as the connector does)."""
    batches: list[list[dict[str, object]]] = []
    cursor = None
    while rows := await reader.fetch_after(cursor, limit):
        batches.append(rows)
        cursor = decode_cursor(encode_cursor(tuple(rows[-1][c] for c in columns)))
    return batches


# Reading after a cursor ----------------------------------------------------------------------


async def test_one_column_cursor_reads_in_order_in_batches(scratch: Scratch) -> None:
    await scratch.run("CREATE TABLE orders (seq integer, wo text)")
    seqs = [5, 1, 3, None, 2, 4, 7, 6]
    await scratch.run("INSERT INTO orders VALUES (?, ?)", *[(s, f"WO-{s}") for s in seqs])

    async with connected(scratch.settings(table="orders", cursor=["seq"])) as reader:
        batches = await read_all(reader, ["seq"], limit=3)
        after_four = await reader.fetch_after((4,), 10)

    assert [[row["seq"] for row in batch] for batch in batches] == [[1, 2, 3], [4, 5, 6], [7]]
    assert batches[0][0] == {"seq": 1, "wo": "WO-1"}
    # Rows with a NULL cursor column are never read; the cursor is strictly exclusive.
    assert [row["seq"] for row in after_four] == [5, 6, 7]


async def test_timestamp_and_id_cursor_steps_over_ties(scratch: Scratch) -> None:
    await scratch.run(f"CREATE TABLE completions (updated_at {scratch.timestamp}, id integer)")
    t1 = T0 + timedelta(seconds=1)
    rows = [(t1, 1), (T0, 3), (T0, 1), (t1, 2), (T0, 2), (T0 + timedelta(microseconds=1), 9)]
    await scratch.run("INSERT INTO completions VALUES (?, ?)", *rows)
    settings = scratch.settings(table="completions", cursor=["updated_at", "id"])

    async with connected(settings) as reader:
        batches = await read_all(reader, ["updated_at", "id"], limit=2)
        stored_t0 = T0 if scratch.kind == "postgresql" else T0.isoformat(" ")  # SQLite: text
        after_tie = await reader.fetch_after((stored_t0, 2), 100)

    seen = [row["id"] for batch in batches for row in batch]
    assert seen == [1, 2, 3, 9, 1, 2]  # time, then id: (T0,1..3), (T0+1µs,9), (t1,1..2)
    assert [len(batch) for batch in batches] == [2, 2, 2]
    assert [row["id"] for row in after_tie] == [3, 9, 1, 2]


async def test_custom_query(scratch: Scratch) -> None:
    await scratch.run("CREATE TABLE orders (id integer, wo text, good integer)")
    await scratch.run("INSERT INTO orders VALUES (?, ?, ?)",
                      (1, "WO-1", 10), (2, "TEST", 0), (3, "WO-3", 30))
    query = """
        SELECT id AS n, wo, good * 2 AS doubled
        FROM orders
        WHERE wo <> 'TEST'  -- test orders stay out
    """
    async with connected(scratch.settings(query=query, cursor=["n"])) as reader:
        rows = await reader.fetch_after(None, 10)
        later = await reader.fetch_after((1,), 10)

    assert rows == [{"n": 1, "wo": "WO-1", "doubled": 20}, {"n": 3, "wo": "WO-3", "doubled": 60}]
    assert later == rows[1:]


async def test_lag_holds_back_rows_that_are_too_recent(scratch: Scratch) -> None:
    await scratch.run(f"CREATE TABLE completions (updated_at {scratch.timestamp}, id integer)")
    now = datetime.now(UTC)
    await scratch.run("INSERT INTO completions VALUES (?, ?)",
                      (now - timedelta(minutes=5), 1), (now - timedelta(seconds=2), 2))
    columns = ["updated_at", "id"]

    async with connected(scratch.settings(table="completions", cursor=columns, lag_s=60)) as r:
        lagged = await r.fetch_after(None, 10)
    async with connected(scratch.settings(table="completions", cursor=columns)) as r:
        at_once = await r.fetch_after(None, 10)

    assert [row["id"] for row in lagged] == [1]
    assert [row["id"] for row in at_once] == [1, 2]


async def test_rows_written_while_polling_are_each_read_once(scratch: Scratch) -> None:
    await scratch.run("CREATE TABLE events (id integer PRIMARY KEY, wo text)")
    total = 120

    async def write() -> None:
        for number in range(1, total + 1):
            await scratch.run("INSERT INTO events VALUES (?, ?)", (number, f"WO-{number}"))
            if number % 10 == 0:
                await asyncio.sleep(0.01)

    seen: list[object] = []
    async with connected(scratch.settings(table="events", cursor=["id"])) as reader:
        writer = asyncio.create_task(write())
        cursor_text: str | None = None
        while True:
            done = writer.done()
            cursor = decode_cursor(cursor_text) if cursor_text else None
            rows = await reader.fetch_after(cursor, 7)
            seen.extend(row["id"] for row in rows)
            if rows:
                cursor_text = encode_cursor((rows[-1]["id"],))
            elif done:  # the writer had finished before this empty fetch began
                break
            else:
                await asyncio.sleep(0.005)
        await writer

    assert seen == list(range(1, total + 1))


# Errors ----------------------------------------------------------------------------------------


async def test_unknown_table_column_or_bad_query_is_a_config_error(scratch: Scratch) -> None:
    await scratch.run("CREATE TABLE orders (id integer, wo text)")
    wrong = [
        ({"table": "no_such_table", "cursor": ["id"]}, "no_such_table"),
        ({"table": "orders", "cursor": ["no_such_column"]}, "no_such_column"),
        ({"query": "SELECT id FROM orders WHERE", "cursor": ["id"]}, "syntax"),
    ]
    for fields, needle in wrong:
        with pytest.raises(SourceConfigError, match=needle):
            await open_reader(scratch.settings(**fields)).connect()


async def test_unreachable_postgres_is_unavailable_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_loopback_port()
    monkeypatch.setenv("MES_DB_PASSWORD", "s3cret-pw")
    settings = MesSqlSettings(url=f"postgresql://edge@127.0.0.1:{port}/mes",
                              password_env="MES_DB_PASSWORD", table="t", cursor=("id",))

    with pytest.raises(SourceUnavailable) as caught:
        await open_reader(settings).connect()

    assert f"127.0.0.1:{port}/mes" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


async def test_unknown_database_or_role_is_unavailable(postgres_url: str) -> None:
    unknown_db = re.sub(r"/[^/]+$", "/no_such_db", postgres_url)
    unknown_role = postgres_url.replace("postgres@", "no_such_role@")
    for url, needle in [(unknown_db, "no_such_db"), (unknown_role, "no_such_role")]:
        with pytest.raises(SourceUnavailable, match=needle):
            await open_reader(MesSqlSettings(url=url, table="t", cursor=("id",))).connect()


async def test_missing_password_env_is_a_config_error(postgres_url: str) -> None:
    os.environ.pop("EDGE_TEST_UNSET_PASSWORD", None)
    settings = MesSqlSettings(url=postgres_url, password_env="EDGE_TEST_UNSET_PASSWORD",
                              table="t", cursor=("id",))
    with pytest.raises(SourceConfigError, match="EDGE_TEST_UNSET_PASSWORD"):
        await open_reader(settings).connect()


async def test_slow_query_times_out_as_unavailable(postgres_url: str) -> None:
    scratch = Scratch("postgresql", postgres_url)
    await scratch.run("CREATE TABLE orders (id integer)")
    await scratch.run("INSERT INTO orders VALUES (1)")
    settings = scratch.settings(query="SELECT id, pg_sleep(5) AS slept FROM orders",
                                cursor=["id"], timeout_s=0.3)
    async with connected(settings) as reader:
        with pytest.raises(SourceUnavailable, match="timed out"):
            await reader.fetch_after(None, 10)


async def test_postgres_session_is_read_only(postgres_url: str) -> None:
    scratch = Scratch("postgresql", postgres_url)
    await scratch.run("CREATE TABLE orders (id integer)")
    await scratch.run("CREATE SEQUENCE counter")
    await scratch.run("INSERT INTO orders VALUES (1)")
    writing = "SELECT id, nextval('counter') AS n FROM orders"  # a query with a side effect

    async with connected(scratch.settings(query=writing, cursor=["id"])) as reader:
        with pytest.raises(SourceConfigError, match="read-only transaction"):
            await reader.fetch_after(None, 10)


async def test_sqlite_file_is_opened_read_only(tmp_path: Path) -> None:
    path = tmp_path / "mes.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id integer)")
        db.execute("INSERT INTO orders VALUES (1)")
    db.close()
    path.chmod(stat.S_IRUSR | stat.S_IRGRP)  # a file the agent may only read

    async with connected(MesSqlSettings(url=f"sqlite:///{path}", table="orders",
                                        cursor=("id",))) as reader:
        assert await reader.fetch_after(None, 10) == [{"id": 1}]

    missing = tmp_path / "not-there.db"
    threads = set(threading.enumerate())
    with pytest.raises(SourceUnavailable, match=r"not-there\.db"):
        await open_reader(MesSqlSettings(url=f"sqlite:///{missing}", table="orders",
                                         cursor=("id",))).connect()
    assert not missing.exists()  # read-only: never created
    # The failed open left no thread of its own behind, to report to this event loop after
    # it closed (the loop's executor, "asyncio_N", is the loop's to end).
    assert [thread.name for thread in threading.enumerate()
            if thread not in threads and not thread.name.startswith("asyncio_")] == []


# Cursor text ---------------------------------------------------------------------------------

CURSOR_VALUES = [
    42,
    -(2**62),
    2.5,
    "WO-000017/ä",
    Decimal("12.340"),
    Decimal("1E+3"),
    datetime(2024, 5, 1, 10, 0, 0, 250_000, tzinfo=UTC),
    datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2))),
    datetime(2024, 5, 1, 10, 0, 0, 1),  # naive
    date(2024, 5, 1),
]


@pytest.mark.parametrize("value", CURSOR_VALUES, ids=repr)
def test_cursor_text_round_trips(value: object) -> None:
    decoded = decode_cursor(encode_cursor((value, 7)))

    assert decoded == (value, 7)
    assert type(decoded[0]) is type(value)
    if isinstance(value, datetime):
        assert isinstance(decoded[0], datetime)  # as the type check above: narrows it
        assert decoded[0].utcoffset() == value.utcoffset()
    if isinstance(value, Decimal):
        assert str(decoded[0]) == str(value)


@pytest.mark.parametrize("column_type, values", [
    ("bigint", [3, 10, 2**40]),
    ("text", ["A-1", "A-2", "B-1"]),
    ("numeric(12,3)", [Decimal("1.500"), Decimal("2.000"), Decimal("10.250")]),
    ("timestamptz", [T0, T0 + timedelta(microseconds=1), T0 + timedelta(days=1)]),
    ("timestamp", [datetime(2024, 5, 1, 10), datetime(2024, 5, 1, 10, 0, 0, 1),
                   datetime(2024, 5, 2)]),
    ("date", [date(2024, 5, 1), date(2024, 5, 2), date(2024, 6, 1)]),
])
async def test_postgres_values_resume_through_the_cursor_text(
    postgres_url: str, column_type: str, values: list[object],
) -> None:
    scratch = Scratch("postgresql", postgres_url)
    await scratch.run(f"CREATE TABLE t (c {column_type})")
    await scratch.run("INSERT INTO t VALUES (?)", *[(value,) for value in values])

    async with connected(scratch.settings(table="t", cursor=["c"])) as reader:
        first = await reader.fetch_after(None, 1)
        stored = encode_cursor((first[0]["c"],))
        rest = await reader.fetch_after(decode_cursor(stored), 10)

    assert [row["c"] for row in first + rest] == values


@pytest.mark.parametrize("text", [
    "", "not json", "[]", '{"int": 1}', '[["int"]]', '[["uuid", "x"]]', '[["int", "1"]]',
    '[["int", true]]', '[["decimal", "abc"]]', '[["datetime", "yesterday"]]',
    '[["date", "2024-05-01T10:00"]]',
])
def test_malformed_stored_cursor_is_a_clear_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"stored cursor .* cannot be read"):
        decode_cursor(text)


@pytest.mark.parametrize("value", [b"\x00", True, None, UUID(int=1)], ids=repr)
def test_values_that_cannot_be_a_cursor(value: object) -> None:
    with pytest.raises(TypeError, match="cannot be a cursor value"):
        encode_cursor((value,))


async def test_stored_cursor_of_another_width_is_a_config_error(scratch: Scratch) -> None:
    await scratch.run("CREATE TABLE orders (id integer)")
    async with connected(scratch.settings(table="orders", cursor=["id"])) as reader:
        with pytest.raises(SourceConfigError, match="reset"):
            await reader.fetch_after((T0, 1), 10)


def test_plain_values() -> None:
    assert plain(Decimal("2.000")) == 2 and type(plain(Decimal("2.000"))) is int
    assert plain(Decimal("2.5")) == 2.5
    assert plain(UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    assert plain(T0) is T0 and plain(None) is None and plain(True) is True
    for value in (b"\x01", bytearray(b"x"), [1, 2], timedelta(seconds=1)):
        with pytest.raises(ValueError, match="cannot go into an event"):
            plain(value)


# Settings --------------------------------------------------------------------------------------

PG = "postgresql://edge@db.plant.local:5432/mes"


@pytest.mark.parametrize("fields, message", [
    ({"url": PG, "cursor": ["id"]}, "exactly one of table"),
    ({"url": PG, "table": "t", "query": "SELECT 1 AS id", "cursor": ["id"]}, "exactly one"),
    ({"url": "mysql://edge@db/mes", "table": "t", "cursor": ["id"]}, "postgresql://"),
    ({"url": "postgresql://edge:pw@db/mes", "table": "t", "cursor": ["id"]}, "password_env"),
    ({"url": "postgresql://edge@db", "table": "t", "cursor": ["id"]}, "/database"),
    ({"url": "postgresql://edge@db:99999/mes", "table": "t", "cursor": ["id"]}, "port"),
    ({"url": "sqlite://mes.db", "table": "t", "cursor": ["id"]}, "sqlite:///"),
    ({"url": PG, "table": "orders; DROP TABLE x", "cursor": ["id"]}, "not a table name"),
    ({"url": PG, "table": "a.b.c", "cursor": ["id"]}, "not a table name"),
    ({"url": PG, "table": "t", "cursor": ['id"--']}, "not a plain SQL name"),
    ({"url": PG, "table": "t", "cursor": []}, "at least 1"),
    ({"url": PG, "table": "t", "cursor": ["a", "b", "c"]}, "at most 2"),
    ({"url": PG, "table": "t", "cursor": ["id", "id"]}, "must differ"),
    ({"url": PG, "query": "DELETE FROM t", "cursor": ["id"]}, "SELECT"),
    ({"url": PG, "table": "t", "cursor": ["id"], "batch_rows": 0}, "batch_rows"),
    ({"url": PG, "table": "t", "cursor": ["id"], "password_env": "A",
      "password_file": "/run/pw"}, "at most one"),
    ({"url": "sqlite:///mes.db", "table": "t", "cursor": ["id"], "password_env": "A"},
     "postgresql:// only"),
    ({"url": PG, "table": "t", "cursor": ["id"], "event": "x"}, "Extra inputs"),
])
def test_settings_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MesSqlSettings(**fields)


def test_settings_defaults_and_base_dir() -> None:
    settings = MesSqlSettings(url="sqlite:///mes/interface.db", table="mes.orders",
                              cursor=("updated_at", "id"))
    assert (settings.batch_rows, settings.poll_s, settings.lag_s) == (500, 2.0, 0.0)
    assert settings.with_base_dir(Path("/etc/edge-agent")).sqlite_path == \
        Path("/etc/edge-agent/mes/interface.db")
    absolute = MesSqlSettings(url="sqlite:////var/lib/mes.db", table="t", cursor=("id",))
    assert absolute.with_base_dir(Path("/etc/edge-agent")) is absolute

    postgres = MesSqlSettings(url=PG, password_file=Path("mes-db.pw"), cursor=("id",),
                              query="SELECT * FROM t;  ")
    assert postgres.with_base_dir(Path("/etc/edge-agent")).password_file == \
        Path("/etc/edge-agent/mes-db.pw")
    assert postgres.query == "SELECT * FROM t"
