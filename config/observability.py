"""`[web]`: the agent's own read-only HTTP server, the Prometheus `/metrics` and the status page
`/` (`agent.web`).

One section, one listener, for both: they show the same figures to two readers (Prometheus and
the OT engineer), so they share one port to open in the plant firewall, one TLS identity and one
password; `metrics` and `status_page` turn either path off. Off by default (no port is opened
unless `enabled = true`) and on loopback by default: exposing it further is a decision written
in the file (`host`), ideally with `tls_cert`/`tls_key` and `username`/`password_file`.

File references follow the MES webhook's (`connectors.mes_http.config`): a path (relative to the
config file's folder) or `credential:NAME` (a systemd credential), checked here for form only;
the files are read when the agent starts (`agent.web.server`), so a bad one stops the start with
the key named, never at `check-config` time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from config.fields import STRICT
from connectors.credentials import check_reference, relative_to

__all__ = ["HISTORY_SAMPLES", "WebSection"]

# The status page's plots keep this many samples (a ring file in the state dir): 24 h at the
# default `history_interval_s` of 60 s.
HISTORY_SAMPLES = 1440


class WebSection(BaseModel):
    """`[web]`; see the module docstring."""

    model_config = STRICT

    enabled: bool = False
    # Loopback by default; "0.0.0.0" or an address of the plant network serves it further.
    host: Annotated[str, Field(min_length=1, max_length=255)] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65_535)] = 8790  # 0: any free port (logged)
    metrics: bool = True  # serve GET /metrics (Prometheus text, or OpenMetrics by Accept)
    status_page: bool = True  # serve GET / (the status page)
    # The page reloads itself this often.
    refresh_s: Annotated[float, Field(ge=1, le=3600)] = 10.0
    # One sample of buffer depth and deliveries this often, HISTORY_SAMPLES kept (the plots).
    history_interval_s: Annotated[float, Field(ge=1, le=3600)] = 60.0
    # HTTPS: both or neither (PEM files; path or credential:NAME).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # HTTP basic auth on every path: both or neither. The file holds the password.
    username: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^:]+$")] | None = (
        None
    )
    password_file: Path | None = None

    @field_validator("tls_cert", "tls_key", "password_file")
    @classmethod
    def _reference(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if path is None:
            return None
        check_reference(path)
        base = (info.context or {}).get("config_dir")
        return relative_to(Path(base), path) if base is not None else path

    @model_validator(mode="after")
    def _consistent(self) -> WebSection:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("basic auth needs both `username` and `password_file`")
        if self.enabled and not (self.metrics or self.status_page):
            raise ValueError("enabled with neither `metrics` nor `status_page`: nothing to serve")
        return self

    @property
    def history_span_s(self) -> float:
        """How far back the plots reach."""
        return HISTORY_SAMPLES * self.history_interval_s
