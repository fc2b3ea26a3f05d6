"""The service commands: what the agent on this machine is doing, without MQTT.

    edge-agent status -c CONFIG [--json]   sources, buffer, hub connection and last errors, from
                                           the state dir (works while the agent is down)

Exit codes follow `systemctl status`: 0 the agent is running, 3 it is not, 2 invalid config,
1 the state dir cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

EXIT_RUNNING, EXIT_FAILURE, EXIT_INVALID, EXIT_NOT_RUNNING = 0, 1, 2, 3


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser(
        "status", help="what the agent on this machine is doing (from its state dir)"
    )
    status.add_argument("-c", "--config", type=Path, required=True, help="the agent's TOML config")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.set_defaults(handler=_status)


def _status(args: argparse.Namespace) -> int:
    from agent.cli.core import _load
    from agent.runtime import buffer_path
    from agent.status_file import StatusUnreadable, process_alive, read_buffer_stats, read_status
    from config.schema import AgentConfig

    config = _load(args.config)
    if config is None:
        return EXIT_INVALID
    assert isinstance(config, AgentConfig)
    state_dir = config.agent.state_dir
    try:
        snapshot = read_status(state_dir)
    except StatusUnreadable as error:
        print(f"edge-agent status: {error}", file=sys.stderr)
        return EXIT_FAILURE
    running = snapshot is not None and snapshot.get("state") != "stopped" and process_alive(
        snapshot.get("pid")
    )
    buffer = read_buffer_stats(buffer_path(config))
    report = {
        "running": running,
        "state_dir": str(state_dir),
        "snapshot": snapshot,
        "buffer": buffer,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_text(config.agent.site, config.agent.id, report))
    return EXIT_RUNNING if running else EXIT_NOT_RUNNING


def _text(site: str, agent_id: str, report: dict[str, Any]) -> str:
    snapshot: dict[str, Any] | None = report["snapshot"]
    lines = [f"edge-agent {site}/{agent_id} (state dir {report['state_dir']})"]
    if snapshot is None:
        lines.append("  agent: not running; it never ran with this state dir (no status.json)")
    else:
        written = f"snapshot written {_ago(snapshot.get('written_at'))}"
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
    forwarder = snapshot.get("forwarder")
    if forwarder:
        lines.append(
            f"  forwarded: {forwarder.get('events_forwarded_total', 0)} events this run,"
            f" {forwarder.get('events_dead_lettered_total', 0)} dead-lettered"
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


def _ago(moment: object) -> str:
    if not isinstance(moment, str):
        return "at an unknown time"
    try:
        seconds = time.time() - datetime.fromisoformat(moment).timestamp()
    except ValueError:
        return f"at {moment}"
    return f"{seconds:.0f} s ago" if seconds < 3600 else f"at {moment}"
