"""The `edge-agent` command line.

Each command group lives in its own module with a `register(commands)` function that adds its
subcommands and sets `handler` (a function of the parsed arguments returning the exit code).
Add a group by adding its module to `_GROUPS` (the order of `edge-agent --help`). The hub tools
(`remote`, `fleet`, `tail`) share their hub options and connection in `agent.cli.hub`.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or invalid input (config, arguments).

Output piped into a reader that stops early (`edge-agent remote status ... | head`) ends the
command quietly with exit code 1, as the Python docs recommend for SIGPIPE: no
BrokenPipeError traceback, for every command, handled here once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from agent import __version__
from agent.cli import (
    buffer,
    core,
    fleet,
    hub_run,
    keys,
    mapping,
    opcua,
    remote,
    service,
    tail,
    units,
)

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2

_GROUPS = [core, remote, fleet, tail, keys, mapping, units, service, buffer, opcua, hub_run]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _dispatch(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here at the latest, not at exit
    except BrokenPipeError:
        # The reader went away (https://docs.python.org/3/library/signal.html#note-on-sigpipe):
        # point stdout at devnull so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE


def _dispatch(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="edge-agent",
        description="Plant edge agent: plant signals to canonical events, store-and-forward "
        "over MQTT v5.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in _GROUPS:
        group.register(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_INVALID
    result: int = args.handler(args)
    return result
