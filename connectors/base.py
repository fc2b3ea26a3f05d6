"""The connector contract: what every source plugin implements and what the runtime promises it.

A connector knows one protocol and nothing about events, buffers or MQTT. It turns what its
peer says into `Reading`s and hands them to the runtime through `emit`.

Lifecycle (owned by the runtime, `agent.runtime.SourceRunner`):

1. The runtime constructs the connector from its validated config (its row in
   `config.source_types`).
2. It calls `run(emit)` and awaits it. `run` connects, subscribes or polls, and calls
   `await emit(readings)` for each batch, for as long as it can. `emit` returns once the
   readings are handed over; it may block to apply backpressure, and a connector must not
   work around that (the block is how a full buffer slows a source down). What it returns is
   a future that completes once those readings (and every one emitted before them) are
   committed to the buffer, or fails if the agent stopped before it could commit them; a
   connector that must not let go of its input before that (a file it moves away) awaits it,
   the others ignore it. `None`: the caller cannot tell (a test's emit).
3. `run` ends by raising:
   - `SourceUnavailable`: transient (peer down, connection lost, timeout). The runtime logs it
     once, waits with capped exponential backoff and jitter (`reconnect_min_s` ..
     `reconnect_max_s` of its `ConnectorSettings`), and calls `run` again.
   - `SourceConfigError`: this source cannot work as configured (node does not exist, bad
     endpoint). The runtime stops this source, reports it in status and keeps the others.
   - `asyncio.CancelledError`: the runtime is shutting down; `run` closes its session within
     the grace period and re-raises.
   Any other exception is a bug: the runtime logs it with its traceback and treats it as
   transient, so one faulty plugin never takes the agent down.
4. `health` is read by status reporting at any time; the connector keeps it current
   (`connected` true while it holds a session, false once `run` ended).

Readings carry the source's own timestamp and quality. The same source fact (same source,
signal, source timestamp and value) must always produce an equal `Reading`, because event ids
are derived from it and duplicates are dropped by id downstream.

A probe (optional) answers `edge-agent check-config --connect` before anything is restarted:
it asks the peer what the source will need of it (does the node exist, can the port be bound,
is the table there) and returns `ProbeResult`s; it raises `SourceUnavailable` or
`SourceConfigError` when it cannot ask at all. It never reads or moves data.

Every clause above is tested for every connector by tests/conformance/ (one peer fixture per
source type).

Adding a source type (a Modbus TCP source, say; docs/developer-guide.md works it through):

1. One folder, `connectors/modbus/`: `config.py` (`ModbusSettings(ConnectorSettings)`, with
   its signals' `ModbusSignalSettings(SignalSettings)`), `connector.py` (`ModbusConnector`,
   keeping this contract), optionally `probe.py`, and `sample.toml` (every key, annotated;
   tests/unit/test_samples.py loads it).
2. One registry row in `config.source_types.SOURCE_TYPES`:
   `"modbus": signal_type("modbus", ModbusSettings, ModbusSignalSettings, _build_modbus,
   _probe_modbus)`, its builder and probe two small functions beside it that import the
   connector's module only when called (an agent without a Modbus source never imports its
   client library). The row makes the `[[sources]]` model (the settings with `name`, `type`
   and the mapping keys of each signal) and the config's `Source` union takes it from there;
   a type with rules of its own writes its model in `config.source_models` instead.
3. One peer fixture in tests/conformance/peers.py: a real peer (a Modbus server on a loopback
   port), settings that work, settings that cannot, a way to take the peer down and to make it
   report the same fact twice. The conformance suite then runs every clause against it.
"""

from __future__ import annotations

import enum
import errno
from asyncio import Future
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Value = bool | int | float | str | None

# The errors of a write that a person can clear without touching the agent: the disk (or the
# quota) is full, the process ran out of descriptors, the device failed or was remounted
# read-only. Whoever writes treats them as the short-disk condition: pause that write, say so
# once, retry with backoff, resume by itself. Anything else from the OS keeps its own meaning.
SHORT_DISK_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.EIO, errno.EROFS}
)


def is_short_disk(error: BaseException) -> bool:
    """Whether `error` is the short-disk condition (`SHORT_DISK_ERRNOS`)."""
    return isinstance(error, OSError) and error.errno in SHORT_DISK_ERRNOS


class Quality(enum.StrEnum):
    """OPC UA style quality class of a value."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a business record could not be taken, as its connector saw it (issue 16): the
    mapping makes a `record.rejected` event of a reading that carries one.

    `reason` names the column and what was expected, never quoting the record; `location`
    says where it is (`<file>:<line>`, `<route> item <n>`, `<table> row <cursor>`); `keys`
    are the business fields that could be read (event field -> value); `raw` is the record's
    bounded, redacted copy (`connectors.records.raw_copy`). `set_aside`: the record also goes
    to the buffer's dead letters (an interface with no channel back: a table); a file row has
    its `rejected/` report, a webhook object its 400 answer."""

    interface: str  # "file" | "webhook" | "table"
    reason: str
    location: str
    column: str | None = None
    keys: tuple[tuple[str, Value], ...] = ()
    raw: str | None = None
    raw_truncated: bool = False
    stage: str = "read"  # "read" | "validate"
    set_aside: bool = True


@dataclass(frozen=True, slots=True, init=False)
class Reading:
    """One value of one signal at one moment, as the source reported it.

    `signal` is the source's own address of the value (an OPC UA NodeId string, a file column).
    `timestamp` is timezone-aware (UTC) and comes from the source when it has one.
    `status` is the source's own status name when it is not plainly good (e.g.
    "BadCommunicationError"), so the hub can tell why a value is bad.
    """

    source: str
    signal: str
    value: Value
    timestamp: datetime
    quality: Quality = Quality.GOOD
    status: str | None = None
    # Named details of a structured fact (an OPC UA alarm: severity, condition, active, ...).
    attributes: tuple[tuple[str, Value], ...] = ()
    # Read after the fact from the source's history (OPC UA HistoryRead) to fill a gap; not
    # part of the fact, so a backfilled reading equals the live one it stands for.
    backfilled: bool = field(default=False, compare=False)
    # The three times of the value, kept whatever `timestamp` was chosen from: when the device
    # sampled it, when the server saw it (None when the source does not say) and when the agent
    # received it. Not part of the fact.
    source_timestamp: datetime | None = field(default=None, compare=False)
    server_timestamp: datetime | None = field(default=None, compare=False)
    received_at: datetime | None = field(default=None, compare=False)
    # Source state to commit with this reading's events in the same buffer transaction
    # (key, value; None deletes the key): a database cursor, an idempotency key answered.
    # Keys start with the source's name and a slash. Not part of the fact.
    state: tuple[tuple[str, str | None], ...] = field(default=(), compare=False)
    # The W3C trace context the fact came with, as received and not validated (a webhook
    # request's `traceparent` and `tracestate` headers): (header name, value). The mapping
    # continues a valid one and ignores the rest. Not part of the fact.
    trace: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    # A record its connector could not take (quality bad): why, where, what could be read.
    # Derived from the record (its key is `value`), so not part of the fact's identity.
    rejection: Rejection | None = field(default=None, compare=False)

    def __init__(
        self,
        source: str,
        signal: str,
        value: Value,
        timestamp: datetime,
        quality: Quality = Quality.GOOD,
        status: str | None = None,
        attributes: tuple[tuple[str, Value], ...] = (),
        backfilled: bool = False,
        source_timestamp: datetime | None = None,
        server_timestamp: datetime | None = None,
        received_at: datetime | None = None,
        state: tuple[tuple[str, str | None], ...] = (),
        trace: tuple[tuple[str, str], ...] = (),
        rejection: Rejection | None = None,
    ) -> None:
        # The dataclass's own __init__, in a third of its time (one per value, on the hot
        # path): a frozen dataclass sets each field through `object.__setattr__`; the slots'
        # own setters do the same directly. Same fields, order and defaults (a test holds them
        # to the fields).
        (
            set_source, set_signal, set_value, set_timestamp, set_quality, set_status,
            set_attributes, set_backfilled, set_source_timestamp, set_server_timestamp,
            set_received_at, set_state, set_trace, set_rejection,
        ) = _READING_SETTERS
        set_source(self, source)
        set_signal(self, signal)
        set_value(self, value)
        set_timestamp(self, timestamp)
        set_quality(self, quality)
        set_status(self, status)
        set_attributes(self, attributes)
        set_backfilled(self, backfilled)
        set_source_timestamp(self, source_timestamp)
        set_server_timestamp(self, server_timestamp)
        set_received_at(self, received_at)
        set_state(self, state)
        set_trace(self, trace)
        set_rejection(self, rejection)


_READING_SETTERS: tuple[Callable[[Reading, Any], None], ...] = tuple(
    getattr(Reading, each.name).__set__ for each in fields(Reading)
)


# Hand readings over; the result is their commit future (see the module docstring).
Emit = Callable[[Sequence[Reading]], Awaitable["Future[None] | None"]]


@dataclass(slots=True)
class SourceHealth:
    """What status reporting shows about one source; the connector keeps it current."""

    connected: bool = False
    # When the agent last received a value or record from the source (UTC): what staleness
    # monitoring watches. Never a record's business time: an MES record may be back-dated by
    # hours (a late shift report, a re-export) and still be fresh.
    last_value_at: datetime | None = None
    # Record sources only (MES files, webhooks, interface tables): the business time (its
    # time column) of the latest record received, kept apart from `last_value_at`.
    last_business_time: datetime | None = None
    last_error: str | None = None
    readings_total: int = 0
    signal_errors: dict[str, str] = field(default_factory=dict)
    # The last connection gap: when the session dropped and when it came back (UTC).
    disconnected_at: datetime | None = None
    reconnected_at: datetime | None = None
    # Things an operator should look at that do not stop the source (certificate expiry,
    # clock skew, no history on the server), keyed by topic.
    notices: dict[str, str] = field(default_factory=dict)
    # What a kind of source counts besides readings (webhook posts accepted/rejected/busy,
    # files processed/rejected, unreadable rows), name → total since start; shown in status.
    counters: dict[str, int] = field(default_factory=dict)


class Connector(Protocol):
    """A source plugin. See the module docstring for the lifecycle contract."""

    name: str
    health: SourceHealth

    async def run(self, emit: Emit) -> None:
        """Read from the peer and emit readings until cancelled or an error ends it."""
        ...


class SourceHost(Protocol):
    """What the agent offers the connectors that need more than `emit` (the MES webhook and
    interface table): the source state they committed with their readings, and whether the
    buffer is applying backpressure right now (so a server can answer "busy" at once)."""

    async def source_state(self, prefix: str) -> dict[str, str]:
        """Committed state entries (`Reading.state`) whose key starts with `prefix`."""
        ...

    async def drop_source_state(self, prefix: str, older_than: float) -> int:
        """Forget entries under `prefix` last written before `older_than` (epoch seconds)."""
        ...

    def backpressure(self) -> bool:
        """True while the buffer holds readings back (full, or the queue nearly so)."""
        ...

    def check_record(self, reading: Reading) -> tuple[str, list[tuple[str, str]]]:
        """The id of the event a record reading will become, and the (field, message)
        problems that keep it from becoming one (empty: it is valid)."""
        ...


class ConnectorError(Exception):
    """Base of every error a connector raises on purpose."""


class SourceUnavailable(ConnectorError):
    """Transient: the peer cannot be reached or dropped us. The runtime retries with backoff."""


class SourceConfigError(ConnectorError):
    """Permanent: the source cannot work as configured. The runtime stops this source only."""


# A source's name: one MQTT topic level and part of a CloudEvents source (the pattern of
# `config.schema.TopicLevel`).
SourceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
# Seconds before the first retry after `SourceUnavailable`, and the most the wait grows to.
ReconnectMinS = Annotated[float, Field(gt=0, le=300)]
ReconnectMaxS = Annotated[float, Field(gt=0, le=3600)]


class ConnectorSettings(BaseModel):
    """The base of every connector's settings model (`OpcUaSettings`, `MesSqlSettings`, ...).

    It brings what the runtime, not the connector, reads: the reconnect backoff bounds
    (`reconnect_min_s` ≤ `reconnect_max_s`; a type may declare its own defaults, with the same
    constraint types), and `with_base_dir`, which the loader calls on every source: a type
    whose settings name files overrides it to make them absolute. Unknown keys are refused and
    a model is frozen. A connector's own tests build it without a name (`SourceSettings`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reconnect_min_s: ReconnectMinS = 1.0
    reconnect_max_s: ReconnectMaxS = 30.0

    @model_validator(mode="after")
    def _reconnect_range(self) -> Self:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError("reconnect_min_s must not be larger than reconnect_max_s")
        return self

    def with_base_dir(self, base: Path) -> Self:
        """The same settings with relative file paths taken from `base` (the config file's
        folder); these name no files."""
        return self


class SourceSettings(ConnectorSettings):
    """One `[[sources]]` entry: a connector's settings with its `name` (unique in a config)
    and its `type` tag, which a type's model narrows to its own `Literal`."""

    name: SourceName
    type: str


class SignalSettings(BaseModel):
    """The base of a signal of a source that has signals: `node`, the signal's address as the
    operator wrote it, which its readings carry as `Reading.signal`. A type narrows the field
    (its syntax, its length) where it has rules of its own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node: Annotated[str, Field(min_length=1, description="the signal's address")]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One thing a probe checked on a source's peer (see the module docstring): `subject`
    names it (an address, the folder, the listen address); `problem` is what is wrong (None:
    fine) and `seen` what the peer showed (an OPC UA node's id, class and data type)."""

    subject: str
    problem: str | None = None
    seen: str | None = None
