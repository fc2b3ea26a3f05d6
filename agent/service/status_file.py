"""What the agent is doing, on disk: `status.json` in the state dir, and the buffer read-only.

`edge-agent status -c CONFIG` must work on the plant server without MQTT and while the agent is
down, so the running agent leaves a snapshot behind and the command reads the buffer itself.

Invariants
----------
- The runtime writes `STATE_DIR/status.json` every `hub.status_interval_s`, when it is ready,
  after a reload (applied or refused) and when it stops (`"state": "stopped"`). Each write goes
  to a temporary file in the same directory, is flushed, then renamed over the old one: a
  reader sees the previous snapshot or the new one, never half of one, even after a crash.
- A snapshot holds no secret and no payload: states, counters, times and error messages.
- Writing it is best-effort (`StatusFile`): a failed write (a full disk, a read-only remount,
  no descriptors left, a value JSON cannot hold) never stops the agent and leaves the previous
  snapshot in place; it is logged once when writes start failing and once when one succeeds
  again, and the next cycle simply tries again.
- `read_buffer_stats` opens the buffer file read-only (`mode=ro`) with plain `sqlite3` and only
  reads: it never creates, migrates or locks the file for writing, so it is safe next to the
  running agent (WAL readers do not block the writer). It reads the schema version 1 tables of
  `buffer/sqlite.py` (`events`, `meta`, `dead_letters`); a file of another layout is reported,
  not guessed at.
- "Running" is decided from the snapshot's pid: alive and an `edge-agent`/`agent` process.
  A snapshot that says running with a dead pid means the agent was killed or crashed.

`ProblemLog` is a logging handler that keeps the last warnings and errors (bounded) for the
snapshot's `recent_problems`, so the last errors survive the process.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
FORMAT_VERSION = 1

_log = logging.getLogger(__name__)


class ProblemLog(logging.Handler):
    """Keeps the last `capacity` records at warning level or above, as dicts."""

    def __init__(self, capacity: int = 10) -> None:
        super().__init__(level=logging.WARNING)
        self._records: collections.deque[dict[str, str | None]] = collections.deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break logging
            message = str(record.msg)
        self._records.append(
            {
                "at": iso(record.created),
                "level": record.levelname.lower(),
                "logger": record.name,
                "msg": message,
            }
        )

    def recent(self) -> list[dict[str, str | None]]:
        return list(self._records)


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def write_status(state_dir: Path, document: dict[str, Any]) -> None:
    """Replace `state_dir/status.json` atomically (blocking: call it on a worker thread)."""
    document = {"format": FORMAT_VERSION, "written_at": iso(time.time()), **document}
    data = json.dumps(json_ready(document), indent=2, default=str).encode() + b"\n"
    state_dir.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".status-", suffix=".tmp", dir=state_dir)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o640)
        os.replace(temporary, state_dir / STATUS_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def json_ready(value: Any) -> Any:
    """`value` with every map key JSON can hold: a tuple key (the pipeline's `overflow_total`,
    keyed by class, event type and reason) becomes its parts joined by "/"."""
    if isinstance(value, dict):
        return {
            ("/".join(map(str, key)) if isinstance(key, tuple) else key): json_ready(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    return value


class StatusFile:
    """The best-effort writer of `state_dir/status.json` (module docstring): `write` never
    raises an `OSError`; it says whether the snapshot reached the disk."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.failures_total = 0
        self._failing = False

    def write(self, document: dict[str, Any]) -> bool:
        """Replace the snapshot (blocking: call it on a worker thread); False if it failed."""
        try:
            write_status(self.state_dir, document)
        except (TypeError, ValueError) as error:
            # A value JSON cannot hold: a bug in what the snapshot collects, which must not
            # stop the agent (it did: a tuple key once ended an agent that had evicted).
            self.failures_total += 1
            _log.error("cannot encode the status snapshot: %s (a bug; the previous one stays)",
                       error)
            return False
        except OSError as error:
            self.failures_total += 1
            if not self._failing:
                self._failing = True
                _log.warning(
                    "cannot write the status file %s: %s; the previous one stays, retrying "
                    "every status cycle", self.state_dir / STATUS_FILE, error.strerror or error,
                )
            return False
        if self._failing:
            self._failing = False
            _log.info(
                "status file %s written again (%d failed write(s) before)",
                self.state_dir / STATUS_FILE, self.failures_total,
            )
        return True


class StatusUnreadable(Exception):
    """status.json exists but cannot be read or parsed; the message says why."""


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last snapshot, or None if the agent never wrote one in this state dir."""
    path = state_dir / STATUS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise StatusUnreadable(f"{path}: {error.strerror or error}") from error
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise StatusUnreadable(f"{path}: not JSON ({error})") from error
    if not isinstance(document, dict):
        raise StatusUnreadable(f"{path}: not a status document")
    return document


def process_alive(pid: object) -> bool:
    """True if `pid` is a running agent process (not a recycled pid of something else)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, it is someone else's (the service user's)
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return True  # no /proc to tell: trust the pid
    return b"agent" in command


def read_buffer_stats(buffer_file: Path, now: float | None = None) -> dict[str, Any]:
    """Pending, dead letters, last seq and the oldest pending age, read-only from the file."""
    if not buffer_file.exists():
        return {"error": f"{buffer_file} does not exist (the agent has not run here yet)"}
    now = time.time() if now is None else now
    try:
        db = sqlite3.connect(f"file:{buffer_file}?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error as error:
        return {"error": f"cannot open {buffer_file} read-only: {error}"}
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version < 1:
            return {"error": f"{buffer_file}: not an edge-agent buffer (schema {version})"}
        by_priority = db.execute(
            "SELECT priority, count(*), min(accepted_at) FROM events"
            " WHERE acked_at IS NULL GROUP BY priority"
        ).fetchall()
        acked, dead, last_seq = db.execute(
            "SELECT (SELECT count(*) FROM events WHERE acked_at IS NOT NULL),"
            " (SELECT count(*) FROM dead_letters),"
            " (SELECT value FROM meta WHERE key = 'last_seq')"
        ).fetchone()
    except sqlite3.Error as error:
        return {"error": f"cannot read {buffer_file}: {error}"}
    finally:
        db.close()
    oldest = min((float(row[2]) for row in by_priority if row[2] is not None), default=None)
    size = sum(
        file.stat().st_size
        for file in (buffer_file, buffer_file.with_name(buffer_file.name + "-wal"))
        if file.exists()
    )
    names = {0: "telemetry", 1: "business", 2: "critical"}
    return {
        "pending": sum(int(row[1]) for row in by_priority),
        "pending_by_priority": {names.get(int(r[0]), str(r[0])): int(r[1]) for r in by_priority},
        "oldest_pending_age_s": None if oldest is None else round(now - oldest, 1),
        "delivered_retained": int(acked),
        "dead_letters": int(dead),
        "last_seq": int(last_seq or 0),
        "file_bytes": size,
    }
