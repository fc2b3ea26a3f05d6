"""What the status publisher and the command handlers may see and do of a running agent.

`agent.link.status` and `agent.link.commands` talk to an `AgentView`, not to the runtime: `Agent`
(`agent.runtime`) implements it, and the runtime imports them, never the other way round, so
the import graph has no cycle (`tests/unit/test_architecture.py` fails on any). A test or a
tool can hand them anything shaped like this.

The view reads the state the agent already keeps (its config, counters, the session's link,
each source's runner, the per-signal diagnostics) and exposes the few things a command may
do: replay, retry dead letters, reload, pause and resume a source, replace the command
settings, ask for a status now. Two attributes are written: `config` and
`config_fingerprint`, by a reload that applies `[commands]` in place
(`agent.link.commands.reload_config`). Everything else is read-only here.

The parts that live in `agent.link.status` and `agent.link.commands` themselves (the
publisher's rate, the server's counters) appear as the small protocols below, so this module
imports neither.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agent.flow.mapping import Mapper
    from agent.flow.pipeline import Pipeline
    from agent.flow.signal_values import LastValues
    from agent.link.forwarder import Forwarder
    from agent.link.mqtt_session import MqttSession
    from agent.link.signing import RequestVerifier
    from buffer.base import Buffer
    from config.schema import AgentConfig, CommandsSection
    from connectors.base import Connector

__all__ = [
    "AgentView",
    "CommandCountersView",
    "CommandsView",
    "EventRateView",
    "ReloadResult",
    "SourceView",
    "StatusView",
]


class SourceView(Protocol):
    """One source's runner (`agent.runtime.SourceRunner`)."""

    @property
    def connector(self) -> Connector: ...

    @property
    def state(self) -> str:
        """`starting`, `running`, `retrying`, `paused` or `failed`."""
        ...

    @property
    def starts_total(self) -> int:
        """Times the connector was started (the first start and every reconnect)."""
        ...

    @property
    def failures_total(self) -> int:
        """Times the connector failed (lost its session, raised) and was retried or stopped."""
        ...

    async def pause(self) -> bool:
        """Stop the connector until `resume()`; False if it was paused already."""
        ...

    def resume(self) -> bool:
        """Start it again after `pause()`; False if it was not paused."""
        ...


class EventRateView(Protocol):
    def per_second(self) -> float:
        """Events forwarded per second over the last minute."""
        ...


class StatusView(Protocol):
    """The retained status publisher (`agent.link.status.StatusPublisher`)."""

    @property
    def rate(self) -> EventRateView: ...

    def changed(self) -> None:
        """Something worth telling the hub now happened: publish soon."""
        ...


class CommandCountersView(Protocol):
    def as_dict(self) -> dict[str, dict[str, int]]: ...


class CommandsView(Protocol):
    """The command server (`agent.link.commands.CommandServer`)."""

    @property
    def counters(self) -> CommandCountersView: ...

    def replace_settings(self, settings: CommandsSection, verifier: RequestVerifier) -> None: ...


class ReloadResult(Protocol):
    """The answer to a reload request (`agent.link.commands.ReloadOutcome`)."""

    @property
    def ok(self) -> bool: ...

    @property
    def message(self) -> str: ...


class AgentView(Protocol):
    """A running agent as status and commands see it; see the module docstring."""

    config: AgentConfig
    config_fingerprint: str

    @property
    def config_path(self) -> Path | None:
        """The config file the agent was started from; None: reload cannot re-read it."""
        ...

    @property
    def reload_hook(self) -> Callable[[], None] | None:
        """The process's reload path (the one SIGHUP takes); None: reload applies in place."""
        ...

    @property
    def started_at(self) -> float:
        """Unix time the agent started."""
        ...

    @property
    def topic_root(self) -> str:
        """`{prefix}/{site}/{agent}`."""
        ...

    @property
    def status_topic(self) -> str: ...

    @property
    def buffer(self) -> Buffer: ...

    @property
    def session(self) -> MqttSession: ...

    @property
    def forwarder(self) -> Forwarder: ...

    @property
    def pipeline(self) -> Pipeline: ...

    @property
    def mapper(self) -> Mapper: ...

    @property
    def sources(self) -> Sequence[SourceView]: ...

    @property
    def signals(self) -> LastValues:
        """The newest reading of each signal and its counts (`agent.flow.signal_values`)."""
        ...

    @property
    def status(self) -> StatusView: ...

    @property
    def commands(self) -> CommandsView: ...

    async def replay(self, *, since: float, until: float, types: Sequence[str] | None) -> int:
        """Send delivered events accepted in [since, until) again; ValueError if it cannot."""
        ...

    async def replay_seqs(self, first: int, last: int) -> dict[str, Any]:
        """Send the retained delivered events of seqs `first`..`last` again; the answer says
        what was sent and what the buffer holds of the range otherwise; ValueError if it
        cannot."""
        ...

    async def retry_dead_letters(self, seqs: Sequence[int]) -> tuple[int, int]:
        """Put the dead letters with these seqs back in the queue and have them forwarded;
        (moved back, dropped because their id is held again)."""
        ...

    async def request_reload(self) -> ReloadResult:
        """Re-read the config file; an invalid one is refused and the running config kept."""
        ...
