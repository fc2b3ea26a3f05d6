"""Probing a webhook before the agent is (re)started (`edge-agent check-config --connect`).

The listen address must be one this machine can bind (an address of its own, a port free and
allowed: below 1024 needs root or CAP_NET_BIND_SERVICE), and the files it names (tokens, TLS
certificate and key) must be readable. The port is bound and released at once; nothing is
served. A webhook the running agent still serves holds its port: the probe says so, and
restarting that agent frees it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from pathlib import Path

from connectors.base import ProbeResult
from connectors.credentials import is_credential
from connectors.mes_http.config import MesHttpSettings


async def probe(settings: MesHttpSettings) -> list[ProbeResult]:
    """One result for the listen address, one for each file the settings name."""
    return await asyncio.to_thread(_check, settings)


def _check(settings: MesHttpSettings) -> list[ProbeResult]:
    results = [_check_bind(settings.host, settings.port)]
    for key in ("tokens_file", "tls_cert", "tls_key"):
        path: Path | None = getattr(settings, key)
        # A `credential:NAME` is systemd's to read, as root, when it starts the unit.
        if path is not None and not is_credential(path):
            readable = path.is_file() and os.access(path, os.R_OK)
            results.append(ProbeResult(f"{key} {path}", None if readable else
                                       "is not a file the agent can read"))
    return results


def _check_bind(host: str, port: int) -> ProbeResult:
    subject = f"listen {host}:{port}"
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        return ProbeResult(subject, f"cannot resolve {host!r}: {error.strerror}")
    family, kind, protocol, _, address = addresses[0]
    with socket.socket(family, kind, protocol) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            sock.bind(address)
        except OSError as error:
            why = error.strerror or str(error)
            if error.errno == errno.EADDRINUSE:
                why += " (by the running agent, or another process)"
            return ProbeResult(subject, f"cannot bind: {why}")
    return ProbeResult(subject)
