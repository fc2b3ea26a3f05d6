"""Probing a file drop before the agent is (re)started (`edge-agent check-config --connect`).

The folder must exist and be a folder the agent can list and read, and write: it makes
`processed/` and `rejected/` in it and moves every file it took there. Where those two exist
already, they must be writable too. Nothing is read, moved or created.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from connectors.base import ProbeResult
from connectors.mes_files.config import MesFilesSettings
from connectors.mes_files.connector import PROCESSED, REJECTED


async def probe(settings: MesFilesSettings) -> list[ProbeResult]:
    """One result for the folder, one for each of its `processed/` and `rejected/` that exist."""
    return await asyncio.to_thread(_check_folders, settings.folder)


def _check_folders(folder: Path) -> list[ProbeResult]:
    results = [ProbeResult(f"folder {folder}", _folder_problem(folder))]
    for sub in (PROCESSED, REJECTED):
        if (folder / sub).exists():
            results.append(ProbeResult(f"folder {folder / sub}", _folder_problem(folder / sub)))
    return results


def _folder_problem(folder: Path) -> str | None:
    if not folder.exists():
        return "does not exist"
    if not folder.is_dir():
        return "is not a folder"
    missing = [name for name, mode in (("list", os.R_OK | os.X_OK), ("write", os.W_OK))
               if not os.access(folder, mode)]
    return f"the agent cannot {' or '.join(missing)} it" if missing else None
