"""Settings of the webhook connector: `[[sources]]` with `type = "mes-http"`.

Every key, with its default and what it does: `connectors/mes_http/sample.toml` (loaded by
tests/unit/test_samples.py).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from connectors.base import ConnectorSettings
from connectors.credentials import check_reference, relative_to
from connectors.records import RecordSettings

HEALTH_PATH = "/healthz"

# An IPv4 address or a DNS host name (labels of letters, digits and inner hyphens).
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")

RoutePath = Annotated[
    str, Field(min_length=2, max_length=200, pattern=r"^(/[A-Za-z0-9._~-]+)+$")
]


class RouteSettings(RecordSettings):
    """One endpoint the MES posts to and what its objects become: each object is one record
    (`connectors.records`: `columns` name its JSON keys or dotted paths)."""

    path: RoutePath
    event: Annotated[str, Field(min_length=1, max_length=200)]

    @field_validator("path")
    @classmethod
    def _not_reserved(cls, path: str) -> str:
        if path == HEALTH_PATH:
            raise ValueError(f"{HEALTH_PATH} is the agent's health check, choose another path")
        return path


class MesHttpSettings(ConnectorSettings):
    listen: str = "127.0.0.1:8088"
    auth: Literal["bearer", "none"] = "bearer"
    tokens_file: Path | None = None
    token_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] | None = None
    max_body_bytes: Annotated[int, Field(ge=2**10, le=64 * 2**20)] = 2**20
    tls_cert: Path | None = None
    tls_key: Path | None = None
    idempotency_field: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    commit_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    idempotency_ttl_s: Annotated[float, Field(ge=60, le=90 * 86400)] = 7 * 86400
    # Hostile or broken clients (`connectors.mes_http.connections`): connections at once, and
    # how long headers and body may take to arrive.
    max_connections: Annotated[int, Field(ge=1, le=65_536)] = 256
    header_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    body_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    routes: Annotated[list[RouteSettings], Field(min_length=1)]

    @field_validator("tokens_file", "tls_cert", "tls_key")
    @classmethod
    def _credential_name(cls, path: Path | None) -> Path | None:
        return check_reference(path) if path is not None else None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, listen: str) -> str:
        _split_listen(listen)
        return listen

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        has_tokens = self.tokens_file is not None or self.token_env is not None
        if self.auth == "bearer" and not has_tokens:
            raise ValueError(
                'auth = "bearer" needs tokens_file and/or token_env '
                '(or set auth = "none" to accept unauthenticated posts)'
            )
        if self.auth == "none" and has_tokens:
            raise ValueError('auth = "none" takes no tokens_file or token_env')
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        paths = [route.path for route in self.routes]
        duplicates = sorted({path for path in paths if paths.count(path) > 1})
        if duplicates:
            raise ValueError(f"route paths must be unique: {', '.join(duplicates)}")
        return self

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        """The configured port; 0 binds any free one (tests)."""
        return _split_listen(self.listen)[1]

    def with_base_dir(self, base: Path) -> Self:
        """The same settings with relative file paths made absolute (relative to the config
        file's folder)."""
        update = {
            name: relative_to(base, path)
            for name in ("tokens_file", "tls_cert", "tls_key")
            if (path := getattr(self, name)) is not None and not path.is_absolute()
        }
        return self.model_copy(update=update) if update else self


def _split_listen(listen: str) -> tuple[str, int]:
    """("127.0.0.1", 8088) from "127.0.0.1:8088"; IPv6 hosts in brackets: "[::1]:8088"."""
    host, colon, port_text = listen.rpartition(":")
    if not colon or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"listen must be HOST:PORT with a port 0..65535, not {listen!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as error:
            raise ValueError(f"listen: {host!r} is not an IPv6 address") from error
    elif not _HOST_NAME.fullmatch(host):
        raise ValueError(
            f"listen: {host!r} is not an IPv4 address or host name (IPv6: [::1]:8088)"
        )
    return host, int(port_text)
