"""What the file drop writes: reject reports and notes in `rejected/`, and folder syncs.

Invariants:
- Every file is written under a `.part` name opened with `O_NOFOLLOW` (a link planted under
  that name is refused, never written through), synced, then renamed into place and the
  folder synced: a reader sees a whole report or none.
- Every write can be retried after an `OSError` and gives the same bytes: the caller retries
  the short-disk condition (`connectors.base.is_short_disk`) until it clears. `RejectReport`
  writes each part at its known offset (`pwrite`), so a part cut short by a full disk is
  written again in place, never twice.
- What goes in: a reject's line number and reason (which never quote the file, see
  `connectors.mes_files.records`) and the rejected row as read from the file itself, so that a
  person can correct it; a note names why a whole file was set aside.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

from connectors.mes_files.records import RowReject

_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
REPORT_HEADER = ("line", "reason", "row")


def write_note(path: Path, text: str) -> None:
    """`path` holds `text` (UTF-8), replaced whole."""
    temporary = path.with_name(path.name + ".part")
    descriptor = os.open(temporary, _WRITE_FLAGS, 0o644)
    try:
        _write_all(descriptor, text.encode("utf-8"), 0)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    os.replace(temporary, path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class RejectReport:
    """`rejected/<file>.rejects.csv` (line, reason, row), written while the file is read:
    `add` appends a batch of rejects to the `.part`, `finish` puts it in place (nothing when
    there were none), `discard` drops the `.part`. Each call opens and closes the part (no
    descriptor outlives a call, so a cancelled caller leaves nothing open). Called from
    worker threads, one at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._part = path.with_name(path.name + ".part")
        self._length = 0  # bytes of the part written for good

    def add(self, rejects: Sequence[RowReject]) -> None:
        if not rejects:
            return
        out = io.StringIO()
        writer = csv.writer(out)
        if self._length == 0:
            writer.writerow(REPORT_HEADER)
        for reject in rejects:
            writer.writerow([reject.line, reject.reason, reject.raw])
        data = out.getvalue().encode("utf-8")
        flags = _WRITE_FLAGS if self._length == 0 else _WRITE_FLAGS & ~os.O_TRUNC
        descriptor = os.open(self._part, flags, 0o644)
        try:
            _write_all(descriptor, data, self._length)
        finally:
            os.close(descriptor)
        self._length += len(data)
        self.count += len(rejects)

    def finish(self) -> None:
        if not self._length or not os.path.lexists(self._part):
            return  # no rejects, or already in place
        descriptor = os.open(self._part, _WRITE_FLAGS & ~os.O_TRUNC, 0o644)
        try:
            os.ftruncate(descriptor, self._length)  # what a cut-short write left beyond
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(self._part, self.path)
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        try:
            self._part.unlink(missing_ok=True)
        except OSError:
            pass  # a stale part is overwritten by the next report of that name


def _write_all(descriptor: int, data: bytes, offset: int) -> None:
    written = 0
    while written < len(data):  # bounded: each round writes at least one byte or raises
        count = os.pwrite(descriptor, data[written:], offset + written)
        if count == 0:
            raise OSError(f"wrote nothing at offset {offset + written}")
        written += count
