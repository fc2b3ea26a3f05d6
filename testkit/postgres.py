"""A scratch database in the machine's PostgreSQL, made for one test and dropped after it.

The server is 127.0.0.1:5432, user `postgres`, trust auth (CI provides it); another admin URL
can be given in EDGE_TEST_POSTGRES_ADMIN_URL. If it cannot be reached the test fails: a
skipped database test would pass unnoticed.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types
import pytest

ADMIN_URL = os.environ.get(
    "EDGE_TEST_POSTGRES_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@contextlib.asynccontextmanager
async def scratch_database(prefix: str = "edge_test") -> AsyncIterator[str]:
    """The URL of a new, empty, uniquely named database; dropped (sessions and all) after. For
    code that picks its peer by parameter and cannot take the `postgres_url` fixture."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    finally:
        admin = await _admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """The URL of a new, empty, uniquely named database; dropped (sessions and all) after."""
    async with scratch_database() as url:
        yield url


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(ADMIN_URL, timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        pytest.fail(
            f"PostgreSQL is not reachable at {ADMIN_URL} ({error!r}); the mes-sql tests need "
            "it (CI has it; locally: a PostgreSQL on 127.0.0.1:5432 with trust auth for user "
            "postgres, or set EDGE_TEST_POSTGRES_ADMIN_URL)"
        )
