"""The agent's TOML configuration, as a pydantic schema.

Every model forbids unknown keys, so a typo is an error that `edge-agent check-config` names,
never a setting silently ignored. Defaults are declared here once. Component settings live next
to their component (`connectors.opcua.config`) and are composed here with the mapping fields.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from config.mapping import (  # the mapping part of the schema lives in config/mapping.py
    AssetSection,
    LookupTable,
    UnitsSection,
    cross_check,
    raise_problems,
)
from config.mapping import SignalMapping as SignalMapping
from connectors.mes_files.config import MesFilesSettings
from connectors.mes_http.config import MesHttpSettings, RouteSettings
from connectors.mes_sql.config import MesSqlSettings
from connectors.opcua.config import OpcUaSettings, OpcUaSignalSettings
from connectors.records import UNIT_FIELD, FieldSettings, RecordSettings
from connectors.simulated.config import SimulatedSettings, SimulatedSignalSettings
from events.kinds import AGENT_EVENT_KINDS, EventKind, Priority, PriorityClass

# A name that is safe as one MQTT topic level and in a CloudEvents source.
TopicLevel = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
AssetPath = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSection(_Strict):
    site: TopicLevel
    id: TopicLevel
    state_dir: Path = Path("./state")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["keyvalue", "json"] = "keyvalue"
    shutdown_grace_s: Annotated[float, Field(gt=0, le=300)] = 10.0


# Secrets and key files are never required inline (see `agent.credentials`, which reads them):
# a secret is `credential:NAME` (a systemd credential, `LoadCredential=NAME:...`, read from
# $CREDENTIALS_DIRECTORY) or `file:/absolute/path`; a key or certificate file is an absolute path
# or `credential:NAME`.
CREDENTIAL_PREFIX = "credential:"
FILE_PREFIX = "file:"
_CREDENTIAL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")


def _credential_name(reference: str) -> str:
    name = reference.removeprefix(CREDENTIAL_PREFIX)
    if not _CREDENTIAL_NAME.match(name):
        raise ValueError(
            f"bad credential name {name!r} in {reference!r}: letters, digits, `_`, `.`, `-`"
        )
    return reference


def _secret_reference(value: str) -> str:
    if value.startswith(CREDENTIAL_PREFIX):
        return _credential_name(value)
    if value.startswith(FILE_PREFIX):
        if not Path(value.removeprefix(FILE_PREFIX)).is_absolute():
            raise ValueError(f"{value!r}: give an absolute path after `file:`")
        return value
    raise ValueError(
        "write where the secret is, not the secret itself: \"credential:NAME\" (a systemd "
        "credential, LoadCredential=NAME:/path) or \"file:/absolute/path\""
    )


def _file_reference(value: str) -> str:
    if value.startswith(CREDENTIAL_PREFIX):
        return _credential_name(value)
    if not Path(value).is_absolute():
        raise ValueError(f"{value!r}: expected an absolute path or \"credential:NAME\"")
    return value


SecretRef = Annotated[str, AfterValidator(_secret_reference)]
FileRef = Annotated[str, AfterValidator(_file_reference)]


class HubSection(_Strict):
    url: str
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")] = "mfg"
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    reconnect_min_s: Annotated[float, Field(gt=0, le=300)] = 0.5
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    batch_max_events: Annotated[int, Field(ge=1, le=10_000)] = 500
    batch_max_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 50.0
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 16
    # Seconds a published message may wait for its PUBACK before the connection is dropped and
    # everything unacknowledged is sent again on the next one (a path that lost its PUBACKs).
    puback_timeout_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    status_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 30.0
    # Seconds the broker keeps this agent's MQTT session (its subscriptions and the QoS 1
    # messages queued for it) after a connection drops; 0: forget it at once.
    session_expiry_s: Annotated[int, Field(ge=0, le=7 * 86_400)] = 300
    # TLS (mqtts:// only): the CA that signed the broker's certificate (default: the system's
    # CAs), and this agent's client certificate and key for brokers that require one (mTLS).
    ca_file: FileRef | None = None
    cert_file: FileRef | None = None
    key_file: Annotated[FileRef | None, Field(validate_default=True)] = None
    username: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    password: Annotated[SecretRef | None, Field(validate_default=True)] = None

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _tls_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        url = info.data.get("url")
        if value is not None and url is not None and urlsplit(url).scheme != "mqtts":
            raise ValueError(f"`{info.field_name}` needs a TLS hub URL (mqtts://), not {url!r}")
        return value

    @field_validator("key_file")
    @classmethod
    def _key_with_cert(cls, key_file: str | None, info: ValidationInfo) -> str | None:
        has_cert = info.data.get("cert_file") is not None
        if has_cert and key_file is None:
            raise ValueError("`cert_file` is set: give its private key as `key_file` too")
        if key_file is not None and not has_cert and "cert_file" in info.data:
            raise ValueError("`key_file` is set: give its certificate as `cert_file` too")
        return key_file

    @field_validator("password")
    @classmethod
    def _password_with_user(cls, password: str | None, info: ValidationInfo) -> str | None:
        if password is not None and info.data.get("username") is None:
            raise ValueError("`password` is set: give the `username` it belongs to")
        return password

    @field_validator("url")
    @classmethod
    def _broker_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(
                f"unsupported scheme {parts.scheme!r} in {url!r}: expected mqtt://HOST:PORT "
                "or mqtts://HOST:PORT"
            )
        if not parts.hostname:
            raise ValueError(f"no host in {url!r}: expected mqtt://HOST:PORT")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as error:
            raise ValueError(f"bad port in {url!r}: {error}") from error
        if parts.path not in ("", "/"):
            raise ValueError(f"a broker URL has no path: {url!r}")
        return url

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
    "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
_MAX_BYTE_SIZE = 2**63 - 1  # what SQLite's INTEGER holds


def parse_byte_size(value: object) -> int:
    """`2 GiB`, `500 MB`, `64MiB`, `1.5 GB` or a plain number of bytes, as an int of bytes
    (at most 2**63 - 1)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_BYTE_SIZE:
        return value
    if isinstance(value, str) and (match := _SIZE.match(value)):
        unit = _SIZE_UNITS.get(match.group(2).lower())
        size = float(match.group(1)) * unit if unit is not None else None
        if size is not None and size < 2.0**63:  # not inf (too many digits), fits SQLite
            return int(size)
    raise ValueError(
        f'expected a size like "2 GiB", "500 MB" or a number of bytes up to 2**63 - 1, got '
        f"{value!r:.60} (units: B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
    )


ByteSize = Annotated[int, BeforeValidator(parse_byte_size)]


class BufferSection(_Strict):
    """The store-and-forward buffer (README, "Delivery guarantees")."""

    synchronous: Literal["full", "normal"] = "full"
    retention_s: Annotated[float, Field(ge=0, le=90 * 86_400)] = 86_400.0
    # Delivered events kept for replay, at most this many bytes (the oldest go first).
    retention_max_bytes: ByteSize = 1 * 2**30
    # Events not yet delivered, at most this many bytes; then `telemetry_overflow` applies and
    # business/critical events pause the sources (backpressure).
    max_bytes: ByteSize = 2 * 2**30
    # Below this much free space on the state dir's disk the buffer behaves as full.
    disk_free_reserve: ByteSize = 256 * 2**20
    telemetry_overflow: Literal["evict_oldest", "sample", "refuse"] = "evict_oldest"
    # With telemetry_overflow = "sample": keep one new telemetry event in N while full.
    sample_keep_one_in: Annotated[int, Field(ge=2, le=1_000_000)] = 10
    # Delivery class per event type (unversioned name), overriding each type's default.
    priorities: dict[str, PriorityClass] = {}
    # After an outage, events accepted before the connection are sent as backlog at most this
    # many per second (jittered by +/- backlog_jitter), starting after a random delay of up to
    # backlog_start_delay_max_s; live events go side by side, unpaced.
    backlog_max_rate: Annotated[float, Field(gt=0, le=10_000_000)] = 2_000.0
    backlog_jitter: Annotated[float, Field(ge=0, lt=1)] = 0.2
    backlog_start_delay_max_s: Annotated[float, Field(ge=0, le=3600)] = 2.0

    @field_validator("priorities")
    @classmethod
    def _known_event_types(cls, priorities: dict[str, str]) -> dict[str, str]:
        known = {kind.value for kind in EventKind} | set(AGENT_EVENT_KINDS)
        unknown = sorted(set(priorities) - known)
        if unknown:
            raise ValueError(
                f"unknown event type(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        return priorities

    def priority_of(self, kind: str, default: Priority) -> Priority:
        """The delivery class of an event type (unversioned name) under this config."""
        chosen = self.priorities.get(kind)
        return default if chosen is None else Priority[chosen.upper()]


READ_ONLY_COMMANDS = ("status", "sources", "buffer", "config", "ping")
MUTATING_COMMANDS = ("replay", "reload", "pause", "resume")
CommandName = Literal["status", "sources", "buffer", "config", "ping", "replay", "reload",
                      "pause", "resume"]
RAW_KEY_PREFIX = "ed25519:"


class CommandsSection(_Strict):
    """Remote commands over MQTT (`agent.commands`) and who may sign them (`agent.signing`).

    `keys` names public keys: a value is either `ed25519:` followed by the raw 32-byte key in
    base64, or the path of a PEM file (relative to the config file). `allow` lists, per command,
    the key names whose signature it accepts; a mutating command nobody is allowed is refused.
    """

    enabled: bool = True
    allow_unsigned_read_only: bool = True
    max_skew_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    rate_per_s: Annotated[float, Field(gt=0, le=1000)] = 5.0
    burst: Annotated[int, Field(ge=1, le=1000)] = 10
    queue_size: Annotated[int, Field(ge=1, le=10_000)] = 32
    max_request_bytes: Annotated[int, Field(ge=256, le=1_048_576)] = 16_384
    nonce_cache_size: Annotated[int, Field(ge=16, le=1_000_000)] = 10_000
    keys: dict[TopicLevel, Annotated[str, Field(min_length=1)]] = {}
    allow: dict[CommandName, list[TopicLevel]] = {}

    @field_validator("keys")
    @classmethod
    def _raw_keys_decode(cls, keys: dict[str, str]) -> dict[str, str]:
        for name, spec in keys.items():
            if spec.startswith(RAW_KEY_PREFIX):
                raw_public_key(spec, name)  # raises ValueError naming the key
        return keys

    @model_validator(mode="after")
    def _allowed_keys_exist(self) -> CommandsSection:
        for command, names in self.allow.items():
            unknown = sorted(set(names) - set(self.keys))
            if unknown:
                raise ValueError(
                    f"commands.allow.{command} names unknown key(s) {', '.join(unknown)}; "
                    f"define them under [commands.keys]"
                )
        return self


def raw_public_key(spec: str, name: str) -> bytes:
    """The 32 key bytes of an `ed25519:BASE64` key; ValueError saying what is wrong."""
    text = spec.removeprefix(RAW_KEY_PREFIX)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"key {name!r}: {RAW_KEY_PREFIX} must be followed by base64") from error
    if len(raw) != 32:
        raise ValueError(
            f"key {name!r}: an Ed25519 public key is 32 bytes, this one is {len(raw)} bytes"
        )
    return raw


def read_public_key_file(path: Path, name: str) -> bytes:
    """The 32 key bytes of an Ed25519 public key in a PEM file; ValueError saying what is wrong
    (a private key file is refused: it must never be copied to a plant)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"key {name!r}: cannot read {path}: {error.strerror or error}") from error
    if b"PRIVATE KEY" in data:
        raise ValueError(
            f"key {name!r}: {path} holds a private key; give the agent the public key "
            "(the .pub.pem file)"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ValueError(f"key {name!r}: {path} is not a PEM public key") from error
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"key {name!r}: {path} is not an Ed25519 key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class OpcUaSignal(OpcUaSignalSettings, SignalMapping):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="after")
    def _events_are_alarms(self) -> OpcUaSignal:
        # An event notifier yields alarm events, not values; and only it yields them.
        alarm = self.event is EventKind.MACHINE_ALARM
        if (self.mode == "events") != alarm:
            raise ValueError(
                "an event notifier (mode = \"events\") feeds event = \"machine.alarm\", and "
                "machine.alarm comes only from mode = \"events\""
            )
        return self


class OpcUaSource(OpcUaSettings):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: TopicLevel
    type: Literal["opcua"]
    signals: Annotated[list[OpcUaSignal], Field(min_length=1)]

    @model_validator(mode="after")
    def _unique_nodes(self) -> OpcUaSource:
        seen: set[str] = set()
        for signal in self.signals:
            if signal.node in seen:
                raise ValueError(f"node {signal.node!r} is listed twice in source {self.name!r}")
            seen.add(signal.node)
        return self


class SimulatedSignal(SimulatedSignalSettings, SignalMapping):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimulatedSource(SimulatedSettings):
    """A fixed-rate simulated source (`connectors.simulated`), for demos, tests and benchmarks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: TopicLevel
    type: Literal["simulated"]
    signals: Annotated[list[SimulatedSignal], Field(min_length=1)]


# Event types an MES record can become, with the fields a record may fill: required and
# optional (the `events.models` models, less what the agent derives; a test checks they agree).
RECORD_FIELDS: dict[EventKind, tuple[frozenset[str], frozenset[str]]] = {
    EventKind.WORKORDER_RELEASED: (
        frozenset({"order"}), frozenset({"product", "quantity", "unit", "due_at"})
    ),
    EventKind.WORKORDER_COMPLETED: (
        frozenset({"order", "unit"}), frozenset({"product", "good", "scrap"})
    ),
    EventKind.PRODUCTION_COUNT: (frozenset({"count"}), frozenset({"increment"})),
    # phase (start/end) and duration_s are derived when not given: see agent.mapping.
    EventKind.MACHINE_DOWNTIME: (
        frozenset(), frozenset({"phase", "reason", "reason_raw", "started_at"})
    ),
    EventKind.QUALITY_HOLD: (
        frozenset({"lot", "phase", "reason"}),
        frozenset({"material", "quantity", "unit", "note"}),
    ),
    EventKind.INVENTORY_ADJUSTED: (
        frozenset({"material", "location", "delta", "unit", "reason"}), frozenset({"lot"})
    ),
    EventKind.MATERIAL_CONSUMED: (
        frozenset({"material", "quantity", "unit"}), frozenset({"lot", "order", "location"})
    ),
}


def check_record_fields(event: EventKind, columns: Mapping[str, FieldSettings]) -> None:
    """The columns of a record source fit its event type; ValueError says what does not."""
    fields = RECORD_FIELDS.get(event)
    if fields is None:
        raise ValueError(
            f"event {event.value!r} cannot come from an MES record; "
            f"supported: {', '.join(kind.value for kind in RECORD_FIELDS)}"
        )
    required, optional = fields
    unknown = sorted(set(columns) - required - optional)
    if unknown:
        raise ValueError(
            f"{event.value} has no field(s) {', '.join(map(repr, unknown))}; "
            f"its fields: {', '.join(sorted(required | optional))}"
        )
    given = set(columns)
    if any(spec.unit is not None for spec in columns.values()):
        given.add(UNIT_FIELD)  # a column's unit fills the event's unit
    missing = sorted(required - given)
    if missing:
        raise ValueError(
            f"{event.value} needs column(s) for {', '.join(map(repr, missing))}"
            + (" (or a column with `unit`)" if UNIT_FIELD in missing else "")
        )
    for name in sorted(required & set(columns)):
        if not columns[name].required:
            raise ValueError(f"field {name!r} is required by {event.value}")


class _OneEventRecords(BaseModel):
    """A record source of one event type: a file drop or an interface table. Each record
    (signal "record") becomes one event of `event` for `asset`, its fields from `columns`."""

    name: TopicLevel
    event: EventKind
    asset: AssetPath

    @property
    def signals(self) -> tuple[()]:
        """No signals: its records are whole events (`agent.mapping`)."""
        return ()

    def record_rules(self) -> list[tuple[str, EventKind, str]]:
        """(signal, event, asset) of its readings."""
        return [("record", self.event, self.asset)]

    @model_validator(mode="after")
    def _columns_fit_event(self) -> Self:
        assert isinstance(self, RecordSettings)
        check_record_fields(self.event, self.columns)
        return self


class MesFilesSource(MesFilesSettings, _OneEventRecords):
    """A folder of MES batch files (`connectors.mes_files`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["mes-files"]


class MesHttpRoute(RouteSettings):
    """One webhook endpoint: each posted object becomes one event of `event` for `asset`."""

    event: EventKind  # narrows the connector's plain name
    asset: AssetPath

    @model_validator(mode="after")
    def _columns_fit_event(self) -> MesHttpRoute:
        check_record_fields(self.event, self.columns)
        return self


class MesHttpSource(MesHttpSettings):
    """An HTTP endpoint the MES posts JSON to (`connectors.mes_http`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: TopicLevel
    type: Literal["mes-http"]
    routes: Annotated[list[MesHttpRoute], Field(min_length=1)]  # type: ignore[assignment]

    @property
    def signals(self) -> tuple[()]:
        """A webhook has no signals: its objects are whole records (`agent.mapping`)."""
        return ()

    def record_rules(self) -> list[tuple[str, EventKind, str]]:
        """(signal, event, asset) of its readings: a route's objects are signal = its path."""
        return [(route.path, route.event, route.asset) for route in self.routes]


class MesSqlSource(MesSqlSettings, RecordSettings, _OneEventRecords):
    """An interface table (or query) in the MES database (`connectors.mes_sql`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["mes-sql"]


RECORD_SOURCES = (MesFilesSource, MesHttpSource, MesSqlSource)
Source = Annotated[
    OpcUaSource | SimulatedSource | MesFilesSource | MesHttpSource | MesSqlSource,
    Field(discriminator="type"),
]


class AgentConfig(_Strict):
    agent: AgentSection
    hub: HubSection
    buffer: BufferSection = BufferSection()
    commands: CommandsSection = CommandsSection()
    units: UnitsSection = UnitsSection()
    lookups: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")], LookupTable] = {}
    assets: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")],
                 AssetSection] = {}
    sources: Annotated[list[Source], Field(min_length=1)]

    # A field validator, not a model validator: its error then points at `sources` (key and
    # line) instead of at the file as a whole.
    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, sources: list[OpcUaSource]) -> list[OpcUaSource]:
        names = [source.name for source in sources]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique; repeated: {', '.join(duplicates)}")
        return sources

    # Mapping references across sections (lookups, sibling signals, asset paths), each error
    # raised on its own key path (see config.mapping.cross_check).
    @model_validator(mode="after")
    def _mapping_references(self) -> AgentConfig:
        raise_problems(
            cross_check(
                lookups=self.lookups,
                assets=self.assets,
                sources=[
                    (source.name, [(signal.node, signal) for signal in source.signals])
                    for source in self.sources
                ],
            )
        )
        return self

    @property
    def client_id(self) -> str:
        return self.hub.client_id or f"edge-agent-{self.agent.site}-{self.agent.id}"
