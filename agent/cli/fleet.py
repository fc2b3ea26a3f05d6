"""`edge-agent fleet`: one line per agent, from the statuses the agents retain on the hub.

    edge-agent fleet --hub URL [--prefix mfg] [--watch [--duration S]] [--behind-s S] [--json]

It subscribes to `{prefix}/+/+/status` (`agent.link.status` says what a status holds and its
reduced forms), waits until the retained ones stop arriving, prints the table (flagged rows
first marked `!`, red on a terminal) and with `--watch` prints it again on every change.
`fleet_rows` is the reading of a status, flags included; it works on every form an agent
publishes. The hub connection and its options: `agent.cli.hub`.
Exit codes: 0 done, 1 hub unreachable, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from agent.cli.hub import add_hub_arguments, connect_to_hub, run_hub_tool, wait_until_connected
from agent.cli.tables import age_text, ago, table

EXIT_OK = 0
_CLASSES = ("telemetry", "business", "critical")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = commands.add_parser("fleet", help="one line per agent from their retained status")
    add_hub_arguments(fleet)
    fleet.add_argument("--watch", action="store_true", help="keep showing changes")
    fleet.add_argument("--duration", type=float, help="with --watch: stop after SECONDS")
    fleet.add_argument("--behind-s", type=float, default=300.0,
                       help="flag an agent whose oldest pending event is older (default 300)")
    fleet.add_argument("--json", action="store_true", help="one JSON object per agent")
    fleet.set_defaults(handler=_fleet)


def _fleet(args: argparse.Namespace) -> int:
    return run_hub_tool(_watch_fleet(args))


async def _watch_fleet(args: argparse.Namespace) -> int:
    statuses: dict[str, dict[str, Any]] = {}
    changed = asyncio.Event()

    def on_message(topic: str, payload: bytes, _properties: Any) -> None:
        parts = topic.split("/")
        try:
            document = json.loads(payload)
        except ValueError:
            document = {"state": "unreadable"}
        if not isinstance(document, dict):
            document = {"state": "unreadable"}
        statuses[f"{parts[-3]}/{parts[-2]}"] = document
        changed.set()

    async with connect_to_hub(args, on_message) as session:
        await session.subscribe(f"{args.prefix}/+/+/status", qos=1)
        await wait_until_connected(session, args.hub, args.timeout)
        # Retained statuses arrive right after the subscription: wait until they stop coming.
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), 0.5)
            except TimeoutError:
                break
        _print_fleet(statuses, args)
        if not args.watch:
            return EXIT_OK
        end = time.monotonic() + args.duration if args.duration else None
        while end is None or time.monotonic() < end:
            changed.clear()
            try:
                wait = None if end is None else max(0.0, end - time.monotonic())
                await asyncio.wait_for(changed.wait(), wait)
            except TimeoutError:
                break
            await asyncio.sleep(0.2)  # let a burst of updates settle
            print()
            _print_fleet(statuses, args)
    return EXIT_OK


def fleet_rows(
    statuses: dict[str, dict[str, Any]], *, behind_s: float, now: float | None = None
) -> Iterator[dict[str, Any]]:
    """One summary per agent, with its problems (`flags`), sorted by site/agent."""
    now = time.time() if now is None else now
    for name in sorted(statuses):
        status = statuses[name]
        state = status.get("state", "?")
        flags: list[str] = []
        row: dict[str, Any] = {"agent": name, "state": state, "flags": flags}
        if state != "online":
            flags.append("OFFLINE" if state == "offline" else "UNREADABLE")
            row["reason"] = status.get("reason")
            row["since"] = status.get("at")
            yield row
            continue
        sources = status.get("sources", {})
        # A reduced retained status (agent.status) lists only some sources: count from its
        # summary.
        summary = status.get("sources_summary") or {}
        up = int(summary.get("up", sum(1 for s in sources.values() if s.get("connected"))))
        paused = int(
            summary.get("paused", sum(1 for s in sources.values() if s.get("state") == "paused"))
        )
        total = int(summary.get("total", len(sources)))
        buffer = status.get("buffer", {})
        classes = buffer.get("classes", {})
        oldest = buffer.get("oldest_pending_age_s")
        forwarder = status.get("forwarder", {})
        interval = float(status.get("interval_s", 30.0))
        at = _timestamp(status.get("at"))
        age = now - at if at is not None else None
        row.update(
            sources_up=up, sources_total=total, sources_paused=paused,
            backlog={name: entry.get("pending", 0) for name, entry in classes.items()},
            oldest_pending_age_s=oldest,
            oldest_pending_age_s_by_class={
                name: entry.get("oldest_pending_age_s") for name, entry in classes.items()
            }, last_puback_at=forwarder.get("last_puback_at"),
            status_age_s=age,
        )
        if age is None or age > 3 * interval + 5:
            flags.append("STALE")
        if oldest is not None and oldest > behind_s:
            flags.append("BEHIND")
        if up < total - paused:
            flags.append("SOURCE DOWN")
        if paused:
            flags.append("PAUSED")
        if not forwarder.get("connected", False):
            flags.append("HUB DOWN")
        if forwarder.get("paused_lanes"):
            flags.append("TOPIC REFUSED")
        yield row


def _timestamp(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _print_fleet(statuses: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    rows = list(fleet_rows(statuses, behind_s=args.behind_s))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        sys.stdout.flush()
        return
    if not rows:
        print(f"no agent status under {args.prefix}/ on {args.hub}")
        return
    color = sys.stdout.isatty()
    cells = [["", "SITE/AGENT", "STATE", "SOURCES", "BACKLOG tel/bus/crit",
              "OLDEST PENDING tel/bus/crit", "LAST FORWARD", "FLAGS"]]
    for row in rows:
        mark = "!" if row["flags"] else ""
        if row["state"] != "online":
            why = f"{row['state']} ({row.get('reason') or '?'})"
            cells.append([mark, row["agent"], why, "-", "-", "-", "-", " ".join(row["flags"])])
            continue
        backlog = row["backlog"]
        oldest = row["oldest_pending_age_s_by_class"]
        cells.append([
            mark, row["agent"], "online", f"{row['sources_up']}/{row['sources_total']}",
            "/".join(str(backlog.get(name, 0)) for name in _CLASSES),
            "/".join(age_text(oldest.get(name)) for name in _CLASSES),
            ago(row["last_puback_at"]), " ".join(row["flags"]),
        ])
    lines = table(cells).splitlines()
    for line in lines:
        if color and line.startswith("!"):
            line = f"\x1b[1;31m{line}\x1b[0m"
        print(line)
    sys.stdout.flush()
