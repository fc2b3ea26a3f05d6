"""The mapping commands.

    edge-agent try -c CONFIG --signal NAME --value V [--time T] [--quality Q]
                   [--set NAME=V ...]

`try` shows, as JSON, the event(s) that one value of one signal would produce under CONFIG,
without a server, a broker or the buffer. `--set` feeds earlier values first (in the order
given; their events are not shown): the previous count of a counter, the order id and counts a
work order's done bit reads, the state before a change. A signal is named by its `name`, its
node address, SOURCE/NAME or SOURCE/NODE, or ASSET/NAME (`L2/filler/state`), which always names
one signal: when a name is ambiguous (the same signal set on several lines, e.g. a template's
instances), `try` lists the candidates by ASSET/NAME and node.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent.flow.mapping import SignalMapper

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    attempt = commands.add_parser(
        "try", help="show the event(s) one value of a signal would produce (no server needed)"
    )
    attempt.add_argument("-c", "--config", type=Path, required=True, help="the agent's config")
    attempt.add_argument(
        "--signal", required=True, help="signal name, node, SOURCE/NAME or ASSET/NAME"
    )
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


def pick_signal(signals: Sequence[SignalMapper], wanted: str) -> tuple[SignalMapper | None, str]:
    """The signal `wanted` names, or None and why not: no signal, or several (each shown by
    what names it alone, and its node)."""
    matches = [m for m in signals if wanted in _selectors(m)]
    if len(matches) == 1:
        return matches[0], ""
    if not matches:
        known = ", ".join(sorted(_shortest(m, signals) for m in signals))
        return None, f"no signal {wanted!r}; signals: {known}"
    options = ", ".join(f"{label(m)} (node {m.signal})" for m in matches)
    return None, (
        f"{wanted!r} is ambiguous: {len(matches)} signals answer to it; pick one by ASSET/NAME "
        f"or by its node: {options}"
    )


def label(signal: SignalMapper) -> str:
    """ASSET/NAME: names one signal in the whole config (an asset's signal names are unique,
    `config.mapping.cross_check`)."""
    return f"{signal.rule.asset}/{signal.name}"


def _selectors(signal: SignalMapper) -> tuple[str, ...]:
    """What `--signal` may say to name `signal`: NAME, NODE, SOURCE/NAME, SOURCE/NODE or
    ASSET/NAME."""
    source = signal.source
    return (
        signal.name,
        signal.signal,
        f"{source}/{signal.name}",
        f"{source}/{signal.signal}",
        label(signal),
    )


def _shortest(signal: SignalMapper, signals: Sequence[SignalMapper]) -> str:
    """SOURCE/NAME when that names `signal` alone (as `try` always listed them), else
    ASSET/NAME (the same name on several assets of one source: template instances)."""
    short = f"{signal.source}/{signal.name}"
    clash = [m for m in signals if short in _selectors(m)]
    return short if len(clash) == 1 else label(signal)


def _try(args: argparse.Namespace) -> int:
    from agent.cli.config_file import load_or_report
    from agent.flow.mapping import Mapper
    from config.schema import AgentConfig
    from connectors.base import Quality, Reading
    from events.wire import envelope

    config = load_or_report(args.config)
    if config is None:
        return EXIT_INVALID
    assert isinstance(config, AgentConfig)
    mapper = Mapper.from_config(config)

    def find(name: str) -> SignalMapper | None:
        signal, problem = pick_signal(mapper.signals, name)
        if problem:
            print(f"edge-agent try: {problem}", file=sys.stderr)
        return signal

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
            print(f"edge-agent try: --set {label(signal)}: {reason}", file=sys.stderr)
            return EXIT_INVALID
    reading = Reading(
        target.source, target.signal, parse_value(args.value), moment, Quality(args.quality)
    )
    events, rejected = mapper.map_all([reading])
    for _, reason in rejected:
        print(f"unmappable: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    envelopes = [envelope(e, site=config.agent.site, agent=config.agent.id) for e in events]
    print(json.dumps(envelopes, indent=2))
    return EXIT_OK
