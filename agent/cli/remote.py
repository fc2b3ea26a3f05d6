"""Hub-side tools: ask agents over MQTT, watch the fleet, tail events, make signing keys.

    edge-agent remote status|sources|buffer|config|ping --hub URL --site S --agent A [--json]
    edge-agent remote replay --since T [--until T] [--type T ...] --key FILE ...
    edge-agent remote reload --key FILE ...
    edge-agent remote pause|resume SOURCE --key FILE ...
    edge-agent fleet --hub URL [--prefix mfg] [--watch]
    edge-agent tail --hub URL [--site S] [--type T] [--count N] [--duration S]
    edge-agent keys create --out DIR [--name NAME]

Each connects to the hub with its own MQTT v5 client (`MqttSession`), bounded by `--timeout`,
secured like the agent's `[hub]`: `--ca-file`, `--client-cert`/`--client-key`, `--username`,
`--password-file`.
Exit codes: 0 success, 1 no answer / refused / hub unreachable, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2
_READ_ONLY = ("status", "sources", "buffer", "config", "ping")
_CLASSES = ("telemetry", "business", "critical")


class _Failure(Exception):
    """Print the message and exit 1."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    remote = commands.add_parser("remote", help="ask one agent over MQTT: status, commands")
    verbs = remote.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    for name in _READ_ONLY:
        verb = verbs.add_parser(name, help=f"the agent's {name}" if name != "ping" else "ping")
        _target_arguments(verb, key_required=False)
        verb.add_argument("--json", action="store_true", help="print the raw JSON answer")
        verb.set_defaults(handler=_remote, command=name)
    replay = verbs.add_parser("replay", help="send delivered events of a time range again")
    _target_arguments(replay, key_required=True)
    replay.add_argument("--since", required=True, help="RFC 3339 time, e.g. 2026-01-31T08:00Z")
    replay.add_argument("--until", help="RFC 3339 time (default: now)")
    replay.add_argument("--type", dest="types", action="append", help="event type (repeatable)")
    replay.set_defaults(handler=_remote, command="replay")
    reload = verbs.add_parser("reload", help="re-read the agent's config file")
    _target_arguments(reload, key_required=True)
    reload.set_defaults(handler=_remote, command="reload")
    for name in ("pause", "resume"):
        verb = verbs.add_parser(name, help=f"{name} one source")
        verb.add_argument("source", help="the source's name in the agent's config")
        _target_arguments(verb, key_required=True)
        verb.set_defaults(handler=_remote, command=name)

    fleet = commands.add_parser("fleet", help="one line per agent from their retained status")
    _hub_arguments(fleet)
    fleet.add_argument("--watch", action="store_true", help="keep showing changes")
    fleet.add_argument("--duration", type=float, help="with --watch: stop after SECONDS")
    fleet.add_argument("--behind-s", type=float, default=300.0,
                       help="flag an agent whose oldest pending event is older (default 300)")
    fleet.add_argument("--json", action="store_true", help="one JSON object per agent")
    fleet.set_defaults(handler=_fleet)

    tail = commands.add_parser("tail", help="print events as they reach the hub")
    _hub_arguments(tail)
    tail.add_argument("--site", default="+", help="only this site")
    tail.add_argument("--agent", default="+", help="only this agent")
    tail.add_argument("--type", help="only this event type, e.g. telemetry or telemetry.v1")
    tail.add_argument("--count", type=int, help="stop after N events")
    tail.add_argument("--duration", type=float, help="stop after SECONDS")
    tail.add_argument("--json", action="store_true", help="one JSON object per event")
    tail.set_defaults(handler=_tail)

    keys = commands.add_parser("keys", help="signing keys for remote commands")
    key_verbs = keys.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    create = key_verbs.add_parser("create", help="make an Ed25519 key pair")
    create.add_argument("--out", type=Path, required=True, help="directory for the two files")
    create.add_argument("--name", default="hub-ops", help="key name (default hub-ops)")
    create.set_defaults(handler=_keys_create)


def _hub_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub", required=True,
                        help="the hub broker, mqtt://HOST:PORT or mqtts://HOST:PORT (TLS)")
    parser.add_argument("--prefix", default="mfg", help="topic prefix (default mfg)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    tls = parser.add_argument_group("hub security (as [hub] in the agent's config)")
    tls.add_argument("--ca-file", type=Path,
                     help="CA certificate(s) the broker's certificate must chain to "
                          "(mqtts; default: the system's CAs)")
    tls.add_argument("--client-cert", type=Path, help="client certificate (PEM), for mTLS")
    tls.add_argument("--client-key", type=Path, help="the client certificate's private key")
    tls.add_argument("--username", help="MQTT username")
    tls.add_argument("--password-file", type=Path,
                     help="file holding the MQTT password (never on the command line)")


def _target_arguments(parser: argparse.ArgumentParser, *, key_required: bool) -> None:
    _hub_arguments(parser)
    parser.add_argument("--site", required=True, help="the agent's site")
    parser.add_argument("--agent", required=True, help="the agent's id")
    parser.add_argument("--key", type=Path, required=key_required,
                        help="Ed25519 private key (PEM) to sign the request")
    parser.add_argument("--key-id", help="key name in the agent's config (default: from file)")


# -- the hub connection ------------------------------------------------------------------------


# The config's `[hub]` keys, as this CLI spells them (in error messages).
_HUB_OPTIONS = {
    "url": "--hub", "ca_file": "--ca-file", "cert_file": "--client-cert",
    "key_file": "--client-key", "username": "--username", "password": "--password-file",
}


def _hub_message(message: str) -> str:
    message = message.removeprefix("Value error, ")
    for key, option in _HUB_OPTIONS.items():
        message = message.replace(f"hub.{key}", option).replace(f"`{key}`", option)
    return message


def _hub_section(args: argparse.Namespace) -> Any:
    """The `--hub` options as the config's `[hub]` section: the same checks, the same TLS
    and password handling as the agent's own connection (`agent.credentials`)."""
    from pydantic import ValidationError

    from config.schema import HubSection

    def absolute(path: Path | None) -> str | None:
        return str(path.expanduser().absolute()) if path is not None else None

    options = {
        "ca_file": absolute(args.ca_file), "cert_file": absolute(args.client_cert),
        "key_file": absolute(args.client_key), "username": args.username,
        "password": f"file:{absolute(args.password_file)}" if args.password_file else None,
    }
    try:
        return HubSection(url=args.hub, **{k: v for k, v in options.items() if v is not None})
    except ValidationError as error:
        problems = "; ".join(
            f"{_HUB_OPTIONS.get(str(e['loc'][0]), '--hub') if e['loc'] else '--hub'}: "
            f"{_hub_message(e['msg'])}"
            for e in error.errors()
        )
        raise _Failure(f"bad hub options: {problems}") from error


@asynccontextmanager
async def _hub_session(
    args: argparse.Namespace, on_message: Callable[[str, bytes, Any], None]
) -> Any:
    from agent.credentials import CredentialError, hub_credentials
    from agent.mqtt_session import MqttSession

    hub = _hub_section(args)
    timeout = args.timeout
    try:
        credentials = hub_credentials(hub)
    except CredentialError as error:
        raise _Failure(_hub_message(str(error))) from error
    quiet = logging.getLogger("edge-agent.cli.hub")
    quiet.setLevel(logging.CRITICAL)
    session = MqttSession(
        host=hub.host,
        port=hub.port,
        client_id=f"edge-agent-cli-{uuid.uuid4().hex[:12]}",
        tls=credentials.tls,
        username=credentials.username,
        password=credentials.password,
        connect_timeout_s=timeout,
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
        on_message=on_message,
        logger=quiet,
    )
    async with session:
        yield session


async def _connected(session: Any, url: str, timeout: float) -> None:
    if not await session.wait_connected(timeout):
        why = f": {session.last_error}" if session.last_error else ""
        raise _Failure(f"cannot reach the hub at {url} within {timeout:g} s{why}")


def _run(coroutine: Any) -> int:
    try:
        result: int = asyncio.run(coroutine)
    except _Failure as failure:
        print(f"edge-agent: {failure}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    return result


# -- remote COMMAND ----------------------------------------------------------------------------


def _remote(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {}
    command: str = args.command
    request_args: dict[str, Any] = {}
    if command == "replay":
        request_args["since"] = args.since
        if args.until:
            request_args["until"] = args.until
        if args.types:
            request_args["types"] = args.types
    elif command in ("pause", "resume"):
        request_args["source"] = args.source
    if args.key is not None:
        from agent.signing import RequestSigner

        try:
            signer = RequestSigner.from_file(args.key, args.key_id)
        except ValueError as error:
            print(f"edge-agent: --key: {error}", file=sys.stderr)
            return EXIT_INVALID
        request = signer.sign(command, request_args, target=f"{args.site}/{args.agent}")
    elif request_args:
        request["args"] = request_args
    return _run(_ask(args, command, request))


async def _ask(args: argparse.Namespace, command: str, request: dict[str, Any]) -> int:
    who = f"{args.site}/{args.agent}"
    root = f"{args.prefix}/{args.site}/{args.agent}"
    reply_topic = f"{root}/reply/{uuid.uuid4().hex}"
    correlation = uuid.uuid4().bytes
    answers: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)

    def on_message(topic: str, payload: bytes, properties: Any) -> None:
        if topic == reply_topic and getattr(properties, "CorrelationData", None) == correlation:
            if not answers.full():
                answers.put_nowait(payload)

    deadline = time.monotonic() + args.timeout
    async with _hub_session(args, on_message) as session:
        await session.subscribe(reply_topic, qos=1)
        await _connected(session, args.hub, args.timeout)
        future = session.publish(
            f"{root}/cmd/{command}",
            json.dumps(request).encode(),
            qos=1,
            content_type="application/json",
            response_topic=reply_topic,
            correlation_data=correlation,
        )
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                await future
                payload = await answers.get()
        except TimeoutError:
            raise _Failure(
                f"agent {who} did not answer {command!r} within {args.timeout:g} s "
                f"(is it online? try `edge-agent fleet --hub {args.hub}`)"
            ) from None
    answer = json.loads(payload)
    if getattr(args, "json", False):
        print(json.dumps(answer, indent=2))
    elif answer.get("ok"):
        print(_render_answer(command, answer["result"]))
    if not answer.get("ok"):
        error = answer.get("error", {})
        print(f"edge-agent: {who} refused {command!r} ({error.get('reason')}): "
              f"{error.get('message')}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _render_answer(command: str, result: Any) -> str:
    if command == "status":
        return _render_status(result)
    if command == "sources":
        return _render_sources(result)
    if command == "buffer":
        return _render_buffer(result)
    if command == "ping":
        return f"pong (uptime {result['uptime_s']} s)"
    return json.dumps(result, indent=2)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _render_sources(sources: dict[str, Any]) -> str:
    rows = [["SOURCE", "STATE", "CONNECTED", "LAST VALUE", "READINGS", "ERROR"]]
    for name, source in sources.items():
        rows.append([
            name, source["state"], "yes" if source["connected"] else "no",
            _ago(source["last_value_at"]), str(source["readings_total"]),
            source["last_error"] or "-",
        ])
    return _table(rows)


def _render_buffer(buffer: dict[str, Any]) -> str:
    rows = [["CLASS", "PENDING", "OLDEST PENDING", "EVICTIONS"]]
    for name, entry in buffer["classes"].items():
        rows.append([name, str(entry["pending"]), _age_text(entry.get("oldest_pending_age_s")),
                     str(entry["evictions"])])
    oldest = buffer["oldest_pending_age_s"]
    return (
        _table(rows)
        + f"\npending {buffer['pending']}, oldest pending "
        + (f"{oldest:.0f} s ago" if oldest is not None else "-")
        + f", last seq {buffer['last_seq']}, dead letters {buffer['dead_letters']}"
    )


def _render_status(status: dict[str, Any]) -> str:
    forwarder = status["forwarder"]
    head = (
        f"{status['site']}/{status['agent']}: {status['state']}, version {status['version']}, "
        f"up {status['uptime_s']:.0f} s, config {status['config_fingerprint']}\n"
        f"hub {'connected' if forwarder['connected'] else 'NOT connected'}, "
        f"forwarded {forwarder['events_forwarded_total']}, "
        f"{forwarder['events_per_s']} events/s, last PUBACK {_ago(forwarder['last_puback_at'])}"
    )
    return "\n\n".join(
        [head, _render_sources(status["sources"]), _render_buffer(status["buffer"])]
    )


def _age_text(seconds: Any) -> str:
    return f"{seconds:.0f} s" if isinstance(seconds, int | float) else "-"


def _ago(moment: str | None, now: float | None = None) -> str:
    if not moment:
        return "-"
    try:
        at = datetime.fromisoformat(moment)
    except ValueError:
        return moment
    seconds = (now if now is not None else time.time()) - at.timestamp()
    return f"{max(seconds, 0):.0f} s ago"


# -- fleet -------------------------------------------------------------------------------------


def _fleet(args: argparse.Namespace) -> int:
    return _run(_watch_fleet(args))


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

    async with _hub_session(args, on_message) as session:
        await session.subscribe(f"{args.prefix}/+/+/status", qos=1)
        await _connected(session, args.hub, args.timeout)
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
    table = [["", "SITE/AGENT", "STATE", "SOURCES", "BACKLOG tel/bus/crit",
              "OLDEST PENDING tel/bus/crit", "LAST FORWARD", "FLAGS"]]
    for row in rows:
        mark = "!" if row["flags"] else ""
        if row["state"] != "online":
            why = f"{row['state']} ({row.get('reason') or '?'})"
            table.append([mark, row["agent"], why, "-", "-", "-", "-", " ".join(row["flags"])])
            continue
        backlog = row["backlog"]
        oldest = row["oldest_pending_age_s_by_class"]
        table.append([
            mark, row["agent"], "online", f"{row['sources_up']}/{row['sources_total']}",
            "/".join(str(backlog.get(name, 0)) for name in _CLASSES),
            "/".join(_age_text(oldest.get(name)) for name in _CLASSES),
            _ago(row["last_puback_at"]), " ".join(row["flags"]),
        ])
    lines = _table(table).splitlines()
    for line in lines:
        if color and line.startswith("!"):
            line = f"\x1b[1;31m{line}\x1b[0m"
        print(line)
    sys.stdout.flush()


# -- tail --------------------------------------------------------------------------------------


def _tail(args: argparse.Namespace) -> int:
    return _run(_tail_events(args))


async def _tail_events(args: argparse.Namespace) -> int:
    from events.wire import decode_batch

    printed = 0
    done = asyncio.Event()
    wanted = args.type
    reader_gone = False  # stdout's reader closed early (`... | head`): stop, as `main` says

    def on_message(topic: str, payload: bytes, _properties: Any) -> None:
        nonlocal reader_gone
        if done.is_set():
            return
        try:
            print_events(topic, payload)
        except BrokenPipeError:  # raised in a session callback, which would only log it
            reader_gone = True
            done.set()

    def print_events(topic: str, payload: bytes) -> None:
        nonlocal printed
        try:
            events = decode_batch(payload)
        except Exception as error:  # a consumer tool: say what could not be read, go on
            print(f"# {topic}: not an event batch ({type(error).__name__})", file=sys.stderr)
            return
        for event in events:
            kind = str(event.get("type", ""))
            if wanted and kind != wanted and not kind.startswith(f"{wanted}.v"):
                continue
            print(_event_line(event, args.json), flush=True)
            printed += 1
            if args.count is not None and printed >= args.count:
                done.set()
                return

    async with _hub_session(args, on_message) as session:
        await session.subscribe(f"{args.prefix}/{args.site}/{args.agent}/events/#", qos=1)
        await _connected(session, args.hub, args.timeout)
        try:
            await asyncio.wait_for(done.wait(), args.duration)
        except TimeoutError:
            pass
    if reader_gone:
        raise BrokenPipeError("stdout closed by its reader")
    if args.count is not None and printed < args.count:
        print(f"edge-agent: {printed} of {args.count} event(s) seen", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _event_line(event: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(event, default=str)
    return (
        f"{event.get('time')} {event.get('site')}/{event.get('agent')} seq={event.get('seq')} "
        f"{event.get('type')} {event.get('subject')} {json.dumps(event.get('data'), default=str)}"
    )


# -- keys create -------------------------------------------------------------------------------


def _keys_create(args: argparse.Namespace) -> int:
    from agent.signing import create_key_pair

    try:
        private, public, raw = create_key_pair(args.out, args.name)
    except (ValueError, FileExistsError, OSError) as error:
        print(f"edge-agent: {error}", file=sys.stderr)
        return EXIT_INVALID
    print(f"private key: {private} (mode 0600; keep it at the hub, never on a plant)")
    print(f"public key:  {public}")
    print("\nin each agent's config:\n")
    print(f'[commands.keys]\n{args.name} = "ed25519:{raw}"   # or the path of {public.name}\n')
    print(f'[commands.allow]\nreplay = ["{args.name}"]\nreload = ["{args.name}"]\n'
          f'pause = ["{args.name}"]\nresume = ["{args.name}"]')
    return EXIT_OK
