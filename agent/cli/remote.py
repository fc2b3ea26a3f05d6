"""`edge-agent remote`: ask one agent over MQTT v5 request/response (`agent.link.commands`).

    edge-agent remote status|sources|buffer|config|ping --hub URL --site S --agent A [--json]
    edge-agent remote dead-letters [--offset N] [--limit N] ...
    edge-agent remote replay --since T [--until T] [--type T ...] --key FILE ...
    edge-agent remote retry (SEQ ... | --id ID ... | --all [--limit N]) --key FILE ...
    edge-agent remote reload --key FILE ...
    edge-agent remote pause|resume SOURCE --key FILE ...

The request goes to `{prefix}/{site}/{agent}/cmd/{command}` with a private response topic and
correlation data (with `--protocol 3.1.1`, fields of the request's JSON: `agent.link.mqtt311`);
the first answer carrying both is the one printed (as a table, or with
`--json` as the agent sent it). Mutating commands are signed with `--key` (`agent.link.signing`);
read-only ones may be. The hub connection and its options: `agent.cli.hub`.
Exit codes: 0 answered ok, 1 no answer / refused / hub unreachable, 2 bad usage (a key that
cannot be read).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from agent.cli.hub import (
    HubToolFailure,
    add_hub_arguments,
    connect_to_hub,
    run_hub_tool,
    wait_until_connected,
)
from agent.cli.signals import indented, signals_table
from agent.cli.tables import age_text, ago, table
from agent.link.mqtt311 import CORRELATION_FIELD, RESPONSE_TOPIC_FIELD, encode_correlation

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2
_READ_ONLY = ("status", "sources", "buffer", "config", "ping")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    remote = commands.add_parser("remote", help="ask one agent over MQTT: status, commands")
    verbs = remote.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    for name in _READ_ONLY:
        verb = verbs.add_parser(name, help=f"the agent's {name}" if name != "ping" else "ping")
        _target_arguments(verb, key_required=False)
        verb.add_argument("--json", action="store_true", help="print the raw JSON answer")
        verb.set_defaults(handler=_remote, command=name)
    dead = verbs.add_parser("dead-letters", help="list the agent's dead letters (a page)")
    _target_arguments(dead, key_required=False)
    dead.add_argument("--offset", type=int, default=0, help="skip this many (oldest first)")
    dead.add_argument("--limit", type=int, default=50, help="list at most this many (<= 200)")
    dead.add_argument("--json", action="store_true", help="print the raw JSON answer")
    dead.set_defaults(handler=_remote, command="dead-letters")
    retry = verbs.add_parser("retry", help="queue dead letters again; the agent sends them")
    retry.add_argument("seqs", nargs="*", type=int, metavar="SEQ", help="dead letters by seq")
    retry.add_argument("--id", dest="ids", action="append", help="a dead letter by event id")
    retry.add_argument("--all", action="store_true", help="all (the oldest --limit of them)")
    retry.add_argument("--limit", type=int, default=1000, help="with --all: at most this many")
    _target_arguments(retry, key_required=True)
    retry.set_defaults(handler=_remote, command="retry")
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


def _target_arguments(parser: argparse.ArgumentParser, *, key_required: bool) -> None:
    add_hub_arguments(parser)
    parser.add_argument("--site", required=True, help="the agent's site")
    parser.add_argument("--agent", required=True, help="the agent's id")
    parser.add_argument("--key", type=Path, required=key_required,
                        help="Ed25519 private key (PEM) to sign the request")
    parser.add_argument("--key-id", help="key name in the agent's config (default: from file)")


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
    elif command == "dead-letters":
        request_args = {"offset": args.offset, "limit": args.limit}
    elif command == "retry":
        forms = [bool(args.seqs), bool(args.ids), bool(args.all)]
        if sum(forms) != 1:
            print("edge-agent remote retry: give SEQ ..., --id ID ... or --all (one of them)",
                  file=sys.stderr)
            return EXIT_INVALID
        if args.seqs:
            request_args["seqs"] = args.seqs
        elif args.ids:
            request_args["ids"] = args.ids
        else:
            request_args = {"all": True, "limit": args.limit}
    if args.key is not None:
        from agent.link.signing import RequestSigner

        try:
            signer = RequestSigner.from_file(args.key, args.key_id)
        except ValueError as error:
            print(f"edge-agent: --key: {error}", file=sys.stderr)
            return EXIT_INVALID
        request = signer.sign(command, request_args, target=f"{args.site}/{args.agent}")
    elif request_args:
        request["args"] = request_args
    return run_hub_tool(_ask(args, command, request))


async def _ask(args: argparse.Namespace, command: str, request: dict[str, Any]) -> int:
    who = f"{args.site}/{args.agent}"
    root = f"{args.prefix}/{args.site}/{args.agent}"
    reply_topic = f"{root}/reply/{uuid.uuid4().hex}"
    correlation = uuid.uuid4().bytes
    answers: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)

    def on_message(topic: str, payload: bytes, properties: Any) -> None:
        if topic != reply_topic or answers.full():
            return
        if getattr(properties, "CorrelationData", None) == correlation or (
            properties is None and _correlation_in(payload) == encode_correlation(correlation)
        ):
            answers.put_nowait(payload)

    deadline = time.monotonic() + args.timeout
    async with connect_to_hub(args, on_message) as session:
        await session.subscribe(reply_topic, qos=1)
        await wait_until_connected(session, args.hub, args.timeout)
        if session.mqtt311:  # no properties: the reply fields in the JSON (agent.link.mqtt311)
            in_payload = {RESPONSE_TOPIC_FIELD: reply_topic,
                          CORRELATION_FIELD: encode_correlation(correlation)}
            future = session.publish(
                f"{root}/cmd/{command}", json.dumps({**request, **in_payload}).encode(), qos=1
            )
        else:
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
            raise HubToolFailure(
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


def _correlation_in(payload: bytes) -> object:
    """An MQTT 3.1.1 answer's correlation field (its JSON), or None."""
    try:
        answer = json.loads(payload)
    except ValueError:
        return None
    return answer.get(CORRELATION_FIELD) if isinstance(answer, dict) else None


def _render_answer(command: str, result: Any) -> str:
    if command == "status":
        return _render_status(result)
    if command == "sources":
        return _render_sources(result)
    if command == "buffer":
        return _render_buffer(result)
    if command == "ping":
        return f"pong (uptime {result['uptime_s']} s)"
    if command == "dead-letters":
        return _render_dead_letters(result)
    if command == "retry":
        return _render_retry(result)
    return json.dumps(result, indent=2)


def _render_sources(sources: dict[str, Any]) -> str:
    rows = [["SOURCE", "STATE", "CONNECTED", "LAST VALUE", "READINGS", "ERROR"]]
    for name, source in sources.items():
        rows.append([
            name, source["state"], "yes" if source["connected"] else "no",
            ago(source["last_value_at"]), str(source["readings_total"]),
            source["last_error"] or "-",
        ])
    return table(rows)


def _render_buffer(buffer: dict[str, Any]) -> str:
    rows = [["CLASS", "PENDING", "OLDEST PENDING", "EVICTIONS"]]
    for name, entry in buffer["classes"].items():
        rows.append([name, str(entry["pending"]), age_text(entry.get("oldest_pending_age_s")),
                     str(entry["evictions"])])
    oldest = buffer["oldest_pending_age_s"]
    return (
        table(rows)
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
        f"{forwarder['events_per_s']} events/s, last PUBACK {ago(forwarder['last_puback_at'])}"
    )
    per_signal = [
        f"{name}:\n" + "\n".join(indented(text, "  "))
        for name, source in status["sources"].items()
        if (text := signals_table(source.get("signals") or {},
                                  source.get("signals_not_listed") or 0))
    ]
    return "\n\n".join(
        [head, _render_sources(status["sources"]), *per_signal, _render_buffer(status["buffer"])]
    )


def _render_dead_letters(page: dict[str, Any]) -> str:
    letters = page["letters"]
    if not letters:
        return f"no dead letters (of {page['total']}) from offset {page['offset']}"
    rows = [["SEQ", "ID", "TYPE", "CLASS", "BYTES", "DEAD AT", "REASON"]]
    for letter in letters:
        rows.append([
            "-" if letter["seq"] is None else str(letter["seq"]), letter["id"], letter["type"],
            letter["class"], str(letter["bytes"]), letter["dead_at"], letter["reason"],
        ])
    first = page["offset"] + 1
    tail = f"{len(letters)} shown ({first}-{first + len(letters) - 1} of {page['total']})"
    if page.get("next_offset") is not None:
        tail += f"; more: --offset {page['next_offset']}"
    if page.get("shortened"):
        tail += " (page shortened to fit the broker's packet size)"
    return table(rows) + "\n" + tail + "\nseq '-': set aside before it was accepted, not retryable"


def _render_retry(result: dict[str, Any]) -> str:
    lines = [f"{result['retried']} dead letter(s) queued again; the agent sends them now"]
    if result["dropped"]:
        lines.append(f"{result['dropped']} dropped: their id was accepted again since")
    if result["not_retryable_total"]:
        lines.append(
            f"{result['not_retryable_total']} not retryable (set aside before acceptance): "
            + ", ".join(result["not_retryable"])
        )
    if result["not_found_total"]:
        lines.append(
            f"{result['not_found_total']} not found among the dead letters: "
            + ", ".join(str(item) for item in result["not_found"])
        )
    lines.append(f"{result['dead_letters_left']} dead letter(s) left")
    return "\n".join(lines)
