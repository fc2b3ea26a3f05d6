"""The file-drop connector: takes complete files from a folder, emits one reading per row.

Durability rule: a file moves to `processed/` only after every one of its rows is committed to
the buffer: the connector awaits the commit future that `emit` returns for the file's last
chunk (the pipeline commits in emit order). A file is streamed (`records.check_file`, then
`records.read_chunks`): its rows go out in chunks of `rows_per_emit`, and the last reading of
each chunk carries the file's position as source state (`{source}/file/{digest}` = the last
line emitted), which commits in the same buffer transaction as the chunk's events. A crash
leaves the file in the folder; the next start reads it again (same content digest and line
numbers, so the same readings) and emits only the rows after the committed position: none
lost, none sent twice. The position is dropped once the file has moved. Memory is bounded by
the chunk and the pipeline's queue, whatever the file's size.

A file is complete when (`complete`): `stable`: its size and mtime have not changed for
`stable_s` seconds; `marker`: `FILE + marker_suffix` exists (removed after the move);
`rename`: it is present (the writer renames it in when done).

What is set aside, each counted in `health.counters` and logged once, by name, never with
the content:
- Rows that cannot be read go to `rejected/<file>.rejects.csv` (line, reason, raw row; the
  reason never quotes the file), written before the file moves; the good rows flow. Each also
  goes out as a rejected reading (`Reading.rejection`: reason, `<file>:<line>`, column, the
  keys that could be read, the row's redacted copy) in line order with the good rows and
  committed with the same position, so the hub gets a `record.rejected` event per bad row
  (not set aside: the report is the plant's copy), up to `max_rejections_per_file` per file
  read; the rest are in the report only (`rejections_not_sent_total`).
- A file that cannot be read as configured (`FileUnreadable`: a missing column, not JSON)
  moves to `rejected/` with `<file>.reject.txt` beside it (`files_rejected_total`).
- A file that cannot be opened or read at all (EIO, EACCES) is rejected the same way
  (`files_unreadable_total`); the rest of the folder flows.
- An entry that is not a regular file (symbolic link, FIFO, socket, device) is never opened
  (`connectors.mes_files.entries`) and moves to `rejected/` with its note; a folder is left
  alone (`entries_refused_total`).
- Whatever cannot be moved aside either (EBUSY, EPERM) stays where it is and is skipped until
  the agent restarts or the entry changes (`files_skipped_total`).

The short-disk condition (`connectors.base.is_short_disk`) on any write (the folders, a report,
a note, a move) pauses this source: logged once, shown as the `disk` notice, retried with
capped backoff (`reconnect_min_s` to `reconnect_max_s`) until it clears by itself, then logged
once again (`disk_pauses_total`). Every file operation runs on a worker thread
(`asyncio.to_thread`); the poll loop sleeps `poll_s` between scans.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import time
from collections.abc import Callable, Generator, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from connectors.backoff import Backoff
from connectors.base import (
    Emit,
    Quality,
    Reading,
    Rejection,
    SourceHealth,
    SourceHost,
    SourceUnavailable,
    is_short_disk,
)
from connectors.mes_files.config import MesFilesSettings
from connectors.mes_files.entries import DIRECTORY, Entry, NotRegularFile, look, open_regular
from connectors.mes_files.records import (
    Chunk,
    FileUnreadable,
    ParsedFile,
    Record,
    RowReject,
    check_file,
    read_chunks,
    record_key,
)
from connectors.mes_files.reports import RejectReport, fsync_dir, write_note
from connectors.records import raw_copy, readable_keys

_log = logging.getLogger(__name__)

# The signal of every reading of this connector: a whole record (its fields in `attributes`).
RECORD_SIGNAL = "record"
PROCESSED = "processed"
REJECTED = "rejected"
DISK_NOTICE = "disk"
SKIPPED_NOTICE = "skipped"
_T = TypeVar("_T")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclasses.dataclass(slots=True)
class _Seen:
    size: int
    mtime_ns: int
    since: float  # monotonic time the size and mtime were first seen


class MesFilesConnector:
    def __init__(
        self, name: str, settings: MesFilesSettings, host: SourceHost | None = None
    ) -> None:
        """`host`: where the committed file positions are read back (without one, as in
        tests, a file interrupted by a crash is emitted again from its start; the repeats
        keep their ids)."""
        self.name = name
        self.health = SourceHealth()
        self._settings = settings
        self._host = host
        self._folder = settings.folder
        self._seen: dict[str, _Seen] = {}
        # Entries that could be neither read nor moved aside: name -> identity when skipped.
        self._skipped: dict[str, tuple[int, int, int, int]] = {}
        self.health.counters.update(
            files_processed_total=0, files_rejected_total=0, rows_rejected_total=0,
            files_unreadable_total=0, entries_refused_total=0, files_skipped_total=0,
            disk_pauses_total=0, rejections_not_sent_total=0,
        )

    async def run(self, emit: Emit) -> None:
        try:
            await self._until_written(f"the folders in {self._folder}", self._prepare)
            self.health.connected = True
            while True:
                for entry in await asyncio.to_thread(self._complete_entries):
                    if entry.regular:
                        await self._take(entry, emit)
                    else:
                        await self._refuse(entry, entry.kind)
                await asyncio.sleep(self._settings.poll_s)
        finally:
            self.health.connected = False

    def _prepare(self) -> None:
        if not self._folder.is_dir():
            raise SourceUnavailable(f"folder {self._folder} does not exist")
        for sub in (PROCESSED, REJECTED):
            (self._folder / sub).mkdir(exist_ok=True)

    # -- completeness ----------------------------------------------------------------------

    def _complete_entries(self) -> list[Entry]:
        """The entries to act on now, in name order: complete regular files, and anything
        else that matches the pattern (to be refused). Skipped entries are left out while
        they stay the same."""
        settings = self._settings
        try:
            paths = sorted(self._folder.glob(settings.pattern))
        except OSError as error:
            raise SourceUnavailable(f"cannot list {self._folder}: {error}") from error
        now = time.monotonic()
        found: list[Entry] = []
        current: dict[str, _Seen] = {}
        skipped: dict[str, tuple[int, int, int, int]] = {}
        for path in paths:
            if path.parent == self._folder and path.name in (PROCESSED, REJECTED):
                continue
            if path.name.endswith(settings.marker_suffix) and settings.complete == "marker":
                continue
            try:
                entry = look(path)
            except OSError as error:
                raise SourceUnavailable(f"cannot look at {path}: {error}") from error
            if entry is None:
                continue
            if self._skipped.get(path.name) == entry.identity:
                skipped[path.name] = entry.identity
                continue
            if not entry.regular:
                found.append(entry)
            elif settings.complete == "rename":
                found.append(entry)
            elif settings.complete == "marker":
                if path.with_name(path.name + settings.marker_suffix).exists():
                    found.append(entry)
            else:
                _, _, size, mtime_ns = entry.identity
                seen = self._seen.get(path.name)
                if seen is None or (seen.size, seen.mtime_ns) != (size, mtime_ns):
                    seen = _Seen(size, mtime_ns, now)
                current[path.name] = seen
                if now - seen.since >= settings.stable_s:
                    found.append(entry)
        self._seen = current
        self._skipped = skipped
        self._note_skipped()
        return found

    # -- one file ----------------------------------------------------------------------------

    async def _take(self, entry: Entry, emit: Emit) -> None:
        path = entry.path
        try:
            file, status = await asyncio.to_thread(open_regular, path)
        except FileNotFoundError:
            return  # moved away meanwhile
        except NotRegularFile as error:  # swapped since it was looked at
            await self._refuse(entry, error.kind)
            return
        except OSError as error:
            _raise_if_out_of_descriptors(error)
            await self._unreadable(entry, error)
            return
        reader = _FileReader(file)
        report = RejectReport(self._folder / REJECTED / f"{path.name}.rejects.csv")
        try:
            if status.st_size > self._settings.max_file_bytes:
                raise FileUnreadable(
                    f"{status.st_size} bytes, above max_file_bytes = "
                    f"{self._settings.max_file_bytes}"
                )
            digest = await _read(reader, lambda f: check_file(f, self._settings))
            modified_at = datetime.fromtimestamp(status.st_mtime, UTC)
            rows = await self._emit_file(reader, digest, modified_at, report, emit, path.name)
        except FileUnreadable as error:
            await asyncio.to_thread(report.discard)
            _log.warning("source=%s file %r rejected: %s", self.name, path.name, error)
            await self._set_aside(entry, str(error), "files_rejected_total")
            return
        except _ReadFailed as failed:
            await asyncio.to_thread(report.discard)
            await self._unreadable(entry, failed.error)
            return
        except OSError as error:  # a write of ours that is not the short-disk condition
            self._skip(entry, f"cannot write its reject report ({_why(error)})")
            return
        finally:
            reader.close()
        if report.count:
            _log.warning(
                "source=%s file %r: %d row(s) rejected (see %s/)",
                self.name, path.name, report.count, REJECTED,
            )
            self.health.counters["rows_rejected_total"] += report.count
        try:
            await self._until_written(f"the reject report of {path.name!r}", report.finish)
            await self._move(path, self._folder / PROCESSED)
        except OSError as error:
            self._skip(entry, f"processed but cannot be moved to {PROCESSED}/ ({_why(error)})")
            return
        await self._forget_position(digest)
        self.health.counters["files_processed_total"] += 1
        _log.info(
            "source=%s file %s processed: %d row(s), %d rejected",
            self.name, path.name, rows, report.count,
        )

    async def _emit_file(
        self,
        reader: _FileReader,
        digest: str,
        modified_at: datetime,
        report: RejectReport,
        emit: Emit,
        file_name: str = "",
    ) -> int:
        """Emit the file's rows after its committed position, chunk by chunk, each chunk's
        position with its last reading; write its rejects as they come (and emit them as
        rejected readings, each a `record.rejected` event at the hub). Returns once every
        emitted row is committed (also when reading fails half-way): how many rows the file
        has in all, those committed before included."""
        key = f"{self.name}/file/{digest}"
        after = await self._position(key)
        chunks = read_chunks(reader.file, self._settings, modified_at)
        committed = None
        rows = 0
        allowance = [self._settings.max_rejections_per_file]  # left to send, this read
        try:
            while (chunk := await _read(reader, lambda _: _next_chunk(chunks))) is not None:
                if chunk.rejects:
                    await self._until_written(
                        f"the reject report in {REJECTED}/", partial(report.add, chunk.rejects)
                    )
                rows += len(chunk.records)
                readings = self._chunk_readings(
                    chunk, digest, key, after, file_name, modified_at, allowance
                )
                if readings:
                    committed = await emit(readings)
                    self.health.readings_total += len(readings)
                    # Received now; the records' own (business) time is kept apart.
                    self.health.last_value_at = datetime.now(UTC)
                    self.health.last_business_time = readings[-1].timestamp
        except (_ReadFailed, FileUnreadable):
            if committed is not None:
                await committed  # what went out stays out: in the buffer before the move
            raise
        finally:
            reader.after_use(chunks.close)
        if committed is not None:
            await committed  # every row of the file is in the buffer
        return rows

    def _chunk_readings(
        self,
        chunk: Chunk,
        digest: str,
        key: str,
        after: int,
        file_name: str = "",
        modified_at: datetime | None = None,
        allowance: list[int] | None = None,
    ) -> list[Reading]:
        """The chunk's records and rejects after the committed position, in line order; the
        last carries the position. Rejects beyond the file's `allowance` (left to send, a
        one-item list the caller keeps per file read) are reported, not sent."""
        records = [record for record in chunk.records if record.line > after]
        rejects = [reject for reject in chunk.rejects if reject.line > after]
        if allowance is not None and len(rejects) > allowance[0]:
            self.health.counters["rejections_not_sent_total"] += len(rejects) - allowance[0]
            rejects = rejects[: allowance[0]]
        if allowance is not None:
            allowance[0] -= len(rejects)
        lines = [record.line for record in records] + [reject.line for reject in rejects]
        readings = self._record_readings(digest, records) + [
            self._rejected_reading(digest, reject, file_name, modified_at or _EPOCH)
            for reject in rejects
        ]
        if readings:
            ordered = sorted(zip(lines, readings, strict=True), key=lambda pair: pair[0])
            readings = [reading for _, reading in ordered]
            position = ((key, str(ordered[-1][0])),)
            readings[-1] = dataclasses.replace(readings[-1], state=position)
        return readings

    def _rejected_reading(
        self, digest: str, reject: RowReject, file_name: str, modified_at: datetime
    ) -> Reading:
        """A row that cannot be read, as a rejected reading: its reason and line, the keys
        that could be read, its redacted copy. Not set aside: `rejected/` reports it too."""
        settings = self._settings
        cells = reject.cells
        raw, cut = raw_copy(cells if cells is not None else reject.raw, settings.secret_columns)
        rejection = Rejection(
            interface="file",
            reason=reject.reason,
            location=f"{file_name or digest[:12]}:{reject.line}",
            column=reject.column,
            keys=readable_keys(cells, settings) if cells is not None else (),
            raw=raw,
            raw_truncated=cut,
            set_aside=False,
        )
        return Reading(
            source=self.name,
            signal=RECORD_SIGNAL,
            value=record_key(digest, reject.line),
            timestamp=modified_at,
            quality=Quality.BAD,
            status=reject.reason,
            rejection=rejection,
        )

    def _readings(self, parsed: ParsedFile) -> Sequence[Reading]:
        return self._record_readings(parsed.digest, parsed.records)

    def _record_readings(self, digest: str, records: Sequence[Record]) -> list[Reading]:
        return [
            Reading(
                source=self.name,
                signal=RECORD_SIGNAL,
                value=record_key(digest, record.line),
                timestamp=record.timestamp,
                attributes=record.fields,
            )
            for record in records
        ]

    async def _position(self, key: str) -> int:
        """The last line of this content committed before (0: none)."""
        if self._host is None:
            return 0
        try:
            stored = (await self._host.source_state(key)).get(key)
        except Exception as error:  # the buffer's own error kinds are not ours to import
            raise SourceUnavailable(f"cannot read the committed file position: {error}") \
                from error
        return int(stored) if stored is not None and stored.isdigit() else 0

    async def _forget_position(self, digest: str) -> None:
        if self._host is None:
            return
        key = f"{self.name}/file/{digest}"
        try:
            await self._host.drop_source_state(key, older_than=time.time() + 3600)
        except Exception as error:  # a leftover entry costs one row; the next file goes on
            _log.warning("source=%s cannot drop the position of a processed file: %s",
                         self.name, error)

    # -- set aside ---------------------------------------------------------------------------

    async def _unreadable(self, entry: Entry, error: OSError) -> None:
        self.health.counters["files_unreadable_total"] += 1
        reason = f"cannot be read: {_why(error)}"
        _log.warning("source=%s file %r %s", self.name, entry.path.name, reason)
        await self._set_aside(entry, reason, "files_rejected_total")

    async def _refuse(self, entry: Entry, kind: str) -> None:
        self.health.counters["entries_refused_total"] += 1
        if kind == DIRECTORY:  # someone's folder: never moved
            self._skip(entry, "is a directory, not a file: left alone")
            return
        reason = f"not a regular file ({kind}): not read"
        _log.warning("source=%s %r %s", self.name, entry.path.name, reason)
        await self._set_aside(entry, reason, None)

    async def _set_aside(self, entry: Entry, reason: str, counter: str | None) -> None:
        """Move the entry to `rejected/` with its note; if it cannot be moved, skip it."""
        try:
            target = await self._move(entry.path, self._folder / REJECTED)
        except FileNotFoundError:
            return
        except OSError as error:
            self._skip(entry, f"cannot be moved to {REJECTED}/ either ({_why(error)})")
            return
        note = target.with_name(target.name + ".reject.txt")
        text = reason + "\n"
        await self._until_written(f"the note {note.name!r}", lambda: write_note(note, text))
        if counter is not None:
            self.health.counters[counter] += 1

    def _skip(self, entry: Entry, why: str) -> None:
        self._skipped[entry.path.name] = entry.identity
        self.health.counters["files_skipped_total"] += 1
        _log.warning("source=%s %r %s; skipped until it changes or the agent restarts",
                     self.name, entry.path.name, why)
        self._note_skipped()

    def _note_skipped(self) -> None:
        if self._skipped:
            self.health.notices[SKIPPED_NOTICE] = (
                f"{len(self._skipped)} entry(ies) in {self._folder} cannot be read or moved "
                "aside and are skipped (see the log)"
            )
        else:
            self.health.notices.pop(SKIPPED_NOTICE, None)

    # -- writes ------------------------------------------------------------------------------

    async def _move(self, path: Path, folder: Path) -> Path:
        """Move `path` into `folder` (a free name if one is taken); drop its marker."""
        target = await self._until_written(
            f"moving {path.name!r} to {folder.name}/", lambda: _rename_into(path, folder)
        )
        await self._until_written(f"the folder {folder.name}/", lambda: _sync_both(folder, path))
        if self._settings.complete == "marker":
            marker = path.with_name(path.name + self._settings.marker_suffix)
            await self._until_written(
                f"the marker {marker.name!r}", lambda: marker.unlink(missing_ok=True)
            )
        return target

    async def _until_written(self, what: str, write: Callable[[], _T]) -> _T:
        """`write()` on a worker thread, retried while it meets the short-disk condition
        (paced by capped backoff, until cancelled: the condition clears by itself)."""
        settings = self._settings
        backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s, jitter=False)
        paused_at: float | None = None
        while True:
            try:
                result = await asyncio.to_thread(write)
            except OSError as error:
                if not is_short_disk(error):
                    raise
                if paused_at is None:
                    paused_at = time.monotonic()
                    self.health.counters["disk_pauses_total"] += 1
                    self.health.notices[DISK_NOTICE] = f"cannot write {what}: {_why(error)}"
                    _log.warning("source=%s paused: cannot write %s (%s); retrying until it can",
                                 self.name, what, _why(error))
                await asyncio.sleep(backoff.next_s())
                continue
            if paused_at is not None:
                self.health.notices.pop(DISK_NOTICE, None)
                _log.warning("source=%s resumed: wrote %s after %.0f s",
                             self.name, what, time.monotonic() - paused_at)
            return result


class _FileReader:
    """An open drop file read on worker threads, one call at a time; closed only once no
    thread uses it (a call cut short by cancellation finishes on its thread first)."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self._busy: asyncio.Future[Any] | None = None
        self._later: list[Callable[[], object]] = []

    async def run(self, call: Callable[[BinaryIO], _T]) -> _T:
        busy = asyncio.ensure_future(asyncio.to_thread(call, self.file))
        self._busy = busy
        return await asyncio.shield(busy)

    def after_use(self, action: Callable[[], object]) -> None:
        """Run `action` once no thread uses the file (now, if none does)."""
        busy = self._busy
        if busy is None or busy.done():
            action()
        else:
            self._later.append(action)
            if len(self._later) == 1:
                busy.add_done_callback(self._run_later)

    def close(self) -> None:
        self.after_use(self.file.close)

    def _run_later(self, busy: asyncio.Future[Any]) -> None:
        if not busy.cancelled():
            busy.exception()  # retrieved: the caller is gone
        actions, self._later = self._later, []
        for action in actions:
            action()


class _ReadFailed(Exception):
    """Reading the drop file itself failed (`error`), as opposed to a write of ours."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


async def _read(reader: _FileReader, call: Callable[[BinaryIO], _T]) -> _T:
    try:
        return await reader.run(call)
    except OSError as error:
        _raise_if_out_of_descriptors(error)
        raise _ReadFailed(error) from error


def _raise_if_out_of_descriptors(error: OSError) -> None:
    """The agent (EMFILE) or the system (ENFILE) is out of descriptors: not this file's
    fault. The runtime retries the source with backoff; the file is taken then."""
    if error.errno in (errno.EMFILE, errno.ENFILE):
        raise SourceUnavailable(f"cannot open drop files: {_why(error)}") from error


def _next_chunk(chunks: Generator[Chunk, None, None]) -> Chunk | None:
    return next(chunks, None)


def _sync_both(folder: Path, moved: Path) -> None:
    fsync_dir(folder)
    fsync_dir(moved.parent)


def _rename_into(path: Path, folder: Path) -> Path:
    target = folder / path.name
    serial = 1
    while os.path.lexists(target):  # bounded by the names in `folder`
        target = folder / f"{path.stem}.{serial}{path.suffix}"
        serial += 1
    os.replace(path, target)
    return target


def _why(error: OSError) -> str:
    """An OS error in words, without the paths it carries (the caller names the entry)."""
    return error.strerror or type(error).__name__
