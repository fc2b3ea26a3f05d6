"""Settings of the interface-table connector: `[[sources]]` with `type = "mes-sql"`.

Every key, with its default and what it does: `connectors/mes_sql/sample.toml` (loaded by
tests/unit/test_samples.py).

Names (table, schema, cursor columns) are plain SQL names (letters, digits, `_`), quoted as
written, so they match case-sensitively: PostgreSQL stores an unquoted `CREATE TABLE Orders`
as `orders`. A `query`'s cursor columns are its output column names.

The cursor: rows are read in ascending order of the cursor columns, only those strictly after
the last one read (a tuple comparison); rows with a NULL cursor column are never read. This
sees every row only if rows become visible in cursor order. A counter from a sequence or a
`now()` timestamp does not quite: they are taken when a transaction writes the row, and a
slower transaction can commit a smaller value after a larger one was already read; that row
would be skipped for good. `lag_s` is the remedy when the first cursor column is a timestamp:
a row is read only once that column is at least `lag_s` old (by the database's clock; in
PostgreSQL, a column without a zone is read in the session's TimeZone; SQLite compares ISO
text times as UTC), so any transaction shorter than `lag_s` has committed by then. The price:
every row arrives `lag_s` later. 0 (the default) reads rows at once, right for a cursor that
a single writer fills in commit order. A cursor of an id alone has no such remedy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import parse_qs, urlsplit

from pydantic import AfterValidator, Field, field_validator, model_validator

from connectors.base import ConnectorSettings
from connectors.credentials import check_reference, relative_to

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
SQLITE_PREFIX = "sqlite:///"


def _column_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a plain SQL name (a letter or _, then letters, digits, _; "
            "at most 63)"
        )
    return name


def _table_name(name: str) -> str:
    if not all(_NAME.fullmatch(part) for part in name.split(".", 1)):
        raise ValueError(
            f"{name!r} is not a table name: `table` or `schema.table`, each a plain SQL name "
            "(a letter or _, then letters, digits, _; at most 63)"
        )
    return name


ColumnName = Annotated[str, AfterValidator(_column_name)]
TableName = Annotated[str, AfterValidator(_table_name)]


class MesSqlSettings(ConnectorSettings):
    """Where the rows are and how they are polled (see the module docstring)."""

    url: Annotated[str, Field(min_length=1, max_length=2000)]
    password_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] | None = None
    password_file: Path | None = None
    table: TableName | None = None
    query: Annotated[str, Field(min_length=1, max_length=20_000)] | None = None
    cursor: Annotated[tuple[ColumnName, ...], Field(min_length=1, max_length=2)]
    batch_rows: Annotated[int, Field(ge=1, le=10_000)] = 500
    poll_s: Annotated[float, Field(gt=0, le=3600)] = 2.0
    lag_s: Annotated[float, Field(ge=0, le=86_400)] = 0.0
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0

    @field_validator("url")
    @classmethod
    def _known_url(cls, url: str) -> str:
        scheme = url.partition("://")[0].lower()
        if scheme == "postgresql":
            _check_postgres_url(url)
        elif scheme == "sqlite":
            _check_sqlite_url(url)
        else:
            raise ValueError(
                f"url must start with postgresql:// (postgresql://user@host:port/db) or "
                f"sqlite:/// (sqlite:///path/to/file.db), not {scheme + '://'!r}"
            )
        return url

    @field_validator("password_file")
    @classmethod
    def _credential_name(cls, path: Path | None) -> Path | None:
        return check_reference(path) if path is not None else None

    @field_validator("query")
    @classmethod
    def _select(cls, query: str) -> str:
        query = query.strip().rstrip(";").rstrip()
        if not re.match(r"(?i)(select|with)\b", query):
            raise ValueError("query must be a SELECT (or WITH ... SELECT) statement")
        return query

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table (schema.table) and query (a SELECT)")
        if len(set(self.cursor)) != len(self.cursor):
            raise ValueError("the cursor columns must differ")
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("give at most one of password_env and password_file")
        if self.scheme == "sqlite" and (self.password_env or self.password_file):
            raise ValueError("password_env and password_file are for postgresql:// only")
        return self

    @property
    def scheme(self) -> Literal["postgresql", "sqlite"]:
        return "sqlite" if self.url.lower().startswith("sqlite:") else "postgresql"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite file (for a `sqlite:///` url)."""
        return Path(self.url[len(SQLITE_PREFIX):])

    def with_base_dir(self, base: Path) -> Self:
        """The same settings with a relative SQLite file and `password_file` made absolute
        (relative to the config file's folder)."""
        update: dict[str, object] = {}
        if self.scheme == "sqlite" and not self.sqlite_path.is_absolute():
            update["url"] = SQLITE_PREFIX + str(base.absolute() / self.sqlite_path)
        if self.password_file is not None and not self.password_file.is_absolute():
            update["password_file"] = relative_to(base, self.password_file)
        return self.model_copy(update=update) if update else self


def _check_postgres_url(url: str) -> None:
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (parses it: raises on a bad port)
    except ValueError as error:
        raise ValueError(f"url: bad port in {url!r}") from error
    if parts.password is not None or "password" in parse_qs(parts.query):
        raise ValueError("url: keep the password out of the config: use password_env or "
                         "password_file")
    database = parts.path.removeprefix("/")
    if not parts.hostname or not database or "/" in database:
        raise ValueError(f"url must be postgresql://user@host:port/database, not {url!r}")


def _check_sqlite_url(url: str) -> None:
    path = url[len(SQLITE_PREFIX):]
    if not url.lower().startswith(SQLITE_PREFIX) or not path or "?" in path:
        raise ValueError(
            f"url must be sqlite:///relative/file.db or sqlite:////absolute/file.db, not {url!r}"
        )
