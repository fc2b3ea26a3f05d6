"""Runtime: wires sources → pipeline → buffer → forwarder → hub, and owns their lifecycle.

Start order (sinks first, sources last, like Telegraf): open the buffer (a corrupt or locked
buffer stops the agent before anything connects; a state dir that is full, read-only or out of
descriptors, the short-disk condition of `connectors.base.is_short_disk`, or a buffer that is
unavailable is waited for: logged once, retried with capped backoff, the start goes on by
itself once it clears), start the MQTT session (its connection is
kept up in the background; the hub may be down and the agent still runs), start the forwarder,
the pipeline, the status publisher (and `[web]`'s server, `agent.web`), then the sources.

Stop order (the reverse, each step bounded by `agent.shutdown_grace_s`):
1. sources are cancelled: connectors close their sessions;
2. the pipeline commits every reading still queued (nothing handed over is lost);
3. the forwarder stops leasing and waits for in-flight PUBACKs, then commits their acks;
4. the session publishes the retained `offline` status and disconnects cleanly (so the broker
   does not publish the will);
5. the buffer is closed (WAL checkpointed by SQLite on close).

A reload (`agent.service.daemon`) runs steps 1-4 (status `offline`, reason `reloading`), keeps the
buffer open and runs a new `Agent` built from the new config on it. Building an `Agent` starts
nothing; it reads the hub's secrets and TLS files (`agent.service.credentials`), so a bad one fails
there, before the running generation is touched.

Each source runs in a `SourceRunner`, which owns reconnects: the jittered backoff of
`connectors.backoff`, state changes logged once ("unavailable", "back after 42 s"), a config error
stops that source only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from paho.mqtt.properties import Properties

from agent import store
from agent.flow.dual_publish import DualPublisher
from agent.flow.mapping import Mapper
from agent.flow.mapping_state import COUNTERS_FILE, CounterBaselines
from agent.flow.pipeline import Pipeline
from agent.flow.signal_values import LastValues
from agent.link import sparkplug
from agent.link.commands import (
    CommandServer,
    ReloadOutcome,
    build_verifier,
    reload_config,
)
from agent.link.forwarder import Forwarder
from agent.link.hub_session import hub_session
from agent.link.mqtt_session import WillMessage
from agent.link.replay import replay_retained
from agent.link.status import CONTENT_TYPE as STATUS_CONTENT_TYPE
from agent.link.status import StatusPublisher, config_fingerprint, offline_payload
from agent.service import descriptors
from agent.web import WebServer
from buffer.base import Buffer, BufferUnavailable
from config.schema import AgentConfig
from config.source_models import MesHttpSource
from config.source_types import Source, build_connector
from connectors.backoff import Backoff
from connectors.base import (
    Connector,
    Emit,
    Reading,
    SourceConfigError,
    SourceUnavailable,
    is_short_disk,
)
from events.formats import FORMATS
from events.wire import AgentIdentity, IdentityHistory

_log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 60.0
# Waiting at start for a state dir that cannot be written (see the module docstring).
_STORE_RETRY_MIN_S = 0.5
_STORE_RETRY_MAX_S = 5.0


class AgentHost:
    """The agent as the `connectors.base.SourceHost` of its connectors: the buffer's source
    state and the pipeline's backpressure."""

    def __init__(self, buffer: Buffer, pipeline: Pipeline, mapper: Mapper) -> None:
        self._buffer = buffer
        self._pipeline = pipeline
        self._mapper = mapper

    async def source_state(self, prefix: str) -> dict[str, str]:
        return await self._buffer.source_state(prefix)

    async def drop_source_state(self, prefix: str, older_than: float) -> int:
        return await self._buffer.drop_source_state(prefix, older_than)

    def backpressure(self) -> bool:
        return self._pipeline.backpressure()

    def check_record(self, reading: Reading) -> tuple[str, list[tuple[str, str]]]:
        return self._mapper.check_record(reading)


def _within_descriptor_limit(sources: Sequence[Source]) -> list[Source]:
    """The sources, the webhooks' `max_connections` lowered to fit the descriptor limit
    (raised to the hard limit first; `agent.service.descriptors`)."""
    soft_limit = descriptors.raise_soft_limit()
    wanted = {s.name: s.max_connections for s in sources if isinstance(s, MesHttpSource)}
    caps = descriptors.connection_caps(wanted, soft_limit)
    return [
        source.model_copy(update={"max_connections": caps[source.name]})
        if isinstance(source, MesHttpSource) and caps[source.name] != source.max_connections
        else source
        for source in sources
    ]


class SourceRunner:
    """Runs one connector for the agent's lifetime; see the module docstring."""

    def __init__(
        self, connector: Connector, *, backoff_min_s: float = 0.5, backoff_max_s: float = 30.0
    ) -> None:
        self.connector = connector
        self.state = "starting"
        # Jittered, with its own generator: agents restarted together (a plant power cycle)
        # still spread their reconnects instead of hitting a recovering server in lockstep.
        self._backoff = Backoff(backoff_min_s, max(backoff_max_s, backoff_min_s))
        # Remote pause/resume (agent.commands): cleared while paused.
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._connector_task: asyncio.Task[None] | None = None
        # For `/metrics` (agent.web): connector starts (first and reconnects), and failures.
        self.starts_total = 0
        self.failures_total = 0

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    async def pause(self, grace_s: float = 10.0) -> bool:
        """Stop the connector (it closes its session) until `resume()`; False if it was
        already paused. Readings it handed over before are kept."""
        if self.paused:
            return False
        self._resumed.clear()
        self.state = "paused"
        task = self._connector_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=grace_s)
        _log.info("source=%s paused", self.connector.name)
        return True

    def resume(self) -> bool:
        """Start the connector again after `pause()`; False if it was not paused."""
        if not self.paused:
            return False
        self._resumed.set()
        _log.info("source=%s resumed", self.connector.name)
        return True

    async def _run_connector(self, emit: Emit) -> bool:
        """Run the connector in its own task (so `pause` can stop it); False if paused."""
        name = f"connector-{self.connector.name}"
        self.starts_total += 1
        task = asyncio.create_task(self.connector.run(emit), name=name)
        self._connector_task = task
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self.paused and (current is None or current.cancelling() == 0):
                return False  # pause() cancelled the connector, not the agent's stop
            raise
        finally:
            self._connector_task = None
        return True

    async def run(self, emit: Emit) -> None:
        name = self.connector.name
        down_since: float | None = None
        while True:
            if self.paused:
                self.state = "paused"
                await self._resumed.wait()
                self._backoff.reset()
                down_since = None
            started = time.monotonic()
            try:
                self.state = "running"
                if not await self._run_connector(emit):
                    continue
                raise SourceUnavailable("connector returned")
            except SourceConfigError as error:
                self.state = "failed"
                self.failures_total += 1
                self.connector.health.last_error = str(error)
                _log.error("source=%s stopped: %s (fix the config and restart)", name, error)
                return
            except SourceUnavailable as error:
                reason = str(error)
            except Exception as error:  # a bug in a connector must not stop the agent
                _log.exception("source=%s failed unexpectedly; retrying", name)
                reason = f"{type(error).__name__}: {error}"
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                # The agent is stopping this runner, but the connector turned the cancellation
                # into an error (asyncua can); stop instead of retrying forever.
                raise asyncio.CancelledError
            self.state = "retrying"
            self.failures_total += 1
            self.connector.health.last_error = reason
            if time.monotonic() - started > 30.0:
                self._backoff.reset()  # it ran for a while: start over
                if down_since is not None:
                    _log.info("source=%s was back after %.0f s", name, started - down_since)
                down_since = None
            if down_since is None:
                down_since = time.monotonic()
                _log.warning("source=%s unavailable: %s; retrying with backoff", name, reason)
            await asyncio.sleep(self._backoff.next_s())


class Agent:
    """One running agent. Build it with `Agent.open(config)`.

    It is the `agent.view.AgentView` that its status publisher and command server see: they
    are handed `self` and know it only through that protocol (no import back to here)."""

    def __init__(
        self, config: AgentConfig, buffer: Buffer, config_path: Path | None = None
    ) -> None:
        self.config = config
        self.buffer = buffer
        self.started_at = time.time()
        self.stop_reason = "stopped"  # the `offline` status reason; "reloading" on a reload
        site, agent_id = config.agent.site, config.agent.id
        self.topic_root = f"{config.hub.topic_prefix}/{site}/{agent_id}"
        self.status_topic = f"{self.topic_root}/status"
        hub = config.hub
        # CredentialError: a config error, says which key (agent.hub_session reads them now).
        self.session = hub_session(
            hub,
            client_id=config.client_id,
            will=WillMessage(
                topic=self.status_topic,
                payload=offline_payload(site, agent_id, "connection lost"),
                retain=True,
                content_type=STATUS_CONTENT_TYPE,
            ),
            on_connected=self._publish_status,
            on_message=self._on_message,
        )
        self.forwarder = Forwarder(
            buffer,
            self.session,
            topic_base=f"{self.topic_root}/events",  # identity: set by `run` from the buffer
            batch_max_events=hub.batch_max_events,
            batch_max_wait_s=hub.batch_max_wait_ms / 1000,
            max_inflight=hub.max_inflight,
            pacing=store.pacing(config),
            wire_format=FORMATS[hub.format],
        )
        # `[sparkplug] enabled`: the forwarder's output and the session's will (NDEATH).
        self.sparkplug = sparkplug.attach(config, self.session, self.forwarder)
        self.mapper = Mapper.from_config(config)
        baselines = CounterBaselines(config.agent.state_dir / COUNTERS_FILE, self.mapper)
        baselines.restore()  # a small JSON file, read once before anything runs
        self.pipeline = Pipeline(
            self.mapper,
            buffer,
            site=site,
            agent=agent_id,
            on_accepted=self.forwarder.wake,
            priorities=store.priorities(config),
            overflow_priority=store.overflow_priority(config),
            baselines=baselines,
            dual_publish=DualPublisher(config.contracts.dual_publish_until),
        )
        host = AgentHost(buffer, self.pipeline, self.mapper)
        self.sources = [
            SourceRunner(
                build_connector(source, host),
                backoff_min_s=source.reconnect_min_s,
                backoff_max_s=source.reconnect_max_s,
            )
            for source in _within_descriptor_limit(config.sources)
        ]
        # Remote status and commands (agent.status, agent.commands).
        self.config_path = config_path
        self.config_fingerprint = config_fingerprint(config)
        self.status = StatusPublisher(self, interval_s=hub.status_interval_s)
        self.commands = CommandServer(self, config.commands, build_verifier(config))
        # `[web]`: /metrics and the status page (agent.web); reads its TLS and password files
        # now, so a bad one fails here like the hub's (CredentialError).
        self.web = WebServer(self, config.web)
        # Per-signal diagnostics (agent.flow.signal_values): one store, filled from the sources'
        # emit, read by both status documents, the status page and nothing on the event path.
        self.signals = LastValues()
        self.web.values = self.signals
        # The process's reload path (`AgentService.request_reload`, the same one SIGHUP takes);
        # the remote `reload` command calls it once the file validated. None: in-place fallback.
        self.reload_hook: Callable[[], None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        config: AgentConfig,
        config_path: Path | None = None,
        *,
        on_wait: Callable[[str], None] = lambda reason: None,
    ) -> AsyncIterator[Agent]:
        """Hold the state dir, open the buffer and build the first generation. While the state
        dir cannot be written (module docstring) it waits, calling `on_wait(reason)` before
        each retry (the service tells systemd)."""
        # The state dir lock first: a second agent is refused before it touches the buffer.
        async with _store_when_usable(config, on_wait) as buffer:
            yield cls(config, buffer, config_path)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down in order (module docstring)."""
        grace = self.config.agent.shutdown_grace_s
        # Before anything is accepted (and after the previous generation stopped accepting):
        # from here on, records are this site's and agent's; older ones keep theirs.
        identities = await self._note_identity(stop)
        if identities is None:
            return  # stopped while the buffer could not record it: nothing was started
        self.forwarder.identity = IdentityHistory.of(identities)
        async with self.session, asyncio.TaskGroup() as group:
            if self.sparkplug is not None:
                await self.sparkplug.subscribe()  # NCMD and STATE, before anything is sent
            forwarder = group.create_task(self.forwarder.run(), name="forwarder")
            pipeline = group.create_task(self.pipeline.run(), name="pipeline")
            status = group.create_task(self.status.run(), name="status")
            web = group.create_task(self.web.run(), name="web")  # agent.web; off: returns
            commands = group.create_task(self._serve_commands(), name="commands")
            housekeeping = group.create_task(self._housekeeping_loop(), name="housekeeping")
            sources = [
                group.create_task(
                    runner.run(self.signals.tap(self.pipeline.emit)),
                    name=f"source-{runner.connector.name}",
                )
                for runner in self.sources
            ]
            _log.info(
                "agent %s/%s running: %d source(s), hub %s",
                self.config.agent.site, self.config.agent.id, len(sources), self.config.hub.url,
            )
            await stop.wait()
            _log.info("stopping")
            await _cancel([commands], grace)
            await _cancel(sources, grace)
            await self.pipeline.stop(pipeline, grace)
            await self.forwarder.drain(grace)
            # The forwarder has returned by now unless the grace period ran out.
            await _cancel([forwarder, status, housekeeping, web], grace)
            await self.session.close(
                final=[
                    (
                        self.status_topic,
                        offline_payload(
                            self.config.agent.site, self.config.agent.id, self.stop_reason
                        ),
                        True,
                        STATUS_CONTENT_TYPE,
                    ),
                    *(self.sparkplug.final_messages() if self.sparkplug is not None else ()),
                ]
            )
        _log.info("stopped")

    async def _note_identity(self, stop: asyncio.Event) -> list[tuple[int, str, str]] | None:
        """`note_identity`, retried while the buffer cannot write (a short disk at start);
        None if `stop` is set first."""
        backoff = Backoff(_STORE_RETRY_MIN_S, _STORE_RETRY_MAX_S, jitter=False)
        while not stop.is_set():
            try:
                return await self.buffer.note_identity(
                    self.config.agent.site, self.config.agent.id
                )
            except BufferUnavailable as error:
                if backoff.attempts == 0:
                    _log.error("cannot record the agent identity yet: %s; retrying", error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), backoff.next_s())
        return None

    async def _publish_status(self) -> None:
        await self.status.publish()

    def _on_message(self, topic: str, payload: bytes, properties: Properties | None) -> None:
        if self.sparkplug is not None and self.sparkplug.offer(topic, payload):
            return
        self.commands.offer(topic, payload, properties)

    async def _serve_commands(self) -> None:
        if not self.config.commands.enabled:
            return
        await self.session.subscribe(self.commands.topic_filter, qos=1)
        await self.commands.run()

    async def replay(self, *, since: float, until: float, types: Sequence[str] | None) -> int:
        """Send delivered events accepted in [since, until) again (remote `replay`).

        The one replay (`agent.link.replay`, as `edge-agent buffer replay`), on this agent's
        session, in its hub format, one message in flight at a time (the forwarder holds the
        rest of the broker's Receive Maximum), each PUBACK waited for at most 10 s (the
        command's budget is 30 s).
        ValueError (`ReplayStopped`) if the hub is not connected or the link goes down;
        ValueError if the broker refused some of the events."""
        outcome = await replay_retained(
            self.buffer, self.session, topic_base=f"{self.topic_root}/events",
            fallback=AgentIdentity(site=self.config.agent.site, agent=self.config.agent.id),
            since=since, until=until, kinds=types,
            batch_max_events=self.config.hub.batch_max_events,
            max_inflight=1, ack_timeout_s=10.0, wire_format=self.forwarder.wire_format,
        )
        if outcome.refused:
            raise ValueError(outcome.summary())
        return outcome.sent

    async def replay_seqs(self, first: int, last: int) -> dict[str, Any]:
        """Send the retained delivered events of seqs `first`..`last` again (remote `replay`
        by seq range: the hub's gap healing), as `replay`; the answer names what was sent and,
        from `Buffer.holdings` read before, what of the range is pending (the forwarder sends
        it), dead-lettered, gone (past the retention or evicted) or not accepted yet."""
        holdings = await self.buffer.holdings(first, last)
        outcome = await replay_retained(
            self.buffer, self.session, topic_base=f"{self.topic_root}/events",
            fallback=AgentIdentity(site=self.config.agent.site, agent=self.config.agent.id),
            since=0.0, until=None, kinds=None,
            batch_max_events=self.config.hub.batch_max_events,
            max_inflight=1, ack_timeout_s=10.0, wire_format=self.forwarder.wire_format,
            seqs=(first, last),
        )
        return {
            "first_seq": first, "last_seq": last,
            "replayed": outcome.sent, "refused": outcome.refused,
            "retained": holdings.retained, "pending": holdings.pending,
            "dead_letters": holdings.dead_letters, "gone": holdings.gone,
            "not_accepted": holdings.not_accepted,
        }

    async def retry_dead_letters(self, seqs: Sequence[int]) -> tuple[int, int]:
        """Put these dead letters back in the queue while the agent runs (remote `retry`):
        `Buffer.retry_dead_letters` moves them back with their own seq and id and rewinds the
        leases; the forwarder is then told to lease its backlog lane again (their seqs are
        old, usually below the lane boundary of this connection) and woken. What was in flight
        at that moment may go out twice: ids make a repeat harmless. Returns (moved back,
        dropped because their id was accepted again since)."""
        moved, dropped = await self.buffer.retry_dead_letters(seqs)
        if moved:
            self.forwarder.requeued()
        self.status.changed()
        return moved, dropped

    async def request_reload(self) -> ReloadOutcome:
        """Re-read the config file (remote `reload`): an invalid file is refused and the
        running config kept; a valid one goes to `reload_hook` (the SIGHUP path) when set.
        See `agent.link.commands.reload_config`."""
        return await reload_config(self)


    async def _housekeeping_loop(self) -> None:
        """Purge delivered events past their retention, a bounded chunk at a time."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
            try:
                purged = await self.buffer.purge()
            except Exception:
                _log.warning("buffer purge failed; will retry", exc_info=True)
                continue
            if purged:
                _log.debug("purged %d delivered event(s) past retention", purged)


@contextlib.asynccontextmanager
async def _store_when_usable(
    config: AgentConfig, on_wait: Callable[[str], None]
) -> AsyncIterator[Buffer]:
    """`store.open_store`, retried while the state dir is short (full, read-only, out of
    descriptors) or the buffer unavailable; a locked or corrupt buffer still fails at once."""
    state_dir = config.agent.state_dir
    backoff = Backoff(_STORE_RETRY_MIN_S, _STORE_RETRY_MAX_S, jitter=False)
    waiting_since: float | None = None
    while True:
        stack = contextlib.AsyncExitStack()
        try:
            buffer = await stack.enter_async_context(store.open_store(config))
            break
        except (BufferUnavailable, OSError) as error:
            if isinstance(error, OSError) and not is_short_disk(error):
                raise
            reason = (error.strerror or str(error)) if isinstance(error, OSError) else str(error)
        if waiting_since is None:
            waiting_since = time.monotonic()
            _log.error(
                "STATE DIR UNUSABLE: cannot open the buffer in %s (%s); waiting for it, "
                "retrying with backoff", state_dir, reason,
            )
        on_wait(f"waiting for the state dir {state_dir}: {reason}")
        await asyncio.sleep(backoff.next_s())
    if waiting_since is not None:
        _log.warning(
            "state dir %s usable again after %.0f s: starting", state_dir,
            time.monotonic() - waiting_since,
        )
    async with stack:
        yield buffer


async def _cancel(tasks: list[asyncio.Task[None]], grace: float) -> None:
    """Cancel tasks and wait for them, cancelling again while one is still running (a library
    may swallow a cancellation that races with its own work). Gives up after twice `grace`,
    logging the task, so a stuck task is named instead of hanging the stop silently."""
    deadline = time.monotonic() + 2 * grace
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(0.5, grace))
        if pending and time.monotonic() > deadline:
            names = ", ".join(task.get_name() for task in pending)
            _log.error("task(s) %s did not stop within %.0f s", names, 2 * grace)
            return

