"""The `edge-agent buffer` commands: look into the store-and-forward buffer and act on it.

    edge-agent buffer stats -c CONFIG [--json]
        depth per class, oldest pending age, bytes, evictions, dead letters, replay window.
        Read-only: works while the agent runs (SQLite WAL readers never block the writer).
    edge-agent buffer replay -c CONFIG --since T [--until T] [--type X]
        publish the delivered events still retained, accepted in [since, until), again: same
        topic, same ids and seqs, MQTT v5 user property `replay=true` (`agent.link.replay`: the
        same code as the remote `replay` command, here with its own session).
    edge-agent buffer dead-letters -c CONFIG [--retry [SEQ ...]]
        list the dead letters; `--retry` puts them (all, or these seqs) back in the queue: the
        agent sends them on its next start. Readings set aside before they were accepted
        (unmappable: seq `-`) are listed for a person to read and never retried.

`replay` and `--retry` write, so they take the state dir lock: while the agent runs they are
refused with the holder's pid and command line (stop the agent first; a running agent can be
asked to replay through the signed remote `replay` command instead).

T is an ISO 8601 time (`2026-11-26T14:00:00Z`; without a zone: UTC) or an age (`90s`, `30m`,
`2h`, `1d`: that long ago). Exit codes: 0 done, 1 failure (hub unreachable, locked, refused
messages), 2 bad arguments or config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.link.replay import ReplayOutcome

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2
_AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
_CLASS_NAMES = {0: "telemetry", 1: "business", 2: "critical"}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = commands.add_parser("buffer", help="inspect the buffer, replay, dead letters")
    verbs = group.add_subparsers(dest="buffer_command", metavar="ACTION", required=True)

    stats = verbs.add_parser("stats", help="depth, ages, bytes, evictions, replay window")
    stats.add_argument("-c", "--config", type=Path, required=True, help="the agent's TOML config")
    stats.add_argument("--json", action="store_true", help="print JSON instead of text")
    stats.set_defaults(handler=_stats)

    replay = verbs.add_parser("replay", help="publish retained delivered events again")
    replay.add_argument("-c", "--config", type=Path, required=True, help="the agent's TOML config")
    replay.add_argument("--since", required=True, help="ISO 8601 time or age (30m, 2h, 1d)")
    replay.add_argument("--until", help="ISO 8601 time or age (default: now)")
    replay.add_argument("--type", dest="kind", help="one event type, e.g. telemetry.v1")
    replay.set_defaults(handler=_replay)

    dead = verbs.add_parser("dead-letters", help="list dead letters, or --retry them")
    dead.add_argument("-c", "--config", type=Path, required=True, help="the agent's TOML config")
    dead.add_argument(
        "--retry", nargs="*", type=int, metavar="SEQ", help="queue them again (all, or these)"
    )
    dead.add_argument("--limit", type=int, default=1000, help="list at most this many")
    dead.set_defaults(handler=_dead_letters)


def parse_time(text: str, *, now: float | None = None) -> float:
    """A Unix time from an ISO 8601 time (naive: UTC) or an age like `30m`; ValueError else."""
    now = time.time() if now is None else now
    if text == "now":
        return now
    match = _AGE.match(text.strip())
    if match:
        return now - float(match.group(1)) * _AGE_UNITS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (expected ISO 8601 like 2026-11-26T14:00:00Z, or an age "
            "like 90s, 30m, 2h, 1d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _config(path: Path) -> Any:
    from agent.cli.config_file import load_or_report

    return load_or_report(path)


def _stats(args: argparse.Namespace) -> int:
    from agent import store
    from agent.service.statelock import holder
    from buffer.base import BufferFailure

    config = _config(args.config)
    if config is None:
        return EXIT_INVALID

    async def read() -> dict[str, Any]:
        async with store.open_reader(config) as buffer:
            stats = await buffer.stats()
        now = time.time()
        evictions: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
        for (priority, kind, reason), count in sorted(stats.evictions.items()):
            name = _CLASS_NAMES.get(priority, str(priority))
            evictions[name].setdefault(kind, {})[reason] = count
        oldest = stats.oldest_pending_at
        window = stats.oldest_retained_at
        return {
            "file": str(store.buffer_file(config)),
            "agent": holder(config.agent.state_dir) or "not running",
            "pending": stats.pending,
            "pending_by_class": {
                _CLASS_NAMES.get(p, str(p)): n for p, n in sorted(stats.pending_by_priority.items())
            },
            "oldest_pending_age_s": None if oldest is None else round(now - oldest, 3),
            "pending_bytes": stats.pending_bytes,
            "max_bytes": config.buffer.max_bytes,
            "retained": stats.acked_retained,
            "retained_bytes": stats.retained_bytes,
            "replay_window_from": None if window is None else _iso(window),
            "evictions": evictions,
            "dead_letters": stats.dead_letters,
            "last_seq": stats.last_seq,
            "file_bytes": stats.file_bytes,
        }

    try:
        document = asyncio.run(read())
    except BufferFailure as error:
        print(f"edge-agent buffer stats: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(document, indent=2))
        return EXIT_OK
    width = max(len(key) for key in document)
    for key, value in document.items():
        if isinstance(value, dict):
            value = json.dumps(value) if value else "none"
        print(f"{key.replace('_', ' '):<{width}}  {value}")
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    from agent.link.replay import ReplayStopped
    from buffer.base import BufferFailure, BufferLocked

    try:
        since = parse_time(args.since)
        until = parse_time(args.until) if args.until else None
    except ValueError as error:
        print(f"edge-agent buffer replay: {error}", file=sys.stderr)
        return EXIT_INVALID
    if until is not None and until <= since:
        print("edge-agent buffer replay: --until must be later than --since", file=sys.stderr)
        return EXIT_INVALID
    config = _config(args.config)
    if config is None:
        return EXIT_INVALID
    try:
        outcome = asyncio.run(_replay_async(config, since, until, args.kind))
    except BufferLocked as error:
        print(
            f"edge-agent buffer replay: refused: {error} (the agent itself can replay: send it "
            "the signed remote `replay` command)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except (BufferFailure, TimeoutError, ReplayStopped) as error:
        print(f"edge-agent buffer replay: {error}", file=sys.stderr)
        return EXIT_FAILURE
    print(outcome.summary())
    return EXIT_OK if not outcome.refused else EXIT_FAILURE


async def _replay_async(
    config: Any, since: float, until: float | None, kind: str | None
) -> ReplayOutcome:
    """Open the buffer (the state dir lock: the agent must be stopped) and a session of its
    own, and replay through `agent.link.replay.replay_retained`, in the config's hub format, as
    many messages in flight as the config and the broker allow."""
    from agent import store
    from agent.link.hub_session import hub_session
    from agent.link.replay import replay_retained
    from events.formats import FORMATS
    from events.wire import AgentIdentity

    hub = config.hub
    async with store.open_store(config, role="edge-agent buffer replay") as buffer:
        session = hub_session(hub, client_id=f"{config.client_id}-replay")
        async with session:
            if not await session.wait_connected(timeout=hub.connect_timeout_s * 2):
                raise TimeoutError(f"hub {hub.url} not reachable")
            return await replay_retained(
                buffer,
                session,
                topic_base=f"{hub.topic_prefix}/{config.agent.site}/{config.agent.id}/events",
                fallback=AgentIdentity(site=config.agent.site, agent=config.agent.id),
                since=since,
                until=until,
                kinds=[kind] if kind else None,
                batch_max_events=hub.batch_max_events,
                max_inflight=min(hub.max_inflight, session.receive_maximum),
                ack_timeout_s=hub.connect_timeout_s * 3,
                wire_format=FORMATS[hub.format],
            )


def _dead_letters(args: argparse.Namespace) -> int:
    from agent import store
    from buffer.base import BufferFailure, BufferLocked

    config = _config(args.config)
    if config is None:
        return EXIT_INVALID

    async def listing() -> list[Any]:
        async with store.open_reader(config) as buffer:
            return await buffer.dead_letters(args.limit)

    async def retry() -> tuple[int, int]:
        async with store.open_store(config, role="edge-agent buffer dead-letters --retry") as buf:
            return await buf.retry_dead_letters(args.retry or None)

    try:
        if args.retry is not None:
            moved, dropped = asyncio.run(retry())
            print(
                f"{moved} dead letter(s) queued again; the agent sends them when it runs"
                + (f"; {dropped} dropped: their id was accepted again since" if dropped else "")
            )
            return EXIT_OK
        letters = asyncio.run(listing())
    except BufferLocked as error:
        print(f"edge-agent buffer dead-letters --retry: refused: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except BufferFailure as error:
        print(f"edge-agent buffer dead-letters: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if not letters:
        print("no dead letters")
        return EXIT_OK
    print("seq\tid\ttype\tclass\tbytes\tdead at\treason")
    for letter in letters:
        print(
            f"{'-' if letter.seq is None else letter.seq}\t{letter.id}\t{letter.kind}\t"
            f"{_CLASS_NAMES.get(letter.priority, letter.priority)}\t{letter.size}\t"
            f"{_iso(letter.dead_at)}\t{letter.reason}"
        )
    return EXIT_OK


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
