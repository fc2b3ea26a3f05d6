"""OPC UA tools for the OT engineer.

    edge-agent opcua browse ENDPOINT [--node Objects/Line1] [--depth N] [--all]
                                            the address space as a tree: NodeId, browse name,
                                            class, data type, value, unit (UCUM)
    edge-agent opcua browse ENDPOINT [--node N] --emit toml|csv
                                            [[sources.signals]] stubs (config.tags) or a CSV
    edge-agent opcua read ENDPOINT NODE     one value; exit 1 when its status is Bad
    edge-agent opcua watch -c CONFIG [--signal S] [--count N] [--seconds S]
                                            live values of the configured signals
    edge-agent opcua tags export -c CONFIG [--source S] > tags.csv
    edge-agent opcua tags import -c CONFIG tags.csv [--out FILE]
                                            a source's signals as a CSV tag list and back
    edge-agent certs create -c CONFIG [--days N] [--force] [--owner USER]
                                                             the agent's certificate and key
    edge-agent certs trust THUMBPRINT -c CONFIG              trust a rejected server cert
    edge-agent certs list -c CONFIG                          trusted and rejected certs

`browse` and `read` take the same security options as a source in the config (or
`-c CONFIG --source NAME` to use that source's settings). Addresses are the config's: NodeId,
`nsu=URI;s=...` or a browse path `Objects/...`, so what browse prints can be pasted.

Under the package the agent runs as `SERVICE_USER` while root runs these commands. Run as root
for the service's config (its group is the service user's, as the package installs it),
`certs create` gives the files and the trust folders it makes to that user (`--owner USER`
for another one), and `check-config` (`pki_problems`) checks each OPC UA file and folder against
that user's access; run as any other user, against that user's own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from agent.cli import opcua_watch
from connectors.opcua.pki_access import FileOwner, access_problem, missing

EXIT_OK, EXIT_FAILURE, EXIT_INVALID = 0, 1, 2
_EMIT_DEPTH = 10  # levels below the start that --emit walks by default

# The user the packaged agent runs as: the unit's User= (packaging/systemd/edge-agent.service;
# tests/e2e/test_packaging.py checks that they agree).
SERVICE_USER = "edge-agent"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    opcua = commands.add_parser("opcua", help="browse and read an OPC UA server")
    tools = opcua.add_subparsers(dest="opcua_command", metavar="TOOL", required=True)
    browse = tools.add_parser("browse", help="list the address space as a tree")
    browse.add_argument("endpoint", nargs="?", help="opc.tcp://HOST:PORT[/PATH]")
    browse.add_argument(
        "--node", "--path", dest="path", default="Objects",
        help="start here: a NodeId, nsu=URI;s=... or Objects/... path (default: Objects)",
    )
    browse.add_argument("--depth", type=int, help="levels below the start (default 3; "
                        f"with --emit {_EMIT_DEPTH})")
    browse.add_argument("--all", action="store_true",
                        help="also the server's own objects (Server, Locations, ...)")
    browse.add_argument("--emit", choices=("toml", "csv"),
                        help="write [[sources.signals]] stubs (or a CSV tag list) instead")
    _connection_options(browse)
    browse.set_defaults(handler=_browse)
    read = tools.add_parser("read", help="read one value (exit 1 when its status is Bad)")
    read.add_argument("endpoint", nargs="?", help="opc.tcp://HOST:PORT[/PATH]")
    read.add_argument("node", help="NodeId, nsu=URI;s=..., or Objects/... browse path")
    _connection_options(read)
    read.set_defaults(handler=_read)
    opcua_watch.register(tools)  # live values of the configured signals (agent.cli.opcua_watch)
    tags = tools.add_parser("tags", help="a source's signals as a CSV tag list, and back")
    tag_actions = tags.add_subparsers(dest="tags_command", metavar="ACTION", required=True)
    export = tag_actions.add_parser("export", help="print a source's signals as CSV")
    export.add_argument("-c", "--config", type=Path, required=True)
    export.add_argument("--source", help="the source's name (default: the first OPC UA one)")
    export.set_defaults(handler=_tags_export)
    imported = tag_actions.add_parser(
        "import", help="print (or --out) the [[sources.signals]] of a CSV tag list"
    )
    imported.add_argument("csv", type=Path, help="the tag list (columns as `export` writes)")
    imported.add_argument("-c", "--config", type=Path, required=True)
    imported.add_argument("--source", help="the source's name (default: the first OPC UA one)")
    imported.add_argument("--out", type=Path, help="write the TOML here instead of stdout")
    imported.set_defaults(handler=_tags_import)

    certs = commands.add_parser("certs", help="the agent's OPC UA certificates and trust list")
    actions = certs.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="make the application instance certificate")
    create.add_argument("-c", "--config", type=Path, required=True)
    create.add_argument("--days", type=int, default=730, help="validity (default 730)")
    create.add_argument("--force", action="store_true", help="replace an existing one")
    create.add_argument(
        "--owner", metavar="USER",
        help=f"give the files to USER (as root, default: {SERVICE_USER} for the packaged "
        f"config, i.e. one whose group is {SERVICE_USER}'s)",
    )
    create.set_defaults(handler=_certs_create)
    trust = actions.add_parser("trust", help="trust a rejected server certificate")
    trust.add_argument("thumbprint")
    trust.add_argument("-c", "--config", type=Path, required=True)
    trust.set_defaults(handler=_certs_trust)
    listing = actions.add_parser("list", help="show trusted and rejected certificates")
    listing.add_argument("-c", "--config", type=Path, required=True)
    listing.set_defaults(handler=_certs_list)


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", type=Path, help="take the settings of a source here")
    parser.add_argument("--source", help="the source's name (default: the first OPC UA one)")
    parser.add_argument("--security-policy", default="None")
    parser.add_argument("--security-mode")
    parser.add_argument("--certificate", type=Path)
    parser.add_argument("--private-key", type=Path)
    parser.add_argument("--pki-dir", type=Path)
    parser.add_argument("--application-uri")
    parser.add_argument("--username")
    parser.add_argument("--password-file", type=Path)
    parser.add_argument("--password-env")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")


def _settings(args: argparse.Namespace) -> Any:
    """The OpcUaSettings from a config's source or from the options; None after an error."""
    from pydantic import ValidationError

    from connectors.opcua.config import OpcUaSettings

    if args.config is not None:
        config = _config(args.config)
        if config is None:
            return None
        sources = [s for s in config.sources if args.source in (None, s.name)]
        if not sources:
            print(f"no source {args.source!r} in {args.config}", file=sys.stderr)
            return None
        return sources[0]
    if args.endpoint is None:
        print("give the ENDPOINT or -c CONFIG", file=sys.stderr)
        return None
    options = {
        "endpoint": args.endpoint,
        "security_policy": args.security_policy,
        "security_mode": args.security_mode,
        "certificate": args.certificate,
        "private_key": args.private_key,
        "pki_dir": args.pki_dir,
        "application_uri": args.application_uri,
        "username": args.username,
        "password_file": args.password_file,
        "password_env": args.password_env,
        "request_timeout_s": args.timeout,
    }
    try:
        return OpcUaSettings.model_validate(
            {key: value for key, value in options.items() if value is not None}
        )
    except ValidationError as error:
        for problem in error.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "options"
            print(f"{where}: {problem['msg']}", file=sys.stderr)
        return None


def _config(path: Path) -> Any:
    from agent.cli.config_file import load_or_report

    return load_or_report(path)


def _browse(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return EXIT_INVALID
    from connectors.opcua.browse import walk

    depth = args.depth if args.depth is not None else (_EMIT_DEPTH if args.emit else 3)
    result = _run_tool(walk(settings, args.path, depth, standard=args.all))
    if result is None:
        return EXIT_FAILURE
    if args.emit is not None:
        return _emit(args, settings, result)
    for node in result.nodes:
        print(_tree_line(node))
        if node.more:
            print(f"{'  ' * (node.level + 1)}... {node.more} more")
    if result.hidden:
        print(f"(not shown: {', '.join(result.hidden)}; --all shows them)")
    return EXIT_OK


def _emit(args: argparse.Namespace, settings: Any, result: Any) -> int:
    from config import tags

    made, skipped = tags.stubs(result.nodes)
    if args.emit == "csv":
        sys.stdout.write(tags.stubs_csv(made))
    else:
        header = [
            f"{len(made)} signal(s) from {settings.endpoint}, node {args.path}, written by",
            "`edge-agent opcua browse --emit toml`. They belong under a [[sources]] table with",
            f'type "opcua" and endpoint "{settings.endpoint}".',
            "",
        ]
        sys.stdout.write(tags.stubs_toml(made, skipped, header))
    if not made:
        print(f"edge-agent: no variable below {args.path} can feed an event "
              "(give a deeper --depth, or another --node)", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _tree_line(node: Any) -> str:
    line = f"{'  ' * node.level}{node.node_id}  {node.browse_name}  {node.node_class}"
    if node.node_class == "Variable":
        line += f"  {node.data_type} = {show_value(node.value)}"
        if node.units is not None:
            line += f"  {_unit_text(node.units)}"
        if node.status is not None:
            line += f"  ({node.status})"
    elif node.event_notifier:
        line += "  (event notifier)"
    return line


def _unit_text(eu: Any) -> str:
    from config.tags import ucum_of

    code, _ = ucum_of(eu)
    shown = eu.display_name or eu.description
    if code is None:
        return f"unit ? ({shown!r}: not a UCUM code the agent knows)"
    return f"unit {code}" + (f" ({shown})" if shown and shown != code else "")


def show_value(value: Any) -> str:
    """A value as an OT engineer reads it: numbers and text as they are, not Python reprs."""
    import json
    from datetime import datetime
    from enum import Enum

    from asyncua import ua

    if value is None:
        return "(no value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value.name)
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return f"({len(value)} bytes)"
    if isinstance(value, ua.LocalizedText):
        return json.dumps(value.Text or "", ensure_ascii=False)
    if isinstance(value, ua.QualifiedName):
        return f"{value.NamespaceIndex}:{value.Name}"
    if isinstance(value, ua.NodeId):
        return str(value.to_string())
    if isinstance(value, list | tuple):
        shown = ", ".join(show_value(item) for item in value[:5])
        more = f", ... {len(value)} items" if len(value) > 5 else ""
        return f"[{shown}{more}]"
    return f"({type(value).__name__})"


def _read(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return EXIT_INVALID
    from connectors.opcua.browse import read_one

    result = _run_tool(read_one(settings, args.node))
    if result is None:
        return EXIT_FAILURE
    unit = f"  {_unit_text(result.units)}" if result.units is not None else ""
    source = result.source_time.isoformat() if result.source_time else "none"
    server = result.server_time.isoformat() if result.server_time else "none"
    print(f"{result.address} = {show_value(result.value)}{unit}  ({result.status}; "
          f"source time {source}, server time {server})")
    if result.bad:
        print(f"edge-agent: {result.address}: the server gives no usable value "
              f"({result.status})", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _run_tool(coroutine: Any) -> Any:
    """The coroutine's result, or None once its error is printed (one line, no traceback)."""
    from connectors.base import SourceConfigError, SourceUnavailable
    from connectors.opcua.addressing import AddressNotFound

    quiet_asyncua()
    try:
        return asyncio.run(coroutine)
    except (SourceUnavailable, SourceConfigError, AddressNotFound, ValueError) as error:
        print(f"edge-agent: {error}", file=sys.stderr)
        return None


def quiet_asyncua() -> None:
    """asyncua's warnings are for its developers ("Requested session timeout to be ..."
    on every connect); the tools say what matters in their own words."""
    import logging

    logging.getLogger("asyncua").setLevel(logging.ERROR)


def _tags_export(args: argparse.Namespace) -> int:
    from config import tags

    if _config(args.config) is None:
        return EXIT_INVALID
    try:
        _, signals = tags.raw_signals(args.config.read_text(encoding="utf-8-sig"), args.source)
    except LookupError as error:
        print(f"edge-agent: {args.config}: {error}", file=sys.stderr)
        return EXIT_INVALID
    sys.stdout.write(tags.signals_csv(signals))
    return EXIT_OK


def _tags_import(args: argparse.Namespace) -> int:
    from config import tags

    if _config(args.config) is None:
        return EXIT_INVALID
    try:
        name, _ = tags.raw_signals(
            args.config.read_text(encoding="utf-8-sig"), args.source, replacing=True
        )
        text = args.csv.read_text(encoding="utf-8-sig")
    except LookupError as error:
        print(f"edge-agent: {args.config}: {error}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as error:
        print(f"edge-agent: cannot read {args.csv}: {error.strerror}", file=sys.stderr)
        return EXIT_INVALID
    from config.loader import ConfigError

    try:
        signals = tags.signals_from_csv(text, args.csv)
    except ConfigError as error:
        print(f"{args.csv}: invalid tag list ({len(error.problems)} problem(s)):",
              file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem.format()}", file=sys.stderr)
        return EXIT_INVALID
    toml = tags.signals_toml(signals, [
        f"{len(signals)} signal(s) of source {name!r} from {args.csv.name}: they replace the "
        f"[[sources.signals]] of that source in {args.config.name}",
    ])
    if args.out is not None:
        args.out.write_text(toml)
        print(f"wrote {len(signals)} signal(s) to {args.out}")
    else:
        sys.stdout.write(toml)
    return EXIT_OK


def _opcua_sources(path: Path) -> list[Any] | None:
    config = _config(path)
    if config is None:
        return None
    sources = [source for source in config.sources if getattr(source, "type", "") == "opcua"]
    if not sources:
        print(f"{path}: no OPC UA source", file=sys.stderr)
        return None
    return sources


def _certs_create(args: argparse.Namespace) -> int:
    from connectors import credentials
    from connectors.opcua.certificates import CertificateExists, create_application_certificate
    from connectors.opcua.trust import TrustStore

    sources = _opcua_sources(args.config)
    if sources is None:
        return EXIT_INVALID
    try:
        owner = _owner_of_new_files(args)
    except ValueError as error:
        print(f"edge-agent: --owner {args.owner}: {error}", file=sys.stderr)
        return EXIT_INVALID
    made: set[Path] = set()
    for source in sources:
        if source.certificate in made:
            continue
        made.add(source.certificate)
        references = [
            str(path) for path in (source.certificate, source.private_key)
            if credentials.is_credential(path)
        ]
        if references:
            print(
                f"edge-agent: source {source.name!r} reads {', '.join(references)} from systemd "
                "credentials; make the certificate with plain file paths in a copy of the "
                "config, then hand the files to the unit with LoadCredential=",
                file=sys.stderr,
            )
            return EXIT_INVALID
        try:
            info = create_application_certificate(
                certificate_path=source.certificate,
                key_path=source.private_key,
                application_uri=source.effective_application_uri,
                days=args.days,
                overwrite=args.force,
                owner=owner,
            )
            TrustStore(source.pki_dir).prepare(owner)
        except CertificateExists as error:
            print(f"edge-agent: {error}", file=sys.stderr)
            return EXIT_FAILURE
        owned = f", owner {owner.name}" if owner is not None else ""
        print(f"certificate  {source.certificate}")
        print(f"private key  {source.private_key} (mode 0600{owned})")
        print(f"ApplicationUri {info.application_uri}, valid until {info.not_after:%Y-%m-%d}")
        print(f"thumbprint   {info.thumbprint}")
        print("Trust this thumbprint on the OPC UA server (its rejected/trusted certificates).")
    if owner is None and os.geteuid() == 0:
        print(f"The files belong to root. If the agent runs as another user, run this again "
              f"with --force --owner USER (the package's user is {SERVICE_USER}).")
    if owner is not None:
        problems = [
            problem for source in sources
            for problem in _source_file_problems(source, owner, own_certificate_only=True)
        ]
        for problem in problems:
            print(f"edge-agent: {problem}", file=sys.stderr)
        if problems:
            return EXIT_FAILURE
    return EXIT_OK


def _owner_of_new_files(args: argparse.Namespace) -> FileOwner | None:
    """Whom `certs create` gives its files to (None: whoever runs it); ValueError says why
    `--owner` cannot be."""
    if args.owner is None:
        return service_owner(args.config) if os.geteuid() == 0 else None
    owner = FileOwner.named(args.owner)
    if owner is None:
        raise ValueError("no such user")
    if os.geteuid() not in (0, owner.uid):
        raise ValueError("only root can give files to another user")
    return owner


def service_owner(config_path: Path) -> FileOwner | None:
    """The service user when `config_path` is the service's config: the user exists and owns
    the file's group (the package installs agent.toml as root:edge-agent 0640)."""
    owner = FileOwner.named(SERVICE_USER)
    if owner is None:
        return None
    try:
        group = config_path.stat().st_gid
    except OSError:
        return None
    return owner if group == owner.gid else None


def pki_problems(config: Any, config_path: Path) -> list[str]:
    """check-config: every OPC UA file a source needs exists, and the user the agent runs as
    (see module docstring) can read it and can file refused server certificates."""
    if os.geteuid() == 0:
        owner = service_owner(config_path)
    else:
        owner = FileOwner.current()
    return [
        problem
        for source in config.sources
        if getattr(source, "type", "") == "opcua"
        for problem in _source_file_problems(source, owner)
    ]


def _source_file_problems(
    source: Any, owner: FileOwner | None, *, own_certificate_only: bool = False
) -> list[str]:
    """The files of one OPC UA source that are missing, or that `owner` (None: root) cannot
    use; with `own_certificate_only`, only the agent's certificate, key and trust folders.
    `credential:NAME` settings are systemd's to read, as root, and are not looked at."""
    from connectors import credentials

    needed: list[tuple[str, Path]] = []
    if source.secured or own_certificate_only:
        needed += [("certificate", source.certificate), ("private_key", source.private_key)]
    for setting in ("user_certificate", "user_private_key", "password_file"):
        if getattr(source, setting) is not None and not own_certificate_only:
            needed.append((setting, getattr(source, setting)))
    problems: list[str] = []
    for setting, path in needed:
        if credentials.is_credential(path):
            continue
        where = f"source {source.name}: {setting} {path}"
        if missing(path):
            advice = (
                "; create it with: edge-agent certs create -c CONFIG"
                if setting in ("certificate", "private_key") else ""
            )
            problems.append(f"{where} does not exist{advice}")
        elif owner is not None and (problem := access_problem(path, owner)) is not None:
            problems.append(f"{where}: {problem}")
    if (source.secured or own_certificate_only) and owner is not None:
        problem = access_problem(source.rejected_dir, owner, write=True)
        if problem is not None:
            problems.append(
                f"source {source.name}: pki_dir {source.pki_dir} (the agent files refused server "
                f"certificates in rejected/): {problem}"
            )
    return problems


def _certs_trust(args: argparse.Namespace) -> int:
    from connectors.opcua.trust import TrustStore

    sources = _opcua_sources(args.config)
    if sources is None:
        return EXIT_INVALID
    errors = []
    for pki_dir in dict.fromkeys(source.pki_dir for source in sources):
        try:
            stored = TrustStore(pki_dir).trust(args.thumbprint)
        except LookupError as error:
            errors.append(str(error))
            continue
        print(f"trusted {stored.info.thumbprint} ({stored.info.subject}): {stored.path}")
        return EXIT_OK
    print(f"edge-agent: {'; '.join(errors)}", file=sys.stderr)
    return EXIT_FAILURE


def _certs_list(args: argparse.Namespace) -> int:
    from connectors.opcua.trust import TrustStore

    sources = _opcua_sources(args.config)
    if sources is None:
        return EXIT_INVALID
    for pki_dir in dict.fromkeys(source.pki_dir for source in sources):
        store = TrustStore(pki_dir)
        for state, stored_list in (("trusted", store.trusted()), ("rejected", store.rejected())):
            for stored in stored_list:
                info = stored.info
                print(f"{state:8}  {info.thumbprint}  until {info.not_after:%Y-%m-%d}  "
                      f"{info.subject}  {info.application_uri or ''}")
        if not store.trusted() and not store.rejected():
            print(f"no certificates in {pki_dir}")
    return EXIT_OK
