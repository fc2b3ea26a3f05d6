"""Master data: lookup tables that translate plant codes into enterprise codes.

A table comes from the config (`entries = { "A-17" = "MAT-000117" }`), from a CSV file named in
the config (`file = "materials.csv"`), or both (the file first, then `entries` on top, so a
plant can patch one code without editing the export it received).

CSV format: UTF-8 (a byte-order mark is accepted), comma-separated, a header row first; the
first column is the plant code, the second the enterprise code; further columns are ignored
(descriptions, comments). Blank lines are skipped.

Invariants:
- Files are read once, when the config is loaded, never while mapping: a missing file, a row
  without two columns, an empty code or a plant code listed twice is a config error that names
  the file and its line (`CsvTableError`).
- Codes are compared as text exactly (case and spaces matter), after the same normalisation of
  the raw value the mapper applies (`code_text`): `7`, `7.0` and `"7"` are all the code `7`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path


class CsvTableError(ValueError):
    """A lookup file that cannot be used; the message names the file (and line) and why."""


def read_csv_table(path: Path) -> dict[str, str]:
    """Plant code -> enterprise code from a CSV file (see the module docstring)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError as error:
        raise CsvTableError(f"lookup file {str(path)!r} not found") from error
    except IsADirectoryError as error:
        raise CsvTableError(f"lookup file {str(path)!r} is a directory") from error
    except OSError as error:
        raise CsvTableError(f"cannot read lookup file {str(path)!r}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise CsvTableError(f"lookup file {str(path)!r} is not UTF-8 text") from error
    rows = csv.reader(io.StringIO(text, newline=""))
    table: dict[str, str] = {}
    header_seen = False
    for row in rows:
        line = rows.line_num
        if not any(cell.strip() for cell in row):
            continue
        if not header_seen:
            header_seen = True
            if len(row) < 2:
                raise CsvTableError(
                    f"{path}:{line}: the header row needs two columns (plant code, enterprise "
                    f"code), got {len(row)}"
                )
            continue
        if len(row) < 2:
            raise CsvTableError(f"{path}:{line}: expected two columns, got {len(row)}: {row!r}")
        plant, enterprise = row[0].strip(), row[1].strip()
        if not plant or not enterprise:
            raise CsvTableError(f"{path}:{line}: empty code in {row!r}")
        if plant in table:
            raise CsvTableError(f"{path}:{line}: plant code {plant!r} is listed twice")
        table[plant] = enterprise
    if not header_seen:
        raise CsvTableError(f"lookup file {str(path)!r} is empty (expected a header row)")
    return table


def code_text(value: bool | int | float | str) -> str:
    """A raw value as a code: booleans as true/false, whole floats without `.0`, text stripped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value.strip()
    return str(value)
