"""`edge-agent opcua watch -c CONFIG`: the configured signals' live values, on this machine.

    edge-agent opcua watch -c CONFIG [--source NAME] [--signal S ...] [--lines]
                                     [--count N] [--seconds S] [--refresh S]

It connects to the configured OPC UA source(s) itself, with the source's own settings and the
agent's own connector (`connectors.opcua.OpcUaConnector`: the same security, addressing and
subscriptions as `run`), and shows what arrives: on a terminal a table refreshed every
`--refresh` seconds (signal, address, value, quality as the StatusCode name, source time,
changes, problem), otherwise (or with `--lines`) one line per reading, so a script can read
it. State changes (connected, lost, a signal that cannot be watched) go to stderr, once each.

It forwards nothing and writes nothing: no buffer, no hub; a running agent is not disturbed
(an OPC UA server takes several sessions). A lost session is retried with the source's
backoff, as the agent does; a source whose config cannot work is reported and left out.

Bounded: `--count N` ends after N readings, `--seconds S` after S seconds (exit 1 when
`--count` was not reached by then), SIGINT or SIGTERM end it at once; every session is closed
before it returns (exit 0). Exit 2: the config is invalid, has no such source or signal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal as signals
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from agent.cli.signals import indented, show, signals_table
from agent.flow.signal_values import LastValues, status_name
from connectors.base import Reading

if TYPE_CHECKING:
    from connectors.opcua.connector import OpcUaConnector

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2
_CLEAR = "\x1b[H\x1b[J"  # cursor home, clear to the end of the screen


def register(tools: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    watch = tools.add_parser(
        "watch", help="live values of the configured signals (connects itself, like read)"
    )
    watch.add_argument("-c", "--config", type=Path, required=True, help="the agent's config")
    watch.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="NAME",
        help="only this OPC UA source (repeatable; default: all of them)",
    )
    watch.add_argument(
        "--signal",
        action="append",
        default=[],
        metavar="S",
        help="only this signal: its name or node as configured (repeatable)",
    )
    watch.add_argument(
        "--lines",
        action="store_true",
        help="one line per reading (the default when stdout is not a terminal)",
    )
    watch.add_argument("--count", type=_positive_int, metavar="N", help="end after N readings")
    watch.add_argument(
        "--seconds",
        type=_positive_float,
        metavar="S",
        help="end after S seconds (exit 1 if --count was not reached)",
    )
    watch.add_argument(
        "--refresh",
        type=_positive_float,
        default=1.0,
        metavar="S",
        help="seconds between table refreshes (default 1)",
    )
    watch.set_defaults(handler=_watch)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _watch(args: argparse.Namespace) -> int:
    from agent.cli.config_file import load_or_report
    from config.source_models import OpcUaSource
    from connectors.opcua.connector import OpcUaConnector

    config = load_or_report(args.config)
    if config is None:
        return EXIT_INVALID
    opcua = [source for source in config.sources if isinstance(source, OpcUaSource)]
    chosen = [source for source in opcua if not args.source or source.name in args.source]
    unknown_sources = sorted(set(args.source) - {source.name for source in opcua})
    if unknown_sources or not chosen:
        names = ", ".join(source.name for source in opcua) or "none"
        what = (
            f"no OPC UA source {', '.join(map(repr, unknown_sources))}"
            if unknown_sources
            else "no OPC UA source"
        )
        print(f"edge-agent: {args.config}: {what} (its OPC UA sources: {names})", file=sys.stderr)
        return EXIT_INVALID
    connectors: list[OpcUaConnector] = []
    matched: set[str] = set()
    for source in chosen:
        picked = [
            signal
            for signal in source.signals
            if not args.signal or signal.node in args.signal or signal.name in args.signal
        ]
        matched.update(signal.node for signal in picked)
        matched.update(signal.name for signal in picked if signal.name)
        if picked:
            connectors.append(OpcUaConnector(source.name, source, picked))
    missing = [wanted for wanted in args.signal if wanted not in matched]
    if missing or not connectors:
        known = (
            ", ".join(signal.name or signal.node for source in chosen for signal in source.signals)
            or "none"
        )
        print(
            f"edge-agent: {args.config}: no signal {', '.join(map(repr, missing))} in "
            f"{', '.join(source.name for source in chosen)} (its signals: {known})",
            file=sys.stderr,
        )
        return EXIT_INVALID
    # asyncua's warnings are for its developers (as `opcua read` has them, agent.cli.opcua).
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    logging.basicConfig(level=logging.WARNING, format="edge-agent: %(message)s", stream=sys.stderr)
    table = not args.lines and sys.stdout.isatty()
    watch = Watch(connectors, count=args.count, table=table, refresh_s=args.refresh)
    return asyncio.run(watch.run(args.seconds))


class Watch:
    """The watch of the module docstring over `connectors`, printing to `out` (state lines
    to `err`)."""

    def __init__(
        self,
        connectors: Sequence[OpcUaConnector],
        *,
        count: int | None = None,
        table: bool = False,
        refresh_s: float = 1.0,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.connectors = list(connectors)
        self.count = count
        self.table = table
        self.refresh_s = refresh_s
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.values = LastValues()
        self.readings = 0
        self._done = asyncio.Event()
        self._names = {
            (connector.name, signal.node): getattr(signal, "name", None)
            for connector in self.connectors
            for signal in connector.signals
        }
        self._failed: set[str] = set()
        self._seen_state: dict[str, tuple[bool, dict[str, str]]] = {}

    async def run(self, seconds: float | None) -> int:
        """Watch until the bound, a signal or every source failed; the exit code."""
        loop = asyncio.get_running_loop()
        for number in (signals.SIGINT, signals.SIGTERM):
            loop.add_signal_handler(number, self._done.set)
        started = time.monotonic()
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._source(c)) for c in self.connectors]
                if self.table:
                    tasks.append(group.create_task(self._refresh()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(seconds):
                        await self._done.wait()
                for task in tasks:
                    task.cancel()
        finally:
            for number in (signals.SIGINT, signals.SIGTERM):
                loop.remove_signal_handler(number)
        if self.table:
            self._draw(clear=True, final=True)  # the last values seen
        if len(self._failed) == len(self.connectors):
            return EXIT_FAILURE
        if self.count is not None and self.readings < self.count:
            print(
                f"edge-agent: {self.readings} of {self.count} readings in "
                f"{time.monotonic() - started:.0f} s",
                file=self.err,
            )
            return EXIT_FAILURE
        return EXIT_OK

    async def _source(self, connector: OpcUaConnector) -> None:
        from connectors.backoff import Backoff
        from connectors.base import SourceConfigError, SourceUnavailable

        settings = connector.settings
        backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        watcher = asyncio.create_task(self._announce(connector))
        told: str | None = None  # the reason last told: a retry for the same one is quiet
        try:
            while True:
                readings_before = connector.health.readings_total
                try:
                    await connector.run(self._emit)
                    reason = "the session ended"
                except SourceConfigError as error:
                    connector.health.last_error = str(error)
                    self._state(connector.name, f"cannot be watched: {error}")
                    self._failed.add(connector.name)
                    if len(self._failed) == len(self.connectors):
                        self._done.set()
                    return
                except SourceUnavailable as error:
                    reason = str(error)
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise asyncio.CancelledError  # asyncua turned our cancellation into an error
                if connector.health.readings_total != readings_before:
                    backoff.reset()  # it ran: a new outage
                    told = None
                wait = backoff.next_s()
                if reason != told:
                    self._state(connector.name, f"unavailable: {reason}; retrying with backoff")
                    told = reason
                await asyncio.sleep(wait)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _announce(self, connector: OpcUaConnector) -> None:
        """State lines for the connection and each signal's problem, once per change."""
        while True:
            self._note_state(connector)
            await asyncio.sleep(0.2)

    def _note_state(self, connector: OpcUaConnector) -> None:
        health = connector.health
        connected, problems = self._seen_state.get(connector.name, (False, {}))
        if health.connected != connected and health.connected:
            self._state(connector.name, f"connected to {connector.settings.endpoint}")
        for address in problems.keys() - health.signal_errors.keys():
            self._state(connector.name, f"signal {address} is watched now")
        self._seen_state[connector.name] = (health.connected, dict(health.signal_errors))

    async def _emit(self, readings: Sequence[Reading]) -> None:
        if self._done.is_set():
            return
        if self.count is not None:
            readings = readings[: self.count - self.readings]
        for connector in self.connectors:
            if readings and connector.name == readings[0].source:
                self._note_state(connector)  # "connected" before its first values
        self.values.note(readings)
        self.readings += len(readings)
        if not self.table:
            for reading in readings:
                print(self._line(reading), file=self.out, flush=True)
        if self.count is not None and self.readings >= self.count:
            self._done.set()

    def _line(self, reading: Reading) -> str:
        last = self.values.by_source.get(reading.source, {}).get(reading.signal)
        name = self._names.get((reading.source, reading.signal))
        who = (
            f"{reading.source}/{name} [{reading.signal}]"
            if name
            else f"{reading.source} [{reading.signal}]"
        )
        received = (reading.received_at or datetime.now(UTC)).isoformat(timespec="milliseconds")
        source_time = (
            reading.source_timestamp.isoformat(timespec="milliseconds")
            if reading.source_timestamp
            else "-"
        )
        return (
            f"{received} {who} = {show(reading.value)} {status_name(reading)} "
            f"source_time={source_time} changes={last.changes if last else 1}"
        )

    async def _refresh(self) -> None:
        while True:
            self._draw(clear=True)
            await asyncio.sleep(self.refresh_s)

    def _draw(self, *, clear: bool = False, final: bool = False) -> None:
        lines: list[str] = []
        for connector in self.connectors:
            health = connector.health
            link = "connected" if health.connected else "not connected"
            if final:
                link = "session closed"
            if connector.name in self._failed:
                link = "stopped: " + (health.last_error or "cannot be watched")
            lines.append(f"{connector.name} ({connector.settings.endpoint}): {link}")
            document, left_out = self.values.document(
                connector.name,
                names={signal.node: getattr(signal, "name", None) for signal in connector.signals},
                errors=health.signal_errors,
            )
            lines += indented(signals_table(document, left_out), "  ")
        lines.append(f"{self.readings} reading(s); " + ("ended" if final else "Ctrl-C ends"))
        text = "\n".join(lines)
        self.out.write((_CLEAR if clear else "") + text + "\n")
        self.out.flush()

    def _state(self, source: str, text: str) -> None:
        print(f"edge-agent: {source}: {text}", file=self.err, flush=True)
