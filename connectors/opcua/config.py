"""Settings of the OPC UA connector: what OT staff write under `[[sources]]`, `type = "opcua"`.

Every key, with its default and what it does: `connectors/opcua/sample.toml` (loaded by
tests/unit/test_samples.py).

Invariants:
- A password is never written in the config itself: it comes from a file (`password_file`)
  or an environment variable (`password_env`), so the config can be shared and versioned.
- Every file setting (`password_file`, `certificate`, `private_key`, `user_certificate`,
  `user_private_key`) is a path or `credential:NAME`, a systemd credential
  (`LoadCredential=NAME:/path`), resolved when a session opens (`resolve_credentials`, see
  `connectors.credentials`).
- Secured connections (`security_policy` other than "None") need the agent's application
  instance certificate and key (`edge-agent certs create -c CONFIG` makes them); the server's
  certificate must be in `pki_dir/trusted/` unless `trust_on_first_use` is on (off by default).
- `node` is the signal's address exactly as written; readings carry that text as their
  signal, so the mapping keys on what the OT engineer wrote, whatever syntax it uses.
- Relative paths are relative to the config file (`with_base_dir`, called by the loader).
"""

from __future__ import annotations

import enum
import os
import socket
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, field_validator, model_validator

from connectors import credentials
from connectors.base import ConnectorSettings, ReconnectMaxS, SignalSettings
from connectors.opcua.addressing import parse_address

SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]


class SignalMode(enum.StrEnum):
    """How the connector watches a signal."""

    SUBSCRIBE = "subscribe"  # monitored item: the server reports changes
    POLL = "poll"  # batched Read every `poll_interval_ms` (servers with poor subscriptions)
    EVENTS = "events"  # event notifier: Alarms & Conditions events (node = the notifier)


class TimestampChoice(enum.StrEnum):
    """Which time becomes the reading's (and so the event's) `time`."""

    SOURCE = "source"  # when the device sampled it (falls back to server, then receive time)
    SERVER = "server"  # when the OPC UA server saw it (falls back to receive time)
    RECEIVE = "receive"  # when the agent received it


class OpcUaSignalSettings(SignalSettings):
    """What the connector needs to know of one signal: where it is and how to watch it."""

    node: Annotated[
        str,
        Field(
            min_length=1,
            description="NodeId (ns=2;s=Line1.Temp, ns=3;i=1001), NodeId with namespace URI "
            "(nsu=urn:plant;s=Line1.Temp) or browse path from Objects (Objects/Line1/Temp)",
        ),
    ]
    mode: SignalMode = SignalMode.SUBSCRIBE
    sampling_interval_ms: Annotated[float, Field(ge=0)] = 0.0
    queue_size: Annotated[int, Field(ge=1, le=10_000)] = 100
    deadband_absolute: Annotated[float, Field(gt=0)] | None = None
    deadband_percent: Annotated[float, Field(gt=0, le=100)] | None = None
    poll_interval_ms: Annotated[float, Field(ge=10, le=86_400_000)] = 1000.0
    backfill: bool = False
    event_types: list[str] = Field(
        default_factory=list,
        description="mode = \"events\": only events of these types (NodeIds) and their subtypes, "
        "with their own fields too; default ConditionType. The condition fields (active, "
        "acknowledged, ...) are selected whatever the types (connectors.opcua.event_filter)",
    )

    @field_validator("node")
    @classmethod
    def _address_syntax(cls, node: str) -> str:
        parse_address(node)  # raises ValueError with what was expected
        return node

    @field_validator("event_types")
    @classmethod
    def _event_type_syntax(cls, event_types: list[str]) -> list[str]:
        for event_type in event_types:
            parse_address(event_type)
        return event_types

    @model_validator(mode="after")
    def _options_fit_mode(self) -> OpcUaSignalSettings:
        if self.deadband_absolute is not None and self.deadband_percent is not None:
            raise ValueError("give either deadband_absolute or deadband_percent, not both")
        has_deadband = self.deadband_absolute is not None or self.deadband_percent is not None
        if has_deadband and self.mode is not SignalMode.SUBSCRIBE:
            raise ValueError(f"a deadband applies to mode = \"subscribe\" only, not {self.mode}")
        if self.event_types and self.mode is not SignalMode.EVENTS:
            raise ValueError("event_types applies to mode = \"events\" only")
        if self.backfill and self.mode is SignalMode.EVENTS:
            raise ValueError("backfill applies to values (subscribe or poll), not to events")
        return self


# Settings naming a file: each may be `credential:NAME` instead of a path.
_FILE_SETTINGS = ("password_file", "certificate", "private_key", "user_certificate",
                  "user_private_key")


class OpcUaSettings(ConnectorSettings):
    """Connection settings of one OPC UA server."""

    endpoint: Annotated[str, Field(pattern=r"^opc\.tcp://[^/\s]+(:\d+)?(/.*)?$")]
    publishing_interval_ms: Annotated[float, Field(gt=0, le=60_000)] = 100.0
    request_timeout_s: Annotated[float, Field(gt=0, le=300)] = 4.0
    # asyncua's liveness probe (a Read of the server state) runs every `watchdog_interval_s`
    # and waits at most that long for its answer. A server busy creating and sampling a large
    # subscription answers late: with 1 s, an asyncua server creating 10,000 monitored items
    # never answered in time, and the session was dropped and recreated for ever
    # (`bench.browse_paths --items 10000`). A socket that closes is seen at once anyway, and a
    # silent subscription by the stale-subscription check (`_watch`).
    watchdog_interval_s: Annotated[float, Field(gt=0, le=300)] = 5.0
    # Reconnects (done by the runtime, `ConnectorSettings`): a server restart may take a while.
    reconnect_max_s: ReconnectMaxS = 60.0
    # Security.
    security_policy: SecurityPolicy = "None"
    security_mode: SecurityMode | None = None  # default: SignAndEncrypt when secured, else None
    application_uri: Annotated[str, Field(pattern=r"^urn:\S+$")] | None = None
    certificate: Path = Path("pki/own/cert.der")
    private_key: Path = Path("pki/own/private/key.pem")
    pki_dir: Path = Path("pki")
    trust_on_first_use: bool = False
    certificate_warn_days: Annotated[int, Field(ge=0, le=3650)] = 30
    # User identity: anonymous unless `username` or `user_certificate` is set.
    username: Annotated[str, Field(min_length=1)] | None = None
    password_file: Path | None = None
    password_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    user_certificate: Path | None = None
    user_private_key: Path | None = None
    # Signals.
    timestamp: TimestampChoice = TimestampChoice.SOURCE
    clock_skew_warn_s: Annotated[float, Field(gt=0)] = 5.0
    signal_retry_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    backfill_max_s: Annotated[float, Field(gt=0, le=30 * 86_400)] = 86_400.0

    @model_validator(mode="before")
    @classmethod
    def _no_inline_password(cls, data: object) -> object:
        if isinstance(data, dict) and "password" in data:
            raise ValueError(
                "`password` must not be written in the config: put it in a file readable only "
                "by the agent (password_file = \"/etc/edge-agent/opcua.pass\"), in a systemd "
                "credential (password_file = \"credential:opcua-password\", "
                "LoadCredential=opcua-password:/path) or in an environment variable "
                "(password_env = \"OPCUA_PASSWORD\")"
            )
        return data

    @field_validator(*_FILE_SETTINGS)
    @classmethod
    def _credential_name(cls, path: Path | None) -> Path | None:
        return credentials.check_reference(path) if path is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaSettings:
        if self.security_policy == "None" and self.security_mode not in (None, "None"):
            raise ValueError(
                f"security_mode = {self.security_mode!r} needs a security_policy "
                "(Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss)"
            )
        if self.security_policy != "None" and self.security_mode == "None":
            raise ValueError(
                f"security_policy = {self.security_policy!r} needs security_mode = "
                "\"Sign\" or \"SignAndEncrypt\""
            )
        password_given = self.password_file is not None or self.password_env is not None
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give either password_file or password_env, not both")
        if self.username is None and password_given:
            raise ValueError("a password (password_file / password_env) needs a `username`")
        if self.username is not None and not password_given:
            raise ValueError(
                f"username {self.username!r} needs a password: password_file or password_env"
            )
        if (self.user_certificate is None) != (self.user_private_key is None):
            raise ValueError("an X.509 user identity needs both user_certificate and "
                             "user_private_key")
        if self.user_certificate is not None and self.username is not None:
            raise ValueError("choose one user identity: username or user_certificate")
        return self

    @property
    def secured(self) -> bool:
        return self.security_policy != "None"

    @property
    def effective_mode(self) -> SecurityMode:
        if not self.secured:
            return "None"
        return self.security_mode or "SignAndEncrypt"

    @property
    def effective_application_uri(self) -> str:
        """The ApplicationUri the agent presents; its certificate must carry the same."""
        return self.application_uri or f"urn:{socket.gethostname()}:plant-edge-agent"

    @property
    def trusted_dir(self) -> Path:
        return self.pki_dir / "trusted"

    @property
    def rejected_dir(self) -> Path:
        return self.pki_dir / "rejected"

    def read_password(self) -> str:
        """The user's password from its file or environment variable; ValueError says why not."""
        if self.password_env is not None:
            password = os.environ.get(self.password_env)
            if password is None:
                raise ValueError(
                    f"environment variable {self.password_env} (password_env) is not set"
                )
            return password
        if self.password_file is not None:
            try:
                return self.password_file.read_text().rstrip("\r\n")
            except OSError as error:
                raise ValueError(
                    f"cannot read password_file {self.password_file}: {error.strerror}"
                ) from error
        raise ValueError("no password configured (password_file or password_env)")

    def with_base_dir(self, base: Path) -> Self:
        """A copy with every relative path taken relative to `base` (the config's folder)."""
        update: dict[str, Path] = {}
        for name in (*_FILE_SETTINGS, "pki_dir"):
            value = getattr(self, name)
            if isinstance(value, Path) and not value.is_absolute():
                if not credentials.is_credential(value):
                    update[name] = base / value
        return self.model_copy(update=update)

    def resolve_credentials(self) -> Self:
        """A copy with every `credential:NAME` replaced by its file in $CREDENTIALS_DIRECTORY;
        `credentials.CredentialUnavailable` (a ValueError) says why one cannot be."""
        update: dict[str, Path] = {}
        for name in _FILE_SETTINGS:
            value = getattr(self, name)
            if isinstance(value, Path) and credentials.is_credential(value):
                update[name] = credentials.resolve(name, value)
        return self.model_copy(update=update) if update else self
