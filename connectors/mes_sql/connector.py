"""The interface-table connector: polls an MES table (or query) by its cursor, one record
reading per row.

Exactly once, across crashes: the cursor of a batch's last row is `Reading.state` of that
row, so the pipeline commits it in the same buffer transaction as the batch's events. On
start the connector reads the committed cursor back (`SourceHost.source_state`) and fetches
the rows after it: a crash before the commit reads the batch again (nothing skipped), a crash
after it reads on from the next row (nothing repeated; and a row read twice would have the
same event id anyway, its key being its cursor).

A row that cannot be read (a required column empty, a number that is not one, a value of a
type no event field takes) still moves the cursor: it becomes a reading of quality bad that
the mapper sets aside in the buffer's dead letters with the reason (`edge-agent buffer
dead-letters`), since the table cannot be told, and that reaches the hub as a
`record.rejected` event (`Reading.rejection`: the reason and column, the row's cursor, the
business keys that could be read, its redacted copy). A mapped column missing from the table or
query stops the source (a config error), as does a cursor value that cannot be stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import UTC, datetime

from connectors.base import (
    Emit,
    Quality,
    Reading,
    Rejection,
    SourceConfigError,
    SourceHealth,
    SourceHost,
)
from connectors.mes_sql.config import MesSqlSettings
from connectors.mes_sql.drivers import Cursor, Row, decode_cursor, encode_cursor, open_reader, plain
from connectors.records import RecordSettings, RowError, raw_copy, read_record, readable_keys

_log = logging.getLogger(__name__)

# The signal of every reading of this connector: a whole record (its fields in `attributes`).
RECORD_SIGNAL = "record"


class MesSqlConnector:
    def __init__(
        self, name: str, settings: MesSqlSettings, records: RecordSettings, host: SourceHost
    ) -> None:
        self.name = name
        self.health = SourceHealth()
        self._settings = settings
        self._records = records
        self._host = host
        self._state_key = f"{name}/cursor"
        self.health.counters["rows_unreadable_total"] = 0

    async def run(self, emit: Emit) -> None:
        cursor = await self._committed_cursor()
        reader = open_reader(self._settings)
        try:
            await reader.connect()  # SourceUnavailable / SourceConfigError
            self.health.connected = True
            checked = False
            while True:
                rows = await reader.fetch_after(cursor, self._settings.batch_rows)
                if not rows:
                    await asyncio.sleep(self._settings.poll_s)
                    continue
                if not checked:
                    self._check_columns(rows[0])
                    checked = True
                readings, cursor = self._readings(rows)
                committed = await emit(readings)
                if committed is not None:
                    await committed  # this batch and its cursor are in the buffer
                self.health.readings_total += len(readings)
                self.health.last_value_at = datetime.now(UTC)  # received, not business time
                self.health.last_business_time = readings[-1].timestamp
        finally:
            self.health.connected = False
            await reader.close()

    async def _committed_cursor(self) -> Cursor | None:
        stored = (await self._host.source_state(self._state_key)).get(self._state_key)
        if stored is None:
            _log.info("source=%s no cursor stored: reading the table from its first row",
                      self.name)
            return None
        try:
            return decode_cursor(stored)
        except ValueError as error:
            raise SourceConfigError(f"the stored cursor cannot be read: {error}") from error

    def _check_columns(self, row: Row) -> None:
        missing = [name for name in self._records.column_names() if name not in row]
        if missing:
            raise SourceConfigError(
                f"column(s) {', '.join(map(repr, missing))} not in the rows read "
                f"(they have {', '.join(map(repr, row))})"
            )

    def _readings(self, rows: list[Row]) -> tuple[list[Reading], Cursor]:
        now = datetime.now(UTC)
        readings: list[Reading] = []
        cursor: Cursor = ()
        key = ""
        for row in rows:
            cursor = tuple(row[column] for column in self._settings.cursor)
            try:
                key = encode_cursor(cursor)
            except TypeError as error:
                raise SourceConfigError(
                    f"cursor {', '.join(self._settings.cursor)}: {error}"
                ) from error
            readings.append(self._reading(row, key, now))
        last = readings[-1]
        readings[-1] = dataclasses.replace(last, state=((self._state_key, key),))
        return readings, cursor

    def _reading(self, row: Row, key: str, now: datetime) -> Reading:
        values: dict[str, object] = {}
        try:
            for name in self._records.column_names():
                values[name] = plain(row[name])
            record = read_record(values, self._records, received_at=now)
        except (RowError, ValueError) as error:
            self.health.counters["rows_unreadable_total"] += 1
            _log.warning("source=%s row %s cannot be read: %s", self.name, key, error)
            status = f"row {key} cannot be read: {error}"
            column = error.column if isinstance(error, RowError) else None
            raw, cut = raw_copy(
                {name: _text(value) for name, value in row.items()},
                self._records.secret_columns,
            )
            where = self._settings.table or "query"
            rejection = Rejection(
                interface="table", reason=str(error), location=f"{where} row {key}",
                column=column, keys=readable_keys(values, self._records), raw=raw,
                raw_truncated=cut, set_aside=True,
            )
            return Reading(
                self.name, RECORD_SIGNAL, key, now, quality=Quality.BAD, status=status,
                rejection=rejection,
            )
        return Reading(self.name, RECORD_SIGNAL, key, record.timestamp, attributes=record.fields)


def _text(value: object) -> object:
    """A column value for a rejected row's copy: JSON's own types stay, others as text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(bytes(value))} bytes>"
    return str(value)
