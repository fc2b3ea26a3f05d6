"""The state dir lock: one agent (or one writing `edge-agent buffer` command) per state dir.

`StateDirLock(state_dir)` takes an exclusive `fcntl.flock` on `<state_dir>/agent.lock` and writes
its holder (pid and command line) into the file. The kernel releases the lock when the process
ends in any way, kill -9 included, so a stale file never blocks a restart: the file's content
only names the holder for the error message of whoever is refused.

Invariant: while a `StateDirLock` is held, no other process using this module can hold one on
the same state dir; the buffer file there has exactly one writer.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path
from types import TracebackType

from buffer.base import BufferLocked

LOCK_FILE = "agent.lock"
_ATTEMPTS = 3


class StateDirLock:
    """An exclusive, non-blocking lock on a state dir; see the module docstring."""

    def __init__(self, state_dir: Path, *, role: str = "edge-agent") -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_FILE
        self._role = role
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise `BufferLocked` naming the process that holds it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(_ATTEMPTS):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # `holder()` probes with a brief shared lock: give such a probe time to end.
                if attempt + 1 < _ATTEMPTS:
                    time.sleep(0.05)
        else:
            os.close(fd)
            other = holder(self.state_dir) or "another process"
            raise BufferLocked(
                f"state dir {self.state_dir} is in use by {other}; stop it first, or give "
                "this agent its own agent.state_dir"
            )
        try:
            os.ftruncate(fd, 0)
            command = " ".join(sys.argv) or "python"
            os.write(fd, f"{os.getpid()}\n{self._role}: {command}\n".encode())
        except BaseException:
            os.close(fd)  # a full disk: drop the lock with the descriptor, so a retry can take it
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> StateDirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def holder(state_dir: Path) -> str | None:
    """"process PID (what it runs)" if a process holds the lock on `state_dir` now, else None."""
    path = state_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = path.read_text(errors="replace").strip().splitlines()
            if len(text) >= 2:
                return f"process {text[0]} ({text[1]})"
            return f"process {text[0]}" if text else "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
