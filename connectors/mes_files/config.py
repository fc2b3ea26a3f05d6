"""Settings of the file-drop connector: `[[sources]]` with `type = "mes-files"`.

Every key, with its default and what it does: `connectors/mes_files/sample.toml` (loaded by
tests/unit/test_samples.py).

Files are taken in name order; only regular files are read (a symbolic link, FIFO, socket or
device matching the pattern moves to `rejected/` unread, a folder is left alone). A complete
file's rows go to the pipeline in chunks of `rows_per_emit`, each committed with the file's
position, so a restart resumes after the last committed chunk; once every row is committed to
the buffer the file moves to `processed/`. A CSV file is read row by row whatever its size
(up to `max_file_bytes`); a JSON array is parsed whole and is bounded by `max_json_bytes`.
Rows that cannot be read go, with their line number and reason (never the cell's content), to
`rejected/<file>.rejects.csv` (the good rows still flow); a file that cannot be read at all
(as configured, or by the OS: EIO, EACCES) moves to `rejected/` with a `<file>.reject.txt`
beside it, or, when it cannot be moved either, is skipped until the agent restarts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator

from connectors.base import ConnectorSettings
from connectors.records import RecordSettings


class MesFilesSettings(ConnectorSettings, RecordSettings):
    """The folder, file format and completeness rule; the record part (`columns`, time) is
    `connectors.records.RecordSettings`. Without a `time_column`, a row's time is the file's
    modification time (the same on a re-read, so the event ids are too)."""

    folder: Path
    pattern: Annotated[str, Field(min_length=1, max_length=200)] = "*.csv"
    format: Literal["csv", "json"] = "csv"
    encoding: str = "utf-8-sig"
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    # The line holding the column names (CSV): a spreadsheet export may put a title, the
    # export date or a filter above it; the lines before it are skipped (never records).
    header_line: Annotated[int, Field(ge=1, le=100)] = 1
    complete: Literal["stable", "marker", "rename"] = "stable"
    stable_s: Annotated[float, Field(ge=0, le=3600)] = 2.0
    marker_suffix: Annotated[str, Field(min_length=1, max_length=32)] = ".done"
    poll_s: Annotated[float, Field(gt=0, le=3600)] = 1.0
    max_file_bytes: Annotated[int, Field(ge=1, le=2**31)] = 64 * 2**20
    # A JSON document is parsed whole (CSV is read row by row): this bounds its memory.
    max_json_bytes: Annotated[int, Field(ge=1, le=2**28)] = 16 * 2**20
    rows_per_emit: Annotated[int, Field(ge=1, le=10_000)] = 500
    # Rejected rows sent as `record.rejected` events per file read (the rest: report only).
    max_rejections_per_file: Annotated[int, Field(ge=0, le=1_000_000)] = 100

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, name: str) -> str:
        import codecs

        try:
            codecs.lookup(name)
        except LookupError as error:
            raise ValueError(f"unknown encoding {name!r}") from error
        return name

    def with_base_dir(self, base: Path) -> Self:
        """The same settings with `folder` made absolute (relative to the config file)."""
        if self.folder.is_absolute():
            return self
        return self.model_copy(update={"folder": base / self.folder})
