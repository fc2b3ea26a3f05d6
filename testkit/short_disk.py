"""A really short disk for tests: a small tmpfs mounted (as root) where a test wants it, and a
filler file that takes it to the last byte.

`small_tmpfs(path)` skips the test with the reason when it cannot mount (not root, no mount).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

TMPFS_BYTES = 8 * 2**20


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size: int = TMPFS_BYTES) -> Iterator[Path]:
    """A tmpfs of `size` bytes mounted at `mount_point` (created), unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
        capture_output=True, text=True, timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        gc.collect()  # sqlite3 connections left for the collector keep files open
        if subprocess.run(["umount", str(mount_point)], capture_output=True,
                          timeout=30).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


def remount(mount_point: Path, mode: str) -> None:
    """`mount -o remount,MODE` (ro or rw); Linux refuses ro while a file there is open for
    writing, so callers close theirs first."""
    gc.collect()  # read-only sqlite3 connections left for the collector hold the -shm file
    done = subprocess.run(
        ["mount", "-o", f"remount,{mode}", str(mount_point)],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, (
        f"remount,{mode} failed: {done.stderr}; open there: {open_files(mount_point)}"
    )


def open_files(directory: Path) -> list[str]:
    """"pid: path" of every descriptor open under `directory` (why a remount is busy)."""
    found = []
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(str(directory)):
                found.append(f"{fd.parts[2]}: {target}")
    return found


def free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


class Filler:
    """A file that takes a file system to its last byte (write until ENOSPC), kept full by
    `top_up` (a writer there frees a page now and then: a temporary file it removes)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "filler"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)

    def top_up(self) -> int:
        """Write until not even one more byte fits; the bytes written (bounded loop)."""
        written, chunk = 0, 2**20
        for _attempt in range(10_000):  # 8 MiB in steps that shrink to 1 byte ends far sooner
            try:
                written += os.write(self._fd, b"\0" * chunk)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                if chunk == 1:
                    return written
                chunk = max(1, chunk // 16)
        raise AssertionError("the filler never met ENOSPC")

    def remove(self) -> None:
        os.close(self._fd)
        self.path.unlink()
