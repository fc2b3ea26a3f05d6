"""Logging set-up: one structured line per record on stderr (journald keeps stderr).

Two formats, chosen by `agent.log_format`:

- `keyvalue` (default): `2026-01-05T10:00:00 level=warning logger=agent.runtime msg="..."`
  followed by any structured fields of the record (`extra={"source": "line1"}`) as `key=value`;
- `json`: one JSON object per line with the same keys (`time`, `level`, `logger`, `msg`, ...).

What is logged is meant for a person: one line per state change (the source, what went wrong,
what the agent does next), never a traceback for an expected failure (server or broker down).
A traceback is printed only for a record at `error` level or above that carries one (a bug) or
when `log_level = "debug"`.

Under systemd, stderr is a journal stream (`$JOURNAL_STREAM` names it): the timestamp is left
out (journald stamps every line) and each line starts with its syslog priority (`<4>` for a
warning), which journald strips and keeps, so `journalctl -u edge-agent -p warning` works.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Literal

LogFormat = Literal["keyvalue", "json"]

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
    }


class _LibraryConnectionErrors(logging.Filter):
    """asyncua logs a lost connection from inside its own loops as an error with a traceback
    ("Publish iteration crashed; retrying in 1s" when a server restarts); the connector reports
    the same loss in its own words (source, reason, next retry). Those records are dropped,
    unless `log_level = "debug"`. Any other error of a library still shows, with its
    traceback: that one may be a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("asyncua") or not record.exc_info:
            return True
        error = record.exc_info[1]
        return not isinstance(error, OSError) or logging.getLogger().level <= logging.DEBUG


def _traceback_wanted(record: logging.LogRecord) -> bool:
    if not record.exc_info:
        return False
    return record.levelno >= logging.ERROR or logging.getLogger().level <= logging.DEBUG


class KeyValueFormatter(logging.Formatter):
    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        parts = [] if self._journal else [self.formatTime(record, "%Y-%m-%dT%H:%M:%S")]
        parts += [
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quoted(record.getMessage())}",
        ]
        parts += [f"{key}={_value(value)}" for key, value in _fields(record).items()]
        line = " ".join(parts)
        if _traceback_wanted(record):
            assert record.exc_info is not None
            line += "\n" + self.formatException(record.exc_info)
        return _prefixed(line, record) if self._journal else line


class JsonFormatter(logging.Formatter):
    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {}
        if not self._journal:
            document["time"] = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        document |= {
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        document |= _fields(record)
        if _traceback_wanted(record):
            assert record.exc_info is not None
            document["traceback"] = self.formatException(record.exc_info)
        line = json.dumps(document, default=str, ensure_ascii=False)
        return _prefixed(line, record) if self._journal else line


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _value(value: object) -> str:
    text = str(value)
    return text if text and all(c.isalnum() or c in "._-/:@" for c in text) else _quoted(text)


def _prefixed(line: str, record: logging.LogRecord) -> str:
    return f"<{_SYSLOG_PRIORITY.get(record.levelname, 6)}>{line}"


def stderr_is_journal() -> bool:
    """True when stderr is the journal stream systemd named in $JOURNAL_STREAM (device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":"))
        status = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (status.st_dev, status.st_ino) == (device, inode)


def configure(level: str = "info", log_format: LogFormat = "keyvalue") -> None:
    """(Re)configure the root logger; safe to call again on reload."""
    journal = stderr_is_journal()
    formatter: logging.Formatter = KeyValueFormatter(journal=journal)
    if log_format == "json":
        formatter = JsonFormatter(journal=journal)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(_LibraryConnectionErrors())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncua and paho are chatty about things the agent already reports in its own words.
    quiet = logging.DEBUG if level == "debug" else logging.ERROR
    for name in ("asyncua", "paho"):
        logging.getLogger(name).setLevel(quiet)
