"""The service commands: what the agent on this machine is doing, without MQTT.

    edge-agent status -c CONFIG [--json]   sources, buffer, hub connection and last errors, from
                                           the state dir (works while the agent is down)

Exit codes follow `systemctl status`: 0 the agent is running, 3 it is not, 1 the state dir
cannot be read.

An invalid config file does not hide the status: someone mid-edit needs it most. The problems
are printed (as `check-config` prints them) with a line saying the file is invalid, and the
state dir is found as well as the file allows: its `agent.state_dir` if the TOML (or at least
its `[agent]` table) parses, else the default; relative to the config file's folder as the
loader takes it. The exit code then still says whether the agent runs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.cli.signals import indented, signals_table
from agent.cli.tables import ago

EXIT_RUNNING, EXIT_FAILURE, EXIT_INVALID, EXIT_NOT_RUNNING = 0, 1, 2, 3


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser(
        "status", help="what the agent on this machine is doing (from its state dir)"
    )
    status.add_argument("-c", "--config", type=Path, required=True, help="the agent's TOML config")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    from agent.service.status_file import (
        StatusUnreadable,
        process_alive,
        read_buffer_stats,
        read_status,
    )
    from agent.store import BUFFER_FILE
    from config.loader import ConfigError, load_config

    config_problems: list[str] = []
    try:
        config = load_config(args.config)
    except ConfigError as error:
        config_problems = [problem.format() for problem in error.problems]
        target = _target_of_invalid(args.config)
        print(
            f"edge-agent status: {args.config} is invalid ({len(config_problems)} problem(s)); "
            f"showing the status from the state dir {target.state_dir} ({target.found}):",
            file=sys.stderr,
        )
        for line in config_problems:
            print(f"  {line}", file=sys.stderr)
    else:
        target = _Target(config.agent.state_dir, config.agent.site, config.agent.id, "")
    state_dir = target.state_dir
    try:
        snapshot = read_status(state_dir)
    except StatusUnreadable as error:
        print(f"edge-agent status: {error}", file=sys.stderr)
        return EXIT_FAILURE
    running = snapshot is not None and snapshot.get("state") != "stopped" and process_alive(
        snapshot.get("pid")
    )
    buffer = read_buffer_stats(state_dir / BUFFER_FILE)
    report: dict[str, Any] = {
        "running": running,
        "state_dir": str(state_dir),
        "snapshot": snapshot,
        "buffer": buffer,
    }
    if config_problems:
        report["config_invalid"] = config_problems
    site = target.site or _text_field(snapshot, "site")
    agent_id = target.agent_id or _text_field(snapshot, "agent")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_text(site, agent_id, report))
        if config_problems:
            print(f"  config: {args.config} is INVALID ({len(config_problems)} problem(s), see "
                  "above); the agent would refuse it on start or reload")
    return EXIT_RUNNING if running else EXIT_NOT_RUNNING


@dataclass(frozen=True, slots=True)
class _Target:
    """Where the status of a config's agent is: its state dir, and its site and id ("" when
    unknown). `found` says how the state dir was found (for a config that did not validate)."""

    state_dir: Path
    site: str
    agent_id: str
    found: str


_SECTION_HEADER = re.compile(r"^\s*\[")


def _target_of_invalid(path: Path) -> _Target:
    """The state dir (and site, id) of a config file that did not validate, as well as the
    file allows: the whole TOML, else its `[agent]` table alone, else the schema's default."""
    from config.schema import AgentSection

    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError):
        text = ""
    agent = _raw_agent_table(text)
    raw_dir = agent.get("state_dir")
    if isinstance(raw_dir, str) and raw_dir and "\x00" not in raw_dir:
        state_dir, found = Path(raw_dir), "agent.state_dir in the file"
    else:
        state_dir = Path(AgentSection.model_fields["state_dir"].default)
        found = "the default state_dir"
    if not state_dir.is_absolute():
        state_dir = path.absolute().parent / state_dir
    site, agent_id = agent.get("site"), agent.get("id")
    return _Target(
        state_dir,
        site if isinstance(site, str) else "",
        agent_id if isinstance(agent_id, str) else "",
        found,
    )


def _raw_agent_table(text: str) -> dict[str, Any]:
    """The `[agent]` table of TOML text, unvalidated: from the whole text if it parses, else
    from the `[agent]` section's own lines (the typo is often elsewhere); {} if neither does."""
    candidates = [text]
    lines = text.split("\n")
    starts = [index for index, line in enumerate(lines) if line.strip().startswith("[agent]")]
    if starts:
        end = next(
            (index for index in range(starts[0] + 1, len(lines))
             if _SECTION_HEADER.match(lines[index])),
            len(lines),
        )
        candidates.append("\n".join(lines[starts[0]:end]))
    for candidate in candidates:
        try:
            agent = tomllib.loads(candidate).get("agent")
        except (tomllib.TOMLDecodeError, RecursionError, ValueError):
            continue
        if isinstance(agent, dict):
            return agent
    return {}


def _text_field(snapshot: dict[str, Any] | None, key: str) -> str:
    value = snapshot.get(key) if snapshot is not None else None
    return value if isinstance(value, str) else "?"


def _text(site: str, agent_id: str, report: dict[str, Any]) -> str:
    snapshot: dict[str, Any] | None = report["snapshot"]
    lines = [f"edge-agent {site}/{agent_id} (state dir {report['state_dir']})"]
    if snapshot is None:
        lines.append("  agent: not running; it never ran with this state dir (no status.json)")
    else:
        written_at = ago(snapshot.get("written_at"), unknown="at an unknown time")
        written = f"snapshot written {written_at}"
        if report["running"]:
            lines.append(
                f"  agent: running, pid {snapshot.get('pid')}, since {snapshot.get('started_at')}"
                f" ({written})"
            )
        elif snapshot.get("state") == "stopped":
            lines.append(f"  agent: not running; stopped cleanly ({written})")
        else:
            lines.append(
                f"  agent: not running; it was killed or crashed while {snapshot.get('state')}"
                f" (pid {snapshot.get('pid')}, last {written})"
            )
        lines += _hub_and_sources(snapshot)
    lines.append(_buffer_line(report["buffer"]))
    if snapshot is not None:
        reload = snapshot.get("last_reload")
        if reload:
            why = f": {reload['reason']}" if reload.get("reason") else ""
            lines.append(f"  last reload: {reload.get('result')} at {reload.get('at')}{why}")
        problems = snapshot.get("recent_problems") or []
        if problems:
            lines.append("  last problems:")
            lines += [f"    {p['at']} {p['level']}: {p['msg']}" for p in problems[-5:]]
    return "\n".join(lines)


def _hub_and_sources(snapshot: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    hub = snapshot.get("hub")
    if hub:
        state = "connected" if hub.get("connected") else "not connected"
        error = f" (last error: {hub['last_error']})" if hub.get("last_error") else ""
        lines.append(f"  hub {hub.get('url')}: {state}{error}")
    sources = snapshot.get("sources") or {}
    for name, source in sources.items():
        detail = f"{source.get('readings_total', 0)} readings"
        if source.get("last_value_at"):
            detail += f", last value {source['last_value_at']}"
        if source.get("last_error"):
            detail += f", last error: {source['last_error']}"
        counted = [f"{key.removesuffix('_total')} {value}"
                   for key, value in (source.get("counters") or {}).items() if value]
        if counted:
            detail += f" ({', '.join(counted)})"
        lines.append(f"  source {name}: {source.get('state')}, {detail}")
        lines += indented(
            signals_table(source.get("signals") or {}, source.get("signals_not_listed") or 0),
            "    ",
        )
    forwarder = snapshot.get("forwarder")
    if forwarder:
        lines.append(
            f"  forwarded: {forwarder.get('events_forwarded_total', 0)} events this run,"
            f" {forwarder.get('events_dead_lettered_total', 0)} dead-lettered"
        )
    lines += _dual_publish_lines(snapshot.get("event_types") or {})
    return lines


def _dual_publish_lines(event_types: dict[str, Any]) -> list[str]:
    """One line per retired version published beside its successor (`[contracts]
    dual_publish_until`): its window, and whether it is still open."""
    lines: list[str] = []
    for retired, window in (event_types.get("dual_publish") or {}).items():
        state = "publishing" if window.get("open") else "ended"
        lines.append(
            f"  dual publish {retired} beside {window.get('beside')}: {state}, until "
            f"{window.get('until')} ({window.get('copies_total', 0)} copies, "
            f"{window.get('skipped_total', 0)} not convertible)"
        )
    return lines


def _buffer_line(buffer: dict[str, Any]) -> str:
    if "error" in buffer:
        return f"  buffer: {buffer['error']}"
    oldest = buffer.get("oldest_pending_age_s")
    age = f" (oldest {oldest:.0f} s old)" if oldest is not None else ""
    return (
        f"  buffer (read now): {buffer['pending']} pending{age}, {buffer['dead_letters']} dead "
        f"letter(s), last seq {buffer['last_seq']}, {buffer['file_bytes'] / 1e6:.1f} MB"
    )

