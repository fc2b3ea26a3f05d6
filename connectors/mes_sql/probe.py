"""Probing an interface table before the agent is (re)started (`edge-agent check-config
--connect`).

One session, opened as the connector opens it (`drivers.TableReader.connect`: read-only where
the database allows, the poll query run once with `LIMIT 0`), so a database that cannot be
reached raises `SourceUnavailable`, and a table, column or query the database does not know is
the result's problem, in the database's own words. No row is read.
"""

from __future__ import annotations

from connectors.base import ProbeResult, SourceConfigError
from connectors.mes_sql.config import MesSqlSettings
from connectors.mes_sql.drivers import open_reader


async def probe(settings: MesSqlSettings) -> list[ProbeResult]:
    """One result: whether the poll query runs (the table or query, and its cursor columns)."""
    subject = f"table {settings.table}" if settings.table is not None else "query"
    reader = open_reader(settings)
    try:
        await reader.connect()  # SourceUnavailable: cannot ask at all
    except SourceConfigError as error:
        return [ProbeResult(subject, str(error))]
    finally:
        await reader.close()
    return [ProbeResult(subject, seen=f"cursor {', '.join(settings.cursor)}")]
