"""The commissioning walkthrough (docs/commissioning.md) as an operator would type it: every
`console` command of its walkthrough part runs under bash against real peers, and its exit code
and output must be the documented ones (testkit/walkthrough.py says how the page marks its
commands, files and placeholders).

The peers: the test plant (`serve_plant`, unsecured, shown as port 4840), a secured line
server (`serve_line` with Basic256Sha256 SignAndEncrypt only, shown as port 4841) that keeps
its client trust list in folders as node-opcua does (`pki/trusted/`, `pki/rejected/`: an
unknown client certificate is filed in rejected/ and refused), and a real mosquitto as the hub
broker (shown as port 1883). The commands use the venv's `edge-agent` unless the package is
installed (below).

The `apt install ./….deb` step runs only as root with a built package named by
`EDGE_AGENT_DEB` (e.g. from `make deb`), and then the rest uses the installed
`/usr/bin/edge-agent` (the package stays installed); elsewhere that single step is skipped
with a warning that says why (installing adds a unit and a system user to the machine running
the tests, which tests/e2e/test_packaging.py avoids too).

`WALKTHROUGH_REGENERATE=1` runs the same steps and rewrites the page's outputs with what the
commands printed (docs/developer-guide.md, "The commissioning walkthrough").
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.validator import CertificateValidatorMethod
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from connectors.opcua.certificates import describe
from testkit.agent_process import REPO
from testkit.broker import MosquittoBroker, free_loopback_port
from testkit.opcua_servers import serve_line, serve_plant, thumbprint_of
from testkit.walkthrough import (
    BEGIN,
    END,
    Command,
    Substitution,
    Walkthrough,
    WalkthroughMismatch,
)

PAGE = REPO / "docs" / "commissioning.md"
SHOWN_WORKDIR = "/home/ot/commissioning"
SHOWN_SERVER_PKI = "/srv/opcua-line2/pki"
SHOWN_APPLICATION_URI = "urn:edge-gw:plant-edge-agent"
VENV_BIN = REPO / ".venv" / "bin"

pytestmark = [pytest.mark.e2e]


def trust_folder_validator(pki: Path) -> CertificateValidatorMethod:
    """A server's client trust list in folders: accept a certificate whose thumbprint is in
    `pki/trusted/*.der` (read on every connection), file any other in `pki/rejected/` and
    refuse it with BadCertificateUntrusted."""

    async def validate(certificate: x509.Certificate, _: ua.ApplicationDescription) -> None:
        trusted = {thumbprint_of(path) for path in (pki / "trusted").glob("*.der")}
        thumbprint = describe(certificate).thumbprint
        if thumbprint in trusted:
            return
        rejected = pki / "rejected" / f"{thumbprint}.der"
        rejected.write_bytes(certificate.public_bytes(serialization.Encoding.DER))
        raise ServiceError(StatusCodes.BadCertificateUntrusted)

    return validate


def install_step() -> Callable[[Command], Awaitable[Path | None]]:
    """The `apt install` block: run as root with EDGE_AGENT_DEB, else skipped with a warning."""
    deb = os.environ.get("EDGE_AGENT_DEB")
    reason = None
    if os.geteuid() != 0:
        reason = "not root"
    elif not deb or not Path(deb).is_file():
        reason = "no package: set EDGE_AGENT_DEB to a .deb built with `make deb`"
    elif shutil.which("apt") is None:
        reason = "no apt on this machine"

    deb_path = os.path.abspath(deb) if deb else ""

    async def install(command: Command) -> Path | None:
        if reason is not None:
            warnings.warn(
                f"{PAGE}:{command.line + 1}: `{command.text}` skipped ({reason}); "
                f"the rest runs against {VENV_BIN}/edge-agent",
                stacklevel=1,
            )
            return None
        process = await asyncio.create_subprocess_exec(
            "apt",
            "install",
            "-y",
            deb_path,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(300):
            out, _ = await process.communicate()
        assert process.returncode == 0, f"{command.text} failed:\n{out.decode()}"
        return Path("/usr/bin")

    return install


# About 20 CLI runs and two agent runs, some 22 s of CPU (mostly Python start-up): 34 s on a
# quiet 2-core machine, 75-100 s with other test files beside it; `apt install` adds its own.
@pytest.mark.timeout(300)
async def test_the_commissioning_walkthrough_runs_as_documented(tmp_path: Path) -> None:
    workdir = tmp_path / "commissioning"
    workdir.mkdir()
    server_pki = tmp_path / "opcua-line2" / "pki"
    for folder in ("trusted", "rejected"):
        (server_pki / folder).mkdir(parents=True)
    plant_port, secured_port = free_loopback_port(), free_loopback_port()
    with MosquittoBroker(["log_type subscribe"]) as broker:

        def tail_subscribed() -> bool:
            """The broker's log has a subscription to the events (only `tail` makes one)."""
            try:
                log = broker.log_path.read_text(errors="replace")
            except FileNotFoundError:
                return False
            return "/events/" in log

        async with (
            serve_plant(plant_port),
            serve_line(
                secured_port,
                pki=server_pki,
                policies=[ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt],
            ) as line2,
        ):
            line2.server.set_certificate_validator(trust_folder_validator(server_pki))
            walkthrough = Walkthrough(
                PAGE,
                workdir,
                VENV_BIN,
                [
                    Substitution("4840", str(plant_port)),
                    Substitution("4841", str(secured_port)),
                    Substitution("1883", str(broker.port)),
                    Substitution(SHOWN_WORKDIR, str(workdir)),
                    Substitution(SHOWN_SERVER_PKI, str(server_pki)),
                    Substitution(
                        SHOWN_APPLICATION_URI, f"urn:{socket.gethostname()}:plant-edge-agent"
                    ),
                ],
                conditions={"tail-subscribed": tail_subscribed},
                regenerate=os.environ.get("WALKTHROUGH_REGENERATE") == "1",
                install=install_step(),
            )
            await walkthrough.run()
    assert walkthrough.ran >= 15, (
        f"only {walkthrough.ran} commands ran: is the page's walkthrough cut?"
    )


# --- the harness itself, on small pages of plain shell commands (fast: no agent) ---------------


def page_with(tmp_path: Path, *lines: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text("\n".join(["# a page", BEGIN, *lines, END, ""]))
    return page


async def test_a_stale_output_names_the_page_line_and_shows_the_diff(tmp_path: Path) -> None:
    page = page_with(tmp_path, "```console", "$ echo one", "one", "$ echo hallo", "hello", "```")
    walkthrough = Walkthrough(page, tmp_path, VENV_BIN, [])
    with pytest.raises(WalkthroughMismatch) as failure:
        await walkthrough.run()
    message = str(failure.value)
    assert message.startswith(f"{page}:6: `echo hallo`: its output differs"), message
    assert "\n-hello\n+hallo" in message
    assert "WALKTHROUGH_REGENERATE=1" in message


async def test_placeholders_substitutions_and_files(tmp_path: Path) -> None:
    page = page_with(
        tmp_path,
        "<!-- walkthrough: write notes.txt -->",
        "```text",
        "port 4840",
        "```",
        "```console",
        "$ cat notes.txt; pwd; date -u +%Y-%m-%dT%H:%M:%S; echo 'seq=7 pid 12 3 s ago'",
        "port 4840",
        "/home/ot/work",
        "2000-01-01T00:00:00",
        "seq=1 pid 99 41 s ago",
        "$ echo A3F0000000000000000000000000000000000001; exit 3  # exit 3",
        "A3F0000000000000000000000000000000000001",
        "```",
    )
    walkthrough = Walkthrough(
        page,
        tmp_path,
        VENV_BIN,
        [Substitution("4840", "50123"), Substitution("/home/ot/work", str(tmp_path))],
    )
    await walkthrough.run()
    assert (tmp_path / "notes.txt").read_text() == "port 50123\n"
    assert walkthrough.ran == 2


async def test_regenerate_writes_what_the_commands_print(tmp_path: Path) -> None:
    page = page_with(
        tmp_path,
        "```console",
        "$ echo 1111111111111111111111111111111111111111 | tr 1 B",
        "$ echo 0000000000000000000000000000000000000000; exit 2",
        "stale",
        "```",
    )
    await Walkthrough(page, tmp_path, VENV_BIN, [], regenerate=True).run()
    thumbprint = "B" * 40
    assert page.read_text().splitlines()[3:8] == [
        "$ echo 1111111111111111111111111111111111111111 | tr 1 B",
        thumbprint,
        f"$ echo {thumbprint}; exit 2  # exit 2",
        thumbprint,
        "```",
    ]
    await Walkthrough(page, tmp_path, VENV_BIN, []).run()  # the new page holds
