"""The file-drop connector: takes complete files from a folder, emits one reading per row.

Durability rule: a file moves to `processed/` only after every one of its rows is committed to
the buffer: the connector awaits the commit future that `emit` returns for the file's last
batch (the pipeline commits in emit order). A crash before the move leaves the file in the
folder; it is read again on the next start and yields the same readings (same content digest
and line numbers), so the buffer and consumers drop the repeats by event id.

A file is complete when (`complete`): `stable`: its size and mtime have not changed for
`stable_s` seconds; `marker`: `FILE + marker_suffix` exists (removed after the move);
`rename`: it is present (the writer renames it in when done).

Rows that cannot be read go to `rejected/<file>.rejects.csv` (line, reason, raw row), written
before the file moves; the good rows flow. A file that cannot be read at all moves to
`rejected/` with `<file>.reject.txt` beside it. Every file operation runs on a worker thread
(`asyncio.to_thread`); the poll loop sleeps `poll_s` between scans.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from connectors.base import Emit, Reading, SourceHealth, SourceUnavailable
from connectors.mes_files.config import MesFilesSettings
from connectors.mes_files.records import (
    FileUnreadable,
    ParsedFile,
    RowReject,
    parse_file,
    record_key,
)

_log = logging.getLogger(__name__)

# The signal of every reading of this connector: a whole record (its fields in `attributes`).
RECORD_SIGNAL = "record"
PROCESSED = "processed"
REJECTED = "rejected"


@dataclass(slots=True)
class _Seen:
    size: int
    mtime_ns: int
    since: float  # monotonic time the size and mtime were first seen


class MesFilesConnector:
    def __init__(self, name: str, settings: MesFilesSettings) -> None:
        self.name = name
        self.health = SourceHealth()
        self._settings = settings
        self._folder = settings.folder
        self._seen: dict[str, _Seen] = {}
        self.health.counters.update(
            files_processed_total=0, files_rejected_total=0, rows_rejected_total=0
        )

    async def run(self, emit: Emit) -> None:
        try:
            await asyncio.to_thread(self._prepare)
            self.health.connected = True
            while True:
                for path in await asyncio.to_thread(self._complete_files):
                    await self._take(path, emit)
                await asyncio.sleep(self._settings.poll_s)
        finally:
            self.health.connected = False

    def _prepare(self) -> None:
        if not self._folder.is_dir():
            raise SourceUnavailable(f"folder {self._folder} does not exist")
        for sub in (PROCESSED, REJECTED):
            (self._folder / sub).mkdir(exist_ok=True)

    # -- completeness ----------------------------------------------------------------------

    def _complete_files(self) -> list[Path]:
        settings = self._settings
        try:
            candidates = sorted(p for p in self._folder.glob(settings.pattern) if p.is_file())
        except OSError as error:
            raise SourceUnavailable(f"cannot list {self._folder}: {error}") from error
        now = time.monotonic()
        complete: list[Path] = []
        current: dict[str, _Seen] = {}
        for path in candidates:
            if path.name.endswith(settings.marker_suffix) and settings.complete == "marker":
                continue
            if settings.complete == "rename":
                complete.append(path)
            elif settings.complete == "marker":
                if path.with_name(path.name + settings.marker_suffix).exists():
                    complete.append(path)
            else:
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                seen = self._seen.get(path.name)
                if seen is None or (seen.size, seen.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
                    seen = _Seen(stat.st_size, stat.st_mtime_ns, now)
                current[path.name] = seen
                if now - seen.since >= settings.stable_s:
                    complete.append(path)
        self._seen = current
        return complete

    # -- one file ----------------------------------------------------------------------------

    async def _take(self, path: Path, emit: Emit) -> None:
        try:
            parsed = await asyncio.to_thread(self._read, path)
        except FileUnreadable as error:
            _log.warning("source=%s file %s rejected: %s", self.name, path.name, error)
            await asyncio.to_thread(self._reject_file, path, str(error))
            self.health.counters["files_rejected_total"] += 1
            return
        except FileNotFoundError:
            return  # moved away meanwhile
        if parsed.rejects:
            _log.warning(
                "source=%s file %s: %d row(s) rejected (see %s/)",
                self.name, path.name, len(parsed.rejects), REJECTED,
            )
            await asyncio.to_thread(self._write_rejects, path, parsed.rejects)
            self.health.counters["rows_rejected_total"] += len(parsed.rejects)
        readings = self._readings(parsed)
        step = self._settings.rows_per_emit
        committed = None
        for start in range(0, len(readings), step):
            committed = await emit(readings[start : start + step])
        if committed is not None:
            await committed  # every row of the file is in the buffer
        await asyncio.to_thread(self._move, path, self._folder / PROCESSED)
        self.health.counters["files_processed_total"] += 1
        self.health.readings_total += len(readings)
        if readings:
            self.health.last_value_at = readings[-1].timestamp
        _log.info(
            "source=%s file %s processed: %d row(s), %d rejected",
            self.name, path.name, len(readings), len(parsed.rejects),
        )

    def _read(self, path: Path) -> ParsedFile:
        size = path.stat().st_size
        if size > self._settings.max_file_bytes:
            raise FileUnreadable(
                f"{size} bytes, above max_file_bytes = {self._settings.max_file_bytes}"
            )
        modified_at = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        return parse_file(path.read_bytes(), self._settings, modified_at)

    def _readings(self, parsed: ParsedFile) -> Sequence[Reading]:
        return [
            Reading(
                source=self.name,
                signal=RECORD_SIGNAL,
                value=record_key(parsed.digest, record.line),
                timestamp=record.timestamp,
                attributes=record.fields,
            )
            for record in parsed.records
        ]

    def _write_rejects(self, path: Path, rejects: Sequence[RowReject]) -> None:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["line", "reason", "row"])
        for reject in rejects:
            writer.writerow([reject.line, reject.reason, reject.raw])
        _write_atomic(self._folder / REJECTED / f"{path.name}.rejects.csv", out.getvalue())

    def _reject_file(self, path: Path, reason: str) -> None:
        target = self._move(path, self._folder / REJECTED)
        _write_atomic(target.with_name(target.name + ".reject.txt"), reason + "\n")

    def _move(self, path: Path, folder: Path) -> Path:
        """Move `path` into `folder` (a free name if one is taken); drop its marker."""
        target = folder / path.name
        serial = 1
        while target.exists():
            target = folder / f"{path.stem}.{serial}{path.suffix}"
            serial += 1
        os.replace(path, target)
        _fsync_dir(folder)
        _fsync_dir(path.parent)
        if self._settings.complete == "marker":
            path.with_name(path.name + self._settings.marker_suffix).unlink(missing_ok=True)
        return target


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".part")
    with temporary.open("w", encoding="utf-8", newline="") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
