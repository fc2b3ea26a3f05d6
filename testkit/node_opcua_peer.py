"""A real node-opcua server as a test peer: `testkit/node_opcua/server.js`, run by `node`.

`make node-opcua` installs node-opcua (pinned in `testkit/node_opcua/package.json`) into
`testkit/node_opcua/node_modules/`; `make test` does it first. `missing_node_opcua()`
says what is missing when it was not installed.

`NodeOpcUaServer(workdir)` starts the server on a free loopback port with a certificate made by
`connectors.opcua.certificates` and its own trust list in `workdir/pki` (node-opcua's
certificate manager, which does not accept unknown client certificates: they land in
`pki/rejected/` until `trust_rejected()` has the manager trust them (`trust FILE`), as an OT
engineer does on a real server's certificate screen). `command("set 95")` / `command("ack")`
drive its ExclusiveLimitAlarm (see server.js). Every wait is bounded; the server is stopped
(then killed) on `stop()`.
"""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

from connectors.opcua.certificates import create_application_certificate
from testkit.broker import free_loopback_port

PEER_DIR = Path(__file__).with_name("node_opcua")
SERVER_URI = "urn:plant-edge-agent:node-opcua-server"
NAMESPACE = "urn:plant-edge-agent:node-opcua-line"
TEMPERATURE = f"nsu={NAMESPACE};s=Line1.Temperature"
LINE = f"nsu={NAMESPACE};s=Line1"
INSTALL_HINT = "run `make node-opcua` (needs node and npm)"

# Generous: node-opcua loads the standard nodeset (about 1 s on a quiet machine) and makes its
# own key on first start; the machine running the suite may be loaded.
_START_TIMEOUT_S = 90.0
_COMMAND_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 10.0


class NodeOpcUaError(RuntimeError):
    """The node-opcua server could not be started, or did not answer a command."""


def missing_node_opcua() -> str | None:
    """Why the node-opcua peer cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return f"node is not on PATH; {INSTALL_HINT}"
    if not (PEER_DIR / "node_modules" / "node-opcua" / "package.json").is_file():
        return f"node-opcua is not installed in {PEER_DIR / 'node_modules'}; {INSTALL_HINT}"
    return None


class NodeOpcUaServer:
    """One node-opcua server process; see the module docstring."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_loopback_port()
        self.endpoint = f"opc.tcp://127.0.0.1:{self.port}"
        self.pki_dir = workdir / "pki"
        self.certificate = workdir / "server" / "cert.der"
        self._key = workdir / "server" / "key.pem"
        self._process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._log_path = workdir / "node-opcua.log"

    def __enter__(self) -> NodeOpcUaServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def rejected_dir(self) -> Path:
        return self.pki_dir / "rejected"

    @property
    def trusted_dir(self) -> Path:
        return self.pki_dir / "trusted" / "certs"

    def start(self) -> None:
        reason = missing_node_opcua()
        if reason is not None:
            raise NodeOpcUaError(reason)
        create_application_certificate(
            certificate_path=self.certificate, key_path=self._key, application_uri=SERVER_URI,
            common_name="node-opcua test server", host_name="localhost",
        )
        log = self._log_path.open("w")
        self._process = subprocess.Popen(
            ["node", str(PEER_DIR / "server.js"), str(self.port), str(self.pki_dir),
             str(self.certificate), str(self._key), SERVER_URI],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            cwd=PEER_DIR,
        )
        log.close()
        assert self._process.stdout is not None
        threading.Thread(
            target=_pump, args=(self._process.stdout, self._lines), daemon=True,
            name=f"node-opcua-{self.port}",
        ).start()
        answer = self._answer(_START_TIMEOUT_S, "to start")
        if "ready" not in answer:
            raise NodeOpcUaError(f"node-opcua did not start: {answer}; see {self._log_path}")

    def command(self, text: str) -> None:
        """Send one command (see server.js) and wait for its answer."""
        process = self._process
        if process is None or process.stdin is None:
            raise NodeOpcUaError("the node-opcua server is not running")
        process.stdin.write(text + "\n")
        process.stdin.flush()
        answer = self._answer(_COMMAND_TIMEOUT_S, f"to answer {text!r}")
        if "ok" not in answer:
            raise NodeOpcUaError(f"node-opcua refused {text!r}: {answer}")

    def trust_rejected(self, thumbprint: str) -> Path:
        """Trust the rejected certificate with this SHA-1 thumbprint (any case), as on the
        server's own certificate screen: its certificate manager moves the file to the trusted
        folder and knows it at once (a file moved by hand is noticed by the manager's folder
        watcher, which under load took more than a minute); the new path."""
        wanted = f"[{thumbprint.lower()}]"
        matches = [path for path in self.rejected_dir.glob("*.pem") if wanted in path.name]
        if len(matches) != 1:
            found = sorted(path.name for path in self.rejected_dir.glob("*"))
            raise NodeOpcUaError(f"no single rejected certificate {wanted}: {found}")
        self.command(f"trust {matches[0]}")
        trusted = [path for path in self.trusted_dir.glob("*") if wanted in path.name]
        if len(trusted) != 1:
            raise NodeOpcUaError(f"{wanted} is not in {self.trusted_dir} after trust")
        return trusted[0]

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            try:
                process.stdin.close()  # server.js shuts down when stdin closes
            except OSError:
                pass
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_STOP_TIMEOUT_S)

    def _answer(self, limit_s: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + limit_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NodeOpcUaError(f"node-opcua took more than {limit_s:.0f} s {what}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                code = self._process.poll() if self._process is not None else None
                raise NodeOpcUaError(
                    f"node-opcua exited (code {code}) before {what}; see {self._log_path}"
                )
            try:
                answer = json.loads(line)
            except ValueError:
                continue  # not one of server.js's answers
            if isinstance(answer, dict):
                return answer


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    """Hand the server's stdout lines over; None when it closes."""
    for line in stream:
        lines.put(line.strip())
    lines.put(None)
