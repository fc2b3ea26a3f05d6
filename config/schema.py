"""The agent's TOML configuration, as a pydantic schema.

Every model forbids unknown keys, so a typo is an error that `edge-agent check-config` names,
never a setting silently ignored. Defaults are declared here once. Component settings live next
to their component (`connectors.opcua.config`) and are composed here with the mapping fields.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connectors.opcua.config import OpcUaSettings, OpcUaSignalSettings

# A name that is safe as one MQTT topic level and in a CloudEvents source.
TopicLevel = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class EventKind(enum.StrEnum):
    """The canonical event types a signal can feed (unversioned names, as written in config)."""

    TELEMETRY = "telemetry"
    MACHINE_STATE = "machine.state"
    PRODUCTION_COUNT = "production.count"


class MachineState(enum.StrEnum):
    RUNNING = "running"
    IDLE = "idle"
    DOWN = "down"
    FAULT = "fault"


class Priority(enum.IntEnum):
    """Delivery class: higher drains first after an outage."""

    TELEMETRY = 0
    BUSINESS = 1
    CRITICAL = 2


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSection(_Strict):
    site: TopicLevel
    id: TopicLevel
    state_dir: Path = Path("./state")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace_s: Annotated[float, Field(gt=0, le=300)] = 10.0


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
    status_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 30.0

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


class BufferSection(_Strict):
    synchronous: Literal["full", "normal"] = "full"
    retention_s: Annotated[float, Field(ge=0, le=90 * 86_400)] = 86_400.0


class SignalMapping(_Strict):
    """How one signal becomes canonical events (pure; see `agent.mapping`)."""

    event: EventKind
    asset: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")]
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    unit: Annotated[str, Field(min_length=1, max_length=32)] | None = None
    states: dict[str, MachineState] | None = None

    @model_validator(mode="after")
    def _fields_fit_event(self) -> SignalMapping:
        if self.event is EventKind.MACHINE_STATE and not self.states:
            raise ValueError(
                "a machine.state signal needs `states`, a table from raw value to one of "
                "running/idle/down/fault, e.g. states = { 0 = \"idle\", 1 = \"running\" }"
            )
        if self.event is not EventKind.MACHINE_STATE and self.states is not None:
            raise ValueError(f"`states` only applies to machine.state signals, not {self.event}")
        if self.event is EventKind.MACHINE_STATE and self.unit is not None:
            raise ValueError("`unit` does not apply to machine.state signals")
        return self


class OpcUaSignal(OpcUaSignalSettings, SignalMapping):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


Source = Annotated[OpcUaSource, Field(discriminator="type")]


class AgentConfig(_Strict):
    agent: AgentSection
    hub: HubSection
    buffer: BufferSection = BufferSection()
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

    @property
    def client_id(self) -> str:
        return self.hub.client_id or f"edge-agent-{self.agent.site}-{self.agent.id}"
