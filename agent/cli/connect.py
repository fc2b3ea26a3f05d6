"""`edge-agent check-config CONFIG --connect`: ask each source's peer whether the config will
work there, before the agent is (re)started.

Each source type's probe (`config.source_types`) asks its own peer: an OPC UA server resolves
every node and says its data type (which must fit the event it feeds), a database runs the
poll query once, a file drop's folder must be there and writable, a webhook's listen address
must be free to bind. A simulated source has no peer and is skipped, saying so. One line per
thing checked; exit 1 when anything is wrong, 0 when all is well. Nothing is read or moved.
"""

from __future__ import annotations

import asyncio
import sys

from config.schema import AgentConfig
from config.source_types import probe_source
from connectors.base import ProbeResult, SourceConfigError, SourceUnavailable

EXIT_OK, EXIT_FAILURE = 0, 1


def check_connect(config: AgentConfig) -> int:
    """Probe every source in config order, print what each found; the exit status."""
    failures = asyncio.run(_probe_sources(config))
    if failures:
        print(f"{failures} problem(s) found on the sources' peers", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


async def _probe_sources(config: AgentConfig) -> int:
    failures = 0
    for source in config.sources:
        pending = probe_source(source)
        if pending is None:
            print(f"source {source.name}: nothing to ask ({source.type} has no peer)")
            continue
        try:
            results = await pending
        except (SourceUnavailable, SourceConfigError) as error:
            print(f"source {source.name}: cannot connect: {error}")
            failures += 1
            continue
        for result in results:
            failures += result.problem is not None
            print(f"source {source.name}: {_line(result)}")
    return failures


def _line(result: ProbeResult) -> str:
    if result.problem is not None:
        return f"{result.subject}: {result.problem}"
    return f"{result.subject}: OK" + (f" ({result.seen})" if result.seen else "")
