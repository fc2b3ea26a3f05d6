"""The mapping commands.

    edge-agent try -c CONFIG --signal NAME --value V [--time T] [--quality Q]
                   [--set NAME=V ...]

`try` shows, as JSON, the event(s) that one value of one signal would produce under CONFIG,
without a server, a broker or the buffer. `--set` feeds earlier values first (in the order
given; their events are not shown): the previous count of a counter, the order id and counts a
work order's done bit reads, the state before a change. A signal is named by its `name`, its
node address, or SOURCE/NAME when two sources have one of that name.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    attempt = commands.add_parser(
        "try", help="show the event(s) one value of a signal would produce (no server needed)"
    )
    attempt.add_argument("-c", "--config", type=Path, required=True, help="the agent's config")
    attempt.add_argument("--signal", required=True, help="signal name, node, or SOURCE/NAME")
    attempt.add_argument(
        "--value", required=True, help="true/false, a number, or text (quote it: '\"7\"')"
    )
    attempt.add_argument("--time", help="source timestamp, RFC 3339 (default: now)")
    attempt.add_argument("--quality", choices=("good", "uncertain", "bad"), default="good")
    attempt.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=V",
        help="an earlier value of a signal, fed first (repeatable)",
    )
    attempt.set_defaults(handler=_try)


def parse_value(text: str) -> bool | int | float | str | None:
    """true/false, null, a number, a JSON string ("7"), else the text itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return text


def _try(args: argparse.Namespace) -> int:
    from agent.cli.config_file import load_or_report
    from agent.flow.mapping import Mapper, SignalMapper
    from config.schema import AgentConfig
    from connectors.base import Quality, Reading
    from events.wire import envelope

    config = load_or_report(args.config)
    if config is None:
        return EXIT_INVALID
    assert isinstance(config, AgentConfig)
    mapper = Mapper.from_config(config)

    def find(name: str) -> SignalMapper | None:
        matches = [
            m
            for m in mapper.signals
            if name in (m.name, m.signal, f"{m.source}/{m.name}", f"{m.source}/{m.signal}")
        ]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            known = ", ".join(sorted(f"{m.source}/{m.name}" for m in mapper.signals))
            print(f"edge-agent try: no signal {name!r}; signals: {known}", file=sys.stderr)
        else:
            options = ", ".join(f"{m.source}/{m.name}" for m in matches)
            print(f"edge-agent try: {name!r} is ambiguous: {options}", file=sys.stderr)
        return None

    try:
        moment = datetime.fromisoformat(args.time) if args.time else datetime.now(UTC)
    except ValueError:
        print(f"edge-agent try: --time {args.time!r} is not an RFC 3339 time", file=sys.stderr)
        return EXIT_INVALID
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    earlier: list[tuple[SignalMapper, str]] = []
    for item in args.set:
        name, equals, value = item.rpartition("=")  # node ids contain "="
        signal = find(name)
        if not equals or signal is None:
            if not equals:
                print(f"edge-agent try: --set {item!r}: expected NAME=VALUE", file=sys.stderr)
            return EXIT_INVALID
        earlier.append((signal, value))
    target = find(args.signal)
    if target is None:
        return EXIT_INVALID
    # earlier values get earlier timestamps, one millisecond apart, in the order given
    for offset, (signal, value) in enumerate(earlier):
        stamp = moment - timedelta(milliseconds=len(earlier) - offset)
        prior = Reading(signal.source, signal.signal, parse_value(value), stamp)
        _, rejected = mapper.map_all([prior])
        for _, reason in rejected:
            print(f"edge-agent try: --set {signal.name}: {reason}", file=sys.stderr)
            return EXIT_INVALID
    reading = Reading(
        target.source, target.signal, parse_value(args.value), moment, Quality(args.quality)
    )
    events, rejected = mapper.map_all([reading])
    for _, reason in rejected:
        print(f"unmappable: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    envelopes = [
        envelope(e, site=config.agent.site, agent=config.agent.id) for e in events
    ]
    print(json.dumps(envelopes, indent=2))
    return EXIT_OK
