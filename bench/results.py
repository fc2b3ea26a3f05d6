"""What every benchmark results file holds besides its figures, and how it is written.

A results file (`bench.run`'s `bench/results.json`, `bench.durability`'s
`bench/results.durability.json`) is one JSON object: the fields of `about_the_run` (the
conditions the figures were measured under: mode, start time, machine, the buffer's commit
policy) beside the benchmark's own figures. `bench.report` renders the docs' tables from the
committed reference copies of these files.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from config.schema import BufferSection


def about_the_run(mode: str) -> dict[str, Any]:
    """The conditions of a run that starts now: `mode` (the benchmark's own word for its
    scale), the start time, the machine (CPUs, Python, load average) and the default
    `[buffer] synchronous` the agent ran with."""
    return {
        "mode": mode,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
        "buffer_synchronous": BufferSection().synchronous,
    }


def write(path: Path, results: dict[str, Any]) -> None:
    """Write the results as JSON, making the directory if it is missing (`--out DIR/FILE`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
