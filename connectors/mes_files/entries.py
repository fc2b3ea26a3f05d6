"""What a name in the drop folder is, and opening it without following anything.

Invariants:
- Only a regular file is ever read. A name is judged by `lstat` (the entry itself, never what
  a symbolic link points to) and opened with `O_NOFOLLOW | O_NONBLOCK`, then judged again by
  `fstat` on the open descriptor: an entry swapped for a link, FIFO, socket, device or folder
  between the two is refused, and a FIFO never blocks the open. A link in the folder therefore
  never reaches a file elsewhere (another CSV, the agent's own credentials). Hard links are
  regular files; the kernel's `fs.protected_hardlinks` (on by default) keeps a user from linking
  a file they could not read themselves.
- Nothing here reads content; the caller reads what `open_regular` returns.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

REGULAR = "regular file"
DIRECTORY = "directory"


class NotRegularFile(Exception):
    """The entry is not a regular file (`kind` says what it is); it was not read."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"not a regular file ({kind}): not read")
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Entry:
    """One name in the folder as `lstat` saw it. `identity` tells a remembered entry from a
    new one under the same name (device, inode, size, modification time)."""

    path: Path
    kind: str
    identity: tuple[int, int, int, int]

    @property
    def regular(self) -> bool:
        return self.kind == REGULAR


def kind_of(mode: int) -> str:
    """What a file mode describes, in words for a log line and a reject note."""
    if stat.S_ISREG(mode):
        return REGULAR
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return DIRECTORY
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def look(path: Path) -> Entry | None:
    """The entry at `path` (None: it is gone). Other `OSError`s propagate."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    identity = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
    return Entry(path, kind_of(status.st_mode), identity)


def open_regular(path: Path) -> tuple[BinaryIO, os.stat_result]:
    """Open a regular file for reading, never through a link and never blocking on a FIFO.
    `NotRegularFile` when it is anything else; `OSError` (EACCES, EIO, ...) when it cannot
    be opened; `FileNotFoundError` when it is gone."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            raise NotRegularFile("symbolic link") from None
        raise
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise NotRegularFile(kind_of(status.st_mode))
        return open(descriptor, "rb", closefd=True), status  # the caller closes it
    except BaseException:
        os.close(descriptor)
        raise
