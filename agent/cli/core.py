"""The core commands.

    edge-agent run -c CONFIG          run the agent until SIGINT/SIGTERM
    edge-agent check-config CONFIG    validate a config file (exit 0 valid, 2 invalid)
    edge-agent schema [TYPE]          print the JSON Schema of the event types
    edge-agent schema check --against DIR
                                      compare them with the published ones in DIR (exit 0
                                      compatible, 1 a breaking change, 2 DIR unreadable)
    edge-agent demo [--hub URL]       a simulated plant and the agent forwarding its signals
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from agent.cli.config_file import load_or_report

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser("run", help="run the agent until SIGINT/SIGTERM")
    run.add_argument("-c", "--config", type=Path, required=True, help="the agent's TOML config")
    run.set_defaults(handler=_run)

    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("config", type=Path, nargs="?", help="the TOML file to check")
    check.add_argument("-c", "--config", dest="config_option", type=Path, help=argparse.SUPPRESS)
    check.add_argument(
        "--connect", action="store_true",
        help="also ask each source's peer whether the config works there (OPC UA nodes and "
        "their types, the database table, the drop folder, the webhook's listen address)",
    )
    check.set_defaults(handler=_check_config)

    schema = commands.add_parser(
        "schema", help="print the JSON Schema of event types, or check them (`schema check`)"
    )
    # `check` is no event type's name (they are versioned: `telemetry.v1`), so it can share the
    # TYPE position: `edge-agent schema check --against DIR`.
    schema.add_argument(
        "type", nargs="?",
        help="one type, e.g. telemetry.v1 (default: all); `check`: compare this agent's "
        "schemas with the published ones (--against)",
    )
    schema.add_argument("--out", type=Path, help="write one TYPE.schema.json per type into DIR")
    schema.add_argument(
        "--markdown", action="store_true",
        help="print them as the catalog of docs/hub-contract.md (fields, units, examples)",
    )
    schema.add_argument(
        "--against", type=Path, metavar="DIR",
        help="with `check`: the folder of published TYPE.schema.json files (as --out writes)",
    )
    schema.set_defaults(handler=_schema)

    demo = commands.add_parser("demo", help="run a simulated plant and the agent against it")
    demo.add_argument("--hub", default="mqtt://127.0.0.1:1883", help="MQTT broker URL")
    demo.add_argument("--duration", type=float, help="stop after SECONDS (default: until Ctrl-C)")
    demo.add_argument("--state-dir", type=Path, default=Path("demo-state"))
    demo.add_argument("--rate", type=float, default=10.0, help="plant ticks per second")
    demo.add_argument("--opcua-port", type=int, default=0, help="plant port (default: free one)")
    demo.add_argument(
        "--with-hub", action="store_true",
        help="also run a hub: land the events in PostgreSQL and serve its dashboard",
    )
    demo.add_argument("--database", help="with --with-hub: the PostgreSQL database (default "
                      "postgresql://postgres@127.0.0.1:5432/edge_demo, made if missing)")
    demo.add_argument("--dashboard-port", type=int, default=8780,
                      help="with --with-hub: the dashboard's port on 127.0.0.1 (default 8780)")
    demo.set_defaults(handler=_demo)


def _check_config(args: argparse.Namespace) -> int:
    path = args.config or args.config_option
    if path is None:
        print("edge-agent check-config: give the config file to check", file=sys.stderr)
        return EXIT_INVALID
    config = load_or_report(path)
    if config is None:
        return EXIT_INVALID
    from config.schema import AgentConfig

    assert isinstance(config, AgentConfig)
    from agent.cli.opcua import pki_problems

    if problems := pki_problems(config, path):  # OPC UA files: there, and usable by the agent
        print(f"{path}: {len(problems)} problem(s) with OPC UA files:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    signals = sum(len(source.signals) for source in config.sources)
    print(
        f"{path}: OK: site {config.agent.site}, agent {config.agent.id}, "
        f"{len(config.sources)} source(s), {signals} signal(s), hub {config.hub.url}"
    )
    if args.connect:
        from agent.cli.connect import check_connect

        return check_connect(config)
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from agent.service import logs
    from agent.service.credentials import CredentialError
    from agent.service.daemon import AgentService
    from agent.service.memory import limit_malloc_arenas
    from buffer.base import BufferFailure
    from config.schema import AgentConfig

    config = load_or_report(args.config)
    if config is None:
        return EXIT_INVALID
    assert isinstance(config, AgentConfig)
    logs.configure(config.agent.log_level, config.agent.log_format)
    limit_malloc_arenas()  # before the first thread starts (agent.memory)

    async def run() -> None:
        # SIGHUP reloads the config (agent.service); SIGINT/SIGTERM stop in order.
        stop = asyncio.Event()
        service = AgentService(config, args.config)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, service.request_reload)
        await service.run(stop)

    try:
        asyncio.run(run())
    except BufferFailure as error:
        logging.getLogger("agent").error("cannot open the buffer: %s", error)
        return EXIT_FAILURE
    except CredentialError as error:
        logging.getLogger("agent").error("cannot start: %s", error)
        return EXIT_INVALID
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    from events.models import json_schemas

    if args.type == "check" or args.against is not None:
        return _schema_check(args)
    schemas = json_schemas()
    if args.type is not None:
        wanted = args.type if args.type in schemas else f"{args.type}.v1"
        if wanted not in schemas:
            print(
                f"unknown event type {args.type!r}; known: {', '.join(sorted(schemas))}",
                file=sys.stderr,
            )
            return EXIT_INVALID
        schemas = {wanted: schemas[wanted]}
    if args.markdown:
        from events.catalog import render

        print(render(schemas), end="")
        return EXIT_OK
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, schema in schemas.items():
            (args.out / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")
            print(args.out / f"{name}.schema.json")
        return EXIT_OK
    document = next(iter(schemas.values())) if args.type else schemas
    print(json.dumps(document, indent=2))
    return EXIT_OK


def _schema_check(args: argparse.Namespace) -> int:
    """Every change from the published schemas in `--against` to this agent's, one a line;
    exit 1 when one breaks consumers, 2 when the folder or a file cannot be read."""
    from events.compat import SCHEMA_FILE_SUFFIX, SchemaError, compare, read_published
    from events.models import json_schemas

    if args.type != "check" or args.against is None or args.out is not None:
        print("edge-agent schema: compare with `schema check --against DIR` (no TYPE, no --out)",
              file=sys.stderr)
        return EXIT_INVALID
    folder: Path = args.against
    files: dict[str, str] = {}
    try:
        for path in sorted(folder.iterdir()):
            if path.name.endswith(SCHEMA_FILE_SUFFIX):
                try:
                    files[str(path)] = path.read_text(encoding="utf-8")
                except UnicodeDecodeError as error:
                    raise SchemaError(f"{path}: not UTF-8 text ({error.reason})") from error
        published = read_published(files)
    except OSError as error:
        print(f"edge-agent schema check: {error.filename or folder}: cannot read it: "
              f"{error.strerror or error}", file=sys.stderr)
        return EXIT_INVALID
    except SchemaError as error:
        where = "" if str(error).startswith(str(folder)) else f"{folder}: "
        print(f"edge-agent schema check: {where}{error}", file=sys.stderr)
        return EXIT_INVALID
    changes = compare(published, json_schemas())
    for change in changes:
        print(f"{'BREAKING' if change.breaking else 'note'}  {change}")
    breaking = [change for change in changes if change.breaking]
    notes = len(changes) - len(breaking)
    print(
        f"{len(published)} published types in {folder}: {_count(len(breaking), 'breaking change')}"
        f", {_count(notes, 'note')}"
        + (": consumers of the published schemas would refuse or misread these events"
           if breaking else ": compatible")
    )
    return EXIT_FAILURE if breaking else EXIT_OK


def _count(number: int, what: str) -> str:
    return f"{number} {what}{'' if number == 1 else 's'}"


def _demo(args: argparse.Namespace) -> int:
    from agent.demo.hub import DEFAULT_DATABASE
    from agent.demo.run import run_demo

    return run_demo(
        hub=args.hub,
        duration=args.duration,
        state_dir=args.state_dir,
        rate=args.rate,
        opcua_port=args.opcua_port,
        database=(args.database or DEFAULT_DATABASE) if args.with_hub else None,
        dashboard_port=args.dashboard_port,
    )

