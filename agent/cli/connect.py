"""`edge-agent check-config CONFIG --connect`: ask each source's peer whether the config will
work there, before the agent is (re)started.

Each source type's probe (`config.source_types`) asks its own peer: an OPC UA server resolves
every node and says its data type (which must fit the event it feeds), a database runs the
poll query once, a file drop's folder must be there and writable, a webhook's listen address
must be free to bind. A simulated source has no peer and is skipped, saying so. One line per
thing checked; exit 1 when anything is wrong, 0 when all is well. Nothing is read or moved.

A problem line starts with `FILE:LINE:` of the source (a connection that fails) or of the
signal's `node` (an address the peer does not have), when the config came from a file, and
says what failed, the likely cause and what to check, once: the connector's message already
starts with what failed ("cannot connect to ..."), so nothing is prefixed to it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from config.schema import AgentConfig
from config.source_types import probe_source
from config.toml_locator import KeyPath, TomlKeyLocator
from connectors.base import ProbeResult, SourceConfigError, SourceUnavailable

EXIT_OK, EXIT_FAILURE = 0, 1


def check_connect(config: AgentConfig, path: Path | None = None) -> int:
    """Probe every source in config order, print what each found; the exit status. `path`
    (default: the file `load_or_report` read the config from) gives the problems their lines."""
    from agent.cli.config_file import path_of
    from agent.cli.opcua import quiet_asyncua

    quiet_asyncua()
    where = _Where(path or path_of(config))
    failures = asyncio.run(_probe_sources(config, where))
    if failures:
        print(f"{failures} problem(s) found on the sources' peers", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


class _Where:
    """`FILE:LINE: ` of a key path, or "" when the config has no file or the line is unknown."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._locator: TomlKeyLocator | None = None
        if path is not None:
            try:
                self._locator = TomlKeyLocator(path.read_text(encoding="utf-8-sig"))
            except (OSError, UnicodeDecodeError):
                self._locator = None

    def __call__(self, key: KeyPath) -> str:
        if self._locator is None:
            return ""
        line = self._locator.line_of(key)
        return f"{self._path}:{line}: " if line is not None else f"{self._path}: "


async def _probe_sources(config: AgentConfig, where: _Where) -> int:
    failures = 0
    for index, source in enumerate(config.sources):
        pending = probe_source(source)
        if pending is None:
            print(f"source {source.name}: nothing to ask ({source.type} has no peer)")
            continue
        try:
            results = await pending
        except (SourceUnavailable, SourceConfigError) as error:
            print(f"{where(('sources', index))}source {source.name}: {error}")
            failures += 1
            continue
        signals = {signal.node: number for number, signal in enumerate(source.signals)}
        for result in results:
            failures += result.problem is not None
            prefix = ""
            if result.problem is not None:
                number = signals.get(result.subject)
                key: KeyPath = ("sources", index) if number is None else (
                    "sources", index, "signals", number, "node"
                )
                prefix = where(key)
            print(f"{prefix}source {source.name}: {_line(result)}")
    return failures


def _line(result: ProbeResult) -> str:
    if result.problem is not None:
        return f"{result.subject}: {result.problem}"
    return f"{result.subject}: OK" + (f" ({result.seen})" if result.seen else "")
