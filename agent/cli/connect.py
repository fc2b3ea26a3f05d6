"""`edge-agent check-config CONFIG --connect`: ask each source's peer whether the config will
work there, before the agent is (re)started.

Each source type's probe (`config.source_types`) asks its own peer: an OPC UA server resolves
every node and says its data type (which must fit the event it feeds), a database runs the
poll query once, a file drop's folder must be there and writable, a webhook's listen address
must be free to bind. A simulated source has no peer and is skipped, saying so. One line per
thing checked; exit 2 when a signal's `unit` is not what its node's EngineeringUnits say (a
config error, `config.ucum_engineering`, reported on the line of the signal's `unit`), else 1
when anything is wrong, 0 when all is well. Nothing is read or moved.

The unit comparison happens here, not in the OPC UA row of `config.source_types`: the probe
passes the node's EngineeringUnits on (`NodeProbeResult`), and `config.ucum_engineering` reads
them with `config.tags`, which the config schema's own imports may not reach (a cycle).

A problem line starts with `FILE:LINE:` of the source (a connection that fails) or of the
signal's `node` (an address the peer does not have), when the config came from a file, and
says what failed, the likely cause and what to check, once: the connector's message already
starts with what failed ("cannot connect to ..."), so nothing is prefixed to it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from config.mapping import SignalMapping
from config.schema import AgentConfig
from config.source_types import probe_source
from config.templates import ExpandedLocator
from config.toml_locator import KeyPath
from config.ucum_engineering import UnitMismatch, check
from connectors.base import ProbeResult, SourceConfigError, SourceUnavailable
from connectors.opcua.probe import NodeProbeResult

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2


def check_connect(config: AgentConfig, path: Path | None = None) -> int:
    """Probe every source in config order, print what each found; the exit status. `path`
    (default: the file `load_or_report` read the config from) gives the problems their lines."""
    from agent.cli.config_file import path_of
    from agent.cli.opcua import quiet_asyncua

    quiet_asyncua()
    where = _Where(path or path_of(config))
    failures, mismatches = asyncio.run(_probe_sources(config, where))
    if mismatches:
        print(f"{mismatches} signal unit(s) differ from their nodes' EngineeringUnits",
              file=sys.stderr)
    if failures > mismatches:
        print(f"{failures - mismatches} problem(s) found on the sources' peers", file=sys.stderr)
    if mismatches:
        return EXIT_INVALID
    return EXIT_FAILURE if failures else EXIT_OK


class _Where:
    """`FILE:LINE: ` of a key path, or "" when the config has no file or the line is unknown."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        # A signal generated from a template is placed on its template's line.
        self._locator: ExpandedLocator | None = None
        if path is not None:
            try:
                self._locator = ExpandedLocator(path.read_text(encoding="utf-8-sig"))
            except (OSError, UnicodeDecodeError):
                self._locator = None

    def filled_in(self, error: Exception) -> str:
        """The error's text with its command hints (`-c CONFIG`) naming this config file,
        ready to paste."""
        text = str(error)
        return text if self._path is None else text.replace(" -c CONFIG", f" -c {self._path}")

    def __call__(self, key: KeyPath, *fallbacks: KeyPath) -> str:
        """The first of `key` and `fallbacks` whose line is known (a templated signal may have
        no `unit` line of its own)."""
        if self._locator is None:
            return ""
        for candidate in (key, *fallbacks):
            line = self._locator.line_of(candidate)
            if line is not None:
                return f"{self._path}:{line}: "
        return f"{self._path}: "


async def _probe_sources(config: AgentConfig, where: _Where) -> tuple[int, int]:
    """The number of problems, and how many of them are unit mismatches."""
    failures = mismatches = 0
    for index, source in enumerate(config.sources):
        pending = probe_source(source)
        if pending is None:
            print(f"source {source.name}: nothing to ask ({source.type} has no peer)")
            continue
        try:
            results = await pending
        except (SourceUnavailable, SourceConfigError) as error:
            print(f"{where(('sources', index))}source {source.name}: {where.filled_in(error)}")
            failures += 1
            continue
        signals = {signal.node: number for number, signal in enumerate(source.signals)}
        # Results come in signal order: a node that two signals read is matched to each in turn.
        queue: dict[str, list[int]] = {}
        for position, signal in enumerate(source.signals):
            queue.setdefault(signal.node, []).append(position)
        for found in results:
            waiting = queue.get(found.subject)
            number = waiting.pop(0) if waiting else signals.get(found.subject)
            result = _unit_checked(found, None if number is None else source.signals[number])
            failures += result.problem is not None
            mismatches += isinstance(result, UnitMismatch)
            prefix = ""
            if result.problem is not None:
                key: KeyPath = ("sources", index) if number is None else (
                    "sources", index, "signals", number, "node"
                )
                if isinstance(result, UnitMismatch) and number is not None:
                    prefix = where(("sources", index, "signals", number, "unit"), key)
                else:
                    prefix = where(key)
            print(f"{prefix}source {source.name}: {_line(result)}")
    return failures, mismatches


def _unit_checked(result: ProbeResult, signal: object) -> ProbeResult:
    """The result with the signal's unit compared to the node's EngineeringUnits, if any."""
    if (
        not isinstance(result, NodeProbeResult)
        or result.problem is not None
        or result.units is None
        or not isinstance(signal, SignalMapping)
    ):
        return result
    return check(
        result.subject, signal.unit, signal.scale, signal.offset, result.units, result.seen or ""
    )


def _line(result: ProbeResult) -> str:
    if result.problem is not None:
        return f"{result.subject}: {result.problem}"
    return f"{result.subject}: OK" + (f" ({result.seen})" if result.seen else "")
