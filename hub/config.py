"""`hub.toml`: what one hub process connects to and how it lands events and heals gaps.

The model is strict as the agent's config is (`config.fields.STRICT`: an unknown key or a wrong
type is a problem, defaults are declared once here) and is read by `config.loader.load_model`,
so a mistake is reported as ``FILE:LINE: KEY: what was expected``. Relative paths (the hub's
signing key, a password file, a CA file) are taken relative to the file, as the agent does.

Sections: ``[broker]`` (the MQTT broker, v5 or 3.1.1, and the shared subscription), ``[database]``
(PostgreSQL), ``[landing]`` (batching), ``[gaps]`` (gap detection and signed replay requests;
without the section, gap healing is off), ``[status]`` (the agents' retained statuses kept in
the database, `hub.status`), ``[dashboard]`` (the web dashboard and `/metrics`, `hub.web`;
without the section, no web server).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from config.buffer import ByteSize
from config.fields import STRICT, TopicLevel
from config.hub import BrokerAddress, check_broker_url
from config.loader import load_model

__all__ = [
    "BrokerSection",
    "DashboardSection",
    "DatabaseSection",
    "GapsSection",
    "HubConfig",
    "LandingSection",
    "StatusSection",
    "load_hub_config",
]

_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _relative_to_config(value: Path | None, info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("config_dir")
    if value is None or value.is_absolute() or base is None:
        return value
    return Path(base) / value


class BrokerSection(BaseModel, BrokerAddress):
    """The MQTT broker every agent publishes to, and the hub's shared subscription."""

    model_config = STRICT

    url: str
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")] = "mfg"
    # The MQTT client id of this process: unique per hub process (a second client with the same
    # id takes the session over and the broker disconnects the first).
    client_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
    # The shared subscription group: every hub process of one group shares the events
    # (`$share/GROUP/{prefix}/+/+/events/#`); each message goes to one of them.
    share_group: TopicLevel = "hub"
    # false: subscribe to `{prefix}/+/+/events/#` alone, for a broker without shared
    # subscriptions (MQTT 3.1.1 has none: NATS 2.9, RabbitMQ 3.10 take `$share/...` for a plain
    # topic and deliver nothing). Then run one hub process per broker: a second one would land
    # every message again (no-ops, twice the work). Declared before `protocol`, which checks it.
    shared_subscription: bool = True
    # The MQTT version (docs/hub-guide.md, "On an MQTT 3.1.1 broker"): "5"; "3.1.1" for a
    # broker without v5; "auto": v5, or 3.1.1 when the broker refuses v5 at CONNECT (logged
    # once, kept until the process restarts). On 3.1.1 the replay requests carry their reply
    # topic and correlation in their JSON (hub.gaps) and `receive_maximum` has no effect.
    protocol: Literal["5", "3.1.1", "auto"] = "5"
    # Publish and subscribe with every "." of a topic as "/", as the agents'
    # `[hub] dots_as_levels` does: for brokers that refuse "." in topic names (NATS before 2.10).
    dots_as_levels: bool = False
    # Seconds the broker keeps this process's session (its subscription and the messages
    # queued or in flight for it) after a connection drops. 0: a dead process's share goes to
    # the others at once, and what was in flight to it is healed by replay; > 0: the same
    # process restarted (same client_id) within it gets its messages again.
    session_expiry_s: Annotated[int, Field(ge=0, le=7 * 86_400)] = 0
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    reconnect_min_s: Annotated[float, Field(gt=0, le=300)] = 0.5
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Unacknowledged messages the broker may send at once (MQTT v5 Receive Maximum): what the
    # process holds in memory at most before their transaction commits.
    receive_maximum: Annotated[int, Field(ge=1, le=65_535)] = 2000
    username: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    password_file: Path | None = None
    ca_file: Path | None = None  # mqtts:// only; default: the system's CAs

    _paths = field_validator("password_file", "ca_file")(_relative_to_config)

    _url = field_validator("url")(check_broker_url)

    @field_validator("protocol")
    @classmethod
    def _shared_needs_v5(cls, protocol: str, info: ValidationInfo) -> str:
        if protocol != "5" and info.data.get("shared_subscription") is True:
            may = "speaks" if protocol == "3.1.1" else "may connect with"
            raise ValueError(
                f'`protocol` is "{protocol}": this hub {may} MQTT 3.1.1, which has no shared '
                "subscriptions (`$share/GROUP/...`: NATS 2.9 and RabbitMQ 3.10 take it for a "
                "plain topic and deliver nothing); set `shared_subscription = false` (this "
                'process then subscribes alone: one hub process per broker), or protocol = "5"'
            )
        return protocol

    @model_validator(mode="after")
    def _consistent(self) -> BrokerSection:
        if self.password_file is not None and self.username is None:
            raise ValueError("`password_file` is set: give the `username` it belongs to")
        if self.ca_file is not None and not self.tls:
            raise ValueError(f"`ca_file` needs a TLS broker URL (mqtts://), not {self.url!r}")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("`reconnect_max_s` must be at least `reconnect_min_s`")
        return self

    def wire(self, topic: str) -> str:
        """`topic` as it is on the broker: with `dots_as_levels`, every "." as "/" (what
        `MqttSession` does to the topics it publishes; filters are given in this form)."""
        return topic.replace(".", "/") if self.dots_as_levels else topic

    @property
    def events_filter(self) -> str:
        """The subscription to every agent's events: shared unless `shared_subscription` is
        off."""
        events = self.wire(f"{self.topic_prefix}/+/+/events/#")
        return f"$share/{self.share_group}/{events}" if self.shared_subscription else events


class DatabaseSection(BaseModel):
    """The PostgreSQL database the events land in (`hub.store`)."""

    model_config = STRICT

    url: Annotated[str, Field(pattern=r"^postgres(ql)?://")]
    pool_size: Annotated[int, Field(ge=1, le=64)] = 4
    # Daily partitions of `events` made ahead of time (today and this many days after).
    partition_days_ahead: Annotated[int, Field(ge=1, le=60)] = 3
    command_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0


class LandingSection(BaseModel):
    """How messages are batched into one transaction (`hub.ingest`)."""

    model_config = STRICT

    batch_max_messages: Annotated[int, Field(ge=1, le=10_000)] = 500
    # A batch closes once its messages hold this many payload bytes (about 8,000 telemetry
    # events as msgpack batches): smaller batches overlap, so the agents' in-flight messages
    # are acknowledged sooner and the hub lands more per second.
    batch_max_bytes: ByteSize = 2 * 2**20
    batch_max_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 50.0
    # Seconds before the first retry when PostgreSQL fails a batch (doubling up to 30 s); the
    # batch stays unacknowledged meanwhile.
    retry_min_s: Annotated[float, Field(gt=0, le=60)] = 0.5


class GapsSection(BaseModel):
    """Gap detection and signed replay requests (`hub.gaps`)."""

    model_config = STRICT

    enabled: bool = True
    check_interval_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    # A gap open this long gets a replay request for exactly its seq range.
    open_after_s: Annotated[float, Field(ge=0, le=7 * 86_400)] = 60.0
    # Backoff between requests for one gap: from retry_min_s, doubling, up to retry_max_s.
    retry_min_s: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    retry_max_s: Annotated[float, Field(gt=0, le=7 * 86_400)] = 1800.0
    # Requests per gap; past them the gap stays open, marked `exhausted`, and is not asked for
    # again (an operator looks at it).
    max_requests: Annotated[int, Field(ge=1, le=1000)] = 8
    # The most seqs one request names (a longer gap is asked for in parts, first part first).
    max_seqs_per_request: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    # Gaps of one agent at most this many held seqs apart are asked for in one request (the
    # held ones come again, as no-ops), so that a burst of small gaps is one request, not
    # hundreds queued at the agent.
    merge_within_seqs: Annotated[int, Field(ge=0, le=1_000_000)] = 1000
    # Seconds to wait for the agent's answer to a request.
    reply_timeout_s: Annotated[float, Field(gt=0, le=600)] = 60.0
    # The hub's Ed25519 private key (`edge-agent keys create`); the agents list its public
    # key under [commands.keys] and allow it for `replay`.
    key_file: Path | None = None
    # The key's name in the agents' [commands.keys] (default: the file name up to its dot).
    key_id: str | None = None

    _paths = field_validator("key_file")(_relative_to_config)

    @field_validator("key_id")
    @classmethod
    def _key_id(cls, key_id: str | None) -> str | None:
        if key_id is not None and not _KEY_ID.match(key_id):
            raise ValueError("letters, digits, '_', '.', '-'; 1 to 64, starting with a letter")
        return key_id

    @model_validator(mode="after")
    def _consistent(self) -> GapsSection:
        if self.enabled and self.key_file is None:
            raise ValueError(
                "gap healing signs replay requests: give the hub's private key as `key_file` "
                "(edge-agent keys create), or set `enabled = false`"
            )
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("`retry_max_s` must be at least `retry_min_s`")
        return self


class StatusSection(BaseModel):
    """The agents' retained statuses (`hub.status`): the latest per agent, and samples of it
    for the backlog-over-time plots."""

    model_config = STRICT

    # Subscribe to `{prefix}/+/+/status` (every hub process sees every status).
    enabled: bool = True
    # One sample per agent at most this often (status_samples; the agents publish every
    # `[hub] status_interval_s`, 30 s by default, and on every change).
    sample_interval_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    # Samples older than this are deleted.
    keep_hours: Annotated[float, Field(gt=0, le=24 * 90)] = 48.0


class DashboardSection(BaseModel):
    """The web dashboard, `/api/fleet` and `/metrics` (`hub.web`)."""

    model_config = STRICT

    enabled: bool = True
    # Loopback by default: put a reverse proxy (TLS) in front to serve it further.
    host: Annotated[str, Field(min_length=1, max_length=255)] = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65_535)] = 8780  # 0: any free port (logged)
    # An agent with no event landed for longer is flagged `stale`.
    stale_after_s: Annotated[float, Field(gt=0, le=30 * 86_400)] = 300.0
    # An agent whose oldest pending event (its status) is older is flagged `behind`.
    behind_s: Annotated[float, Field(gt=0, le=30 * 86_400)] = 300.0
    # The pages reload themselves this often.
    refresh_s: Annotated[float, Field(ge=1, le=3600)] = 10.0
    # The plots of an agent's page cover this many hours.
    history_hours: Annotated[float, Field(gt=0, le=24 * 90)] = 6.0
    # HTTP basic auth on every path (optional): both or neither.
    username: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    password_file: Path | None = None

    _paths = field_validator("password_file")(_relative_to_config)

    @model_validator(mode="after")
    def _consistent(self) -> DashboardSection:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("basic auth needs both `username` and `password_file`")
        return self


class HubConfig(BaseModel):
    model_config = STRICT

    broker: BrokerSection
    database: DatabaseSection
    landing: LandingSection = LandingSection()
    gaps: GapsSection = GapsSection(enabled=False)
    status: StatusSection = StatusSection()
    dashboard: DashboardSection = DashboardSection(enabled=False)


def load_hub_config(path: Path) -> HubConfig:
    """Read and check `hub.toml`; `config.loader.ConfigError` lists every problem, located."""
    return load_model(path, HubConfig)
