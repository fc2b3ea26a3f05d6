"""Logging set-up: one key=value line per record on stderr (journald keeps stderr)."""

from __future__ import annotations

import logging
import sys


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        line = (
            f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} level={record.levelname.lower()} "
            f"logger={record.name} msg={message!r}"
        )
        if (record.exc_info and record.levelno >= logging.ERROR) or logging.root.level <= 10:
            if record.exc_info:
                line += "\n" + self.formatException(record.exc_info)
        return line


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # asyncua and paho are chatty about things the agent already reports in its own words.
    quiet = logging.DEBUG if level == "debug" else logging.ERROR
    for name in ("asyncua", "paho"):
        logging.getLogger(name).setLevel(quiet)
