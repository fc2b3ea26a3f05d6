"""What the hub tools (`edge-agent remote`, `fleet`, `tail`) share: their hub options, the
session they open, and how they fail.

Each tool connects with its own MQTT client (`agent.link.hub_session`; v5, or `--protocol
3.1.1`/`auto` as `[hub] protocol`), bounded by `--timeout`,
secured like the agent's `[hub]`: `--ca-file`, `--client-cert`/`--client-key`, `--username`,
`--password-file`. The options are checked as the config's `[hub]` section is (the same
messages, with the option names in place of the keys). A tool's session leaves nothing behind
on the broker (session expiry 0) and reconnects quickly (0.2 to 1 s): it lives for one command.

A tool raises `HubToolFailure` for what the user must be told (hub unreachable, no answer,
bad hub options); `run_hub_tool` prints it and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.link.mqtt_session import MqttSession, OnMessage

if TYPE_CHECKING:
    from config.hub import HubSection

EXIT_OK, EXIT_FAILURE = 0, 1

# The config's `[hub]` keys, as this CLI spells them (in error messages).
_HUB_OPTIONS = {
    "url": "--hub", "ca_file": "--ca-file", "cert_file": "--client-cert",
    "key_file": "--client-key", "username": "--username", "password": "--password-file",
}


class HubToolFailure(Exception):
    """Print the message and exit 1."""


def add_hub_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub", required=True,
                        help="the hub broker, mqtt://HOST:PORT or mqtts://HOST:PORT (TLS)")
    parser.add_argument("--prefix", default="mfg", help="topic prefix (default mfg)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--protocol", choices=("5", "3.1.1", "auto"), default="5",
                        help="MQTT version, as [hub] protocol (default 5; 3.1.1 for a broker "
                             "without v5: requests then carry their reply topic in the JSON)")
    tls = parser.add_argument_group("hub security (as [hub] in the agent's config)")
    tls.add_argument("--ca-file", type=Path,
                     help="CA certificate(s) the broker's certificate must chain to "
                          "(mqtts; default: the system's CAs)")
    tls.add_argument("--client-cert", type=Path, help="client certificate (PEM), for mTLS")
    tls.add_argument("--client-key", type=Path, help="the client certificate's private key")
    tls.add_argument("--username", help="MQTT username")
    tls.add_argument("--password-file", type=Path,
                     help="file holding the MQTT password (never on the command line)")


def _hub_message(message: str) -> str:
    message = message.removeprefix("Value error, ")
    for key, option in _HUB_OPTIONS.items():
        message = message.replace(f"hub.{key}", option).replace(f"`{key}`", option)
    return message


def _hub_section(args: argparse.Namespace) -> HubSection:
    """The `--hub` options as the config's `[hub]` section: the same checks, the same TLS
    and password handling as the agent's own connection (`agent.service.credentials`)."""
    from pydantic import ValidationError

    from config.hub import HubSection

    def absolute(path: Path | None) -> str | None:
        return str(path.expanduser().absolute()) if path is not None else None

    options = {
        "ca_file": absolute(args.ca_file), "cert_file": absolute(args.client_cert),
        "key_file": absolute(args.client_key), "username": args.username,
        "password": f"file:{absolute(args.password_file)}" if args.password_file else None,
    }
    try:
        section = HubSection(
            url=args.hub, protocol=getattr(args, "protocol", "5"),
            **{k: v for k, v in options.items() if v is not None},
        )
    except ValidationError as error:
        problems = "; ".join(
            f"{_HUB_OPTIONS.get(str(e['loc'][0]), '--hub') if e['loc'] else '--hub'}: "
            f"{_hub_message(e['msg'])}"
            for e in error.errors()
        )
        raise HubToolFailure(f"bad hub options: {problems}") from error
    # A tool's session: nothing kept on the broker, quick reconnects (module docstring).
    return section.model_copy(
        update={"session_expiry_s": 0, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
    )


@asynccontextmanager
async def connect_to_hub(
    args: argparse.Namespace, on_message: OnMessage
) -> AsyncIterator[MqttSession]:
    """The tool's session to `--hub`, started; `wait_until_connected` before relying on it."""
    from agent.link.hub_session import hub_session
    from agent.service.credentials import CredentialError

    hub = _hub_section(args)
    quiet = logging.getLogger("edge-agent.cli.hub")
    quiet.setLevel(logging.CRITICAL)
    try:
        session = hub_session(
            hub,
            client_id=f"edge-agent-cli-{uuid.uuid4().hex[:12]}",
            connect_timeout_s=args.timeout,
            on_message=on_message,
            logger=quiet,
        )
    except CredentialError as error:
        raise HubToolFailure(_hub_message(str(error))) from error
    async with session:
        yield session


async def wait_until_connected(session: MqttSession, url: str, timeout: float) -> None:
    if not await session.wait_connected(timeout):
        why = f": {session.last_error}" if session.last_error else ""
        raise HubToolFailure(f"cannot reach the hub at {url} within {timeout:g} s{why}")


def run_hub_tool(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run a tool's coroutine: its exit code, or 1 after printing a `HubToolFailure`."""
    try:
        result: int = asyncio.run(coroutine)
    except HubToolFailure as failure:
        print(f"edge-agent: {failure}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    return result
