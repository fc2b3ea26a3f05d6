"""`edge-agent fleet`: one line per agent, from the statuses the agents retain on the hub.

    edge-agent fleet --hub URL [--prefix mfg] [--watch [--duration S]] [--behind-s S] [--json]
    edge-agent fleet --from-hub http://HUB:8780/ [--watch [--duration S]] [--json]

It subscribes to `{prefix}/+/+/status` (`agent.link.status` says what a status holds and its
reduced forms), waits until the retained ones stop arriving, prints the table (flagged rows
first marked `!`, red on a terminal) and with `--watch` prints it again on every change.
`fleet_rows` is the reading of a status, flags included; it works on every form an agent
publishes. The hub connection and its options: `agent.cli.hub`.

With `--from-hub URL` (a hub process's dashboard, `hub.web`) it reads `URL/api/fleet` instead:
the hub's view (`hub.health`), flags included (stale, behind, gapped, offline), with the last
event landed, the events landed, open gaps and lost seqs; `--watch` reads it again every
`--interval` seconds. Credentials for the dashboard's basic auth go in the URL
(http://user:password@host:port/).
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
from urllib.parse import urljoin

from agent.cli.hub import (
    HubToolFailure,
    add_hub_arguments,
    connect_to_hub,
    run_hub_tool,
    wait_until_connected,
)
from agent.cli.tables import age_text, ago, table

EXIT_OK, EXIT_USAGE = 0, 2
_CLASSES = ("telemetry", "business", "critical")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = commands.add_parser("fleet", help="one line per agent from their retained status")
    add_hub_arguments(fleet)
    for action in fleet._actions:  # --hub or --from-hub: one of them (checked in _fleet)
        if action.dest == "hub":
            action.required = False
    fleet.add_argument("--from-hub", metavar="URL",
                       help="read the hub's dashboard (http://HOST:PORT/, its /api/fleet) "
                            "instead of the agents' statuses on the broker")
    fleet.add_argument("--interval", type=float, default=5.0,
                       help="with --from-hub --watch: seconds between reads (default 5)")
    fleet.add_argument("--watch", action="store_true", help="keep showing changes")
    fleet.add_argument("--duration", type=float, help="with --watch: stop after SECONDS")
    fleet.add_argument("--behind-s", type=float, default=300.0,
                       help="flag an agent whose oldest pending event is older (default 300)")
    fleet.add_argument("--json", action="store_true", help="one JSON object per agent")
    fleet.set_defaults(handler=_fleet)


def _fleet(args: argparse.Namespace) -> int:
    if args.from_hub:
        return run_hub_tool(_watch_hub_fleet(args))
    if not args.hub:
        print("edge-agent fleet: give --hub mqtt://HOST:PORT (the broker) or --from-hub "
              "http://HOST:PORT/ (a hub's dashboard)", file=sys.stderr)
        return EXIT_USAGE
    return run_hub_tool(_watch_fleet(args))


async def _watch_hub_fleet(args: argparse.Namespace) -> int:
    end = time.monotonic() + args.duration if args.duration else None
    previous: list[dict[str, Any]] | None = None
    while True:
        rows = await read_hub_fleet(args.from_hub, args.timeout)
        if rows != previous:
            if previous is not None:
                print()
            _print_hub_fleet(rows, args)
            previous = rows
        if not args.watch or (end is not None and time.monotonic() >= end):
            return EXIT_OK
        wait = args.interval if end is None else min(args.interval, end - time.monotonic())
        await asyncio.sleep(max(wait, 0.0))


async def read_hub_fleet(url: str, timeout: float) -> list[dict[str, Any]]:
    """The rows of a hub's `/api/fleet` (`hub.health.fleet_json`); HubToolFailure if the hub
    cannot be read."""
    import aiohttp

    api = urljoin(url if url.endswith("/") else url + "/", "api/fleet")
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout)
        ) as session, session.get(api) as response:
            if response.status != 200:
                hint = " (give user:password@ in the URL)" if response.status == 401 else ""
                raise HubToolFailure(f"{api} answered HTTP {response.status}{hint}")
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        why = str(error) or type(error).__name__
        raise HubToolFailure(f"cannot read the hub's fleet at {api}: {why}") from error
    agents = body.get("agents") if isinstance(body, dict) else None
    if not isinstance(agents, list):
        raise HubToolFailure(f"{api} did not answer a fleet (no `agents` list)")
    return [row for row in agents if isinstance(row, dict)]


def hub_fleet_table(rows: list[dict[str, Any]], *, now: float | None = None) -> list[list[str]]:
    """The table of a hub's fleet rows (flagged first, as the hub orders them)."""
    cells = [["", "SITE/AGENT", "STATE", "LAST EVENT", "LANDED", "BACKLOG tel/bus/crit",
              "OLDEST PENDING tel/bus/crit", "GAPS", "LOST", "FLAGS"]]
    for row in rows:
        flags = [str(flag).upper() for flag in row.get("flags") or []]
        state = str(row.get("state", "?"))
        if row.get("status_reason"):
            state += f" ({row['status_reason']})"
        backlog = row.get("backlog") or {}
        oldest = row.get("oldest_pending_s") or {}
        gaps = int(row.get("open_gaps") or 0)
        lost = row.get("lost") or {}
        cells.append([
            "!" if flags else "", f"{row.get('site')}/{row.get('agent')}", state,
            ago(row.get("last_received_at"), now), str(row.get("landed_total", 0)),
            "/".join("-" if backlog.get(name) is None else str(backlog[name])
                     for name in _CLASSES),
            "/".join(age_text(oldest.get(name)) for name in _CLASSES),
            f"{gaps} ({row.get('missing_seqs', 0)} seqs)" if gaps else "-",
            " ".join(f"{reason}:{count}" for reason, count in sorted(lost.items())) or "-",
            " ".join(flags),
        ])
    return cells


def _print_hub_fleet(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    if args.json:
        for row in rows:
            print(json.dumps(row))
        sys.stdout.flush()
        return
    if not rows:
        print(f"the hub at {args.from_hub} knows no agent yet")
        return
    _print_lines(table(hub_fleet_table(rows)).splitlines())


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
    _print_lines(table(cells).splitlines())


def _print_lines(lines: list[str]) -> None:
    color = sys.stdout.isatty()
    for line in lines:
        if color and line.startswith("!"):
            line = f"\x1b[1;31m{line}\x1b[0m"
        print(line)
    sys.stdout.flush()
