"""`edge-agent tail`: print events as they reach the hub.

    edge-agent tail --hub URL [--site S] [--agent A] [--type T] [--count N] [--duration S] [--json]

It subscribes to `{prefix}/{site}/{agent}/events/#` (`+` for any), decodes each message in
whichever hub format it came (`events.formats.decode_message`, told by its content type; a
message without one, from an MQTT 3.1.1 broker or agent (`--protocol 3.1.1`), by its first
byte: `events.formats.sniff_content_type`, as the hub's landing does) and prints one line per
event (or one JSON object with `--json`); a message that holds no events
is named on stderr and skipped. With `--count` it stops after N
events and exits 1 if fewer came within `--duration`. A reader that closes stdout early
(`... | head`) ends it quietly (`agent.cli.main`). The hub connection: `agent.cli.hub`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from agent.cli.hub import add_hub_arguments, connect_to_hub, run_hub_tool, wait_until_connected

EXIT_OK, EXIT_FAILURE = 0, 1


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail = commands.add_parser("tail", help="print events as they reach the hub")
    add_hub_arguments(tail)
    tail.add_argument("--site", default="+", help="only this site")
    tail.add_argument("--agent", default="+", help="only this agent")
    tail.add_argument("--type", help="only this event type, e.g. telemetry or telemetry.v1")
    tail.add_argument("--count", type=int, help="stop after N events")
    tail.add_argument("--duration", type=float, help="stop after SECONDS")
    tail.add_argument("--json", action="store_true", help="one JSON object per event")
    tail.set_defaults(handler=_tail)


def _tail(args: argparse.Namespace) -> int:
    return run_hub_tool(_tail_events(args))


async def _tail_events(args: argparse.Namespace) -> int:
    from events.formats import decode_message

    printed = 0
    done = asyncio.Event()
    wanted = args.type
    reader_gone = False  # stdout's reader closed early (`... | head`): stop, as `main` says

    def on_message(topic: str, payload: bytes, properties: Any) -> None:
        nonlocal reader_gone
        if done.is_set():
            return
        try:
            print_events(topic, payload, properties)
        except BrokenPipeError:  # raised in a session callback, which would only log it
            reader_gone = True
            done.set()

    def print_events(topic: str, payload: bytes, properties: Any) -> None:
        nonlocal printed
        try:
            events = decode_message(
                payload,
                getattr(properties, "ContentType", None),
                getattr(properties, "UserProperty", None) or (),
            )
        except Exception as error:  # a consumer tool: say what could not be read, go on
            print(f"# {topic}: not an events message ({type(error).__name__})", file=sys.stderr)
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

    async with connect_to_hub(args, on_message) as session:
        await session.subscribe(f"{args.prefix}/{args.site}/{args.agent}/events/#", qos=1)
        await wait_until_connected(session, args.hub, args.timeout)
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
