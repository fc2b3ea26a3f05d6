"""Runtime: wires sources → pipeline → buffer → forwarder → hub, and owns their lifecycle.

Start order (sinks first, sources last, like Telegraf): open the buffer (a corrupt or locked
buffer stops the agent before anything connects), start the MQTT session (its connection is
kept up in the background; the hub may be down and the agent still runs), start the forwarder,
the pipeline, the status publisher, then the sources.

Stop order (the reverse, each step bounded by `agent.shutdown_grace_s`):
1. sources are cancelled: connectors close their sessions;
2. the pipeline commits every reading still queued (nothing handed over is lost);
3. the forwarder stops leasing and waits for in-flight PUBACKs, then commits their acks;
4. the session publishes the retained `offline` status and disconnects cleanly (so the broker
   does not publish the will);
5. the buffer is closed (WAL checkpointed by SQLite on close).

Each source runs in a `SourceRunner`, which owns reconnects: capped exponential backoff with
full jitter, state changes logged once ("unavailable", "back after 42 s"), a config error
stops that source only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

from agent.forwarder import Forwarder
from agent.mapping import Mapper
from agent.mqtt_session import MqttSession, WillMessage
from agent.pipeline import Pipeline
from agent.status import CONTENT_TYPE as STATUS_CONTENT_TYPE
from agent.status import offline_payload, online_payload
from buffer.sqlite import SqliteBuffer
from config.schema import AgentConfig, OpcUaSource
from connectors.base import Connector, Emit, SourceConfigError, SourceUnavailable
from connectors.opcua import OpcUaConnector

_log = logging.getLogger(__name__)

BUFFER_FILE = "buffer.sqlite"
HOUSEKEEPING_INTERVAL_S = 60.0


def buffer_path(config: AgentConfig) -> Path:
    return config.agent.state_dir / BUFFER_FILE


def build_connector(source: OpcUaSource) -> Connector:
    return OpcUaConnector(source.name, source, source.signals)


class SourceRunner:
    """Runs one connector for the agent's lifetime; see the module docstring."""

    def __init__(
        self, connector: Connector, *, backoff_min_s: float = 0.5, backoff_max_s: float = 30.0
    ) -> None:
        self.connector = connector
        self.state = "starting"
        self._backoff_min_s = backoff_min_s
        self._backoff_max_s = backoff_max_s

    async def run(self, emit: Emit) -> None:
        name = self.connector.name
        delay = self._backoff_min_s
        down_since: float | None = None
        while True:
            started = time.monotonic()
            try:
                self.state = "running"
                await self.connector.run(emit)
                raise SourceUnavailable("connector returned")
            except SourceConfigError as error:
                self.state = "failed"
                self.connector.health.last_error = str(error)
                _log.error("source=%s stopped: %s (fix the config and restart)", name, error)
                return
            except SourceUnavailable as error:
                reason = str(error)
            except Exception as error:  # a bug in a connector must not stop the agent
                _log.exception("source=%s failed unexpectedly; retrying", name)
                reason = f"{type(error).__name__}: {error}"
            self.state = "retrying"
            self.connector.health.last_error = reason
            if time.monotonic() - started > 30.0:
                delay = self._backoff_min_s  # it ran for a while: start over
                if down_since is not None:
                    _log.info("source=%s was back after %.0f s", name, started - down_since)
                down_since = None
            if down_since is None:
                down_since = time.monotonic()
                _log.warning("source=%s unavailable: %s; retrying with backoff", name, reason)
            await asyncio.sleep(random.uniform(0, delay) + self._backoff_min_s / 2)
            delay = min(delay * 2, self._backoff_max_s)


class Agent:
    """One running agent. Build it with `Agent.open(config)`."""

    def __init__(self, config: AgentConfig, buffer: SqliteBuffer) -> None:
        self.config = config
        self.buffer = buffer
        self.started_at = time.time()
        site, agent_id = config.agent.site, config.agent.id
        self.topic_root = f"{config.hub.topic_prefix}/{site}/{agent_id}"
        self.status_topic = f"{self.topic_root}/status"
        hub = config.hub
        self.session = MqttSession(
            host=hub.host,
            port=hub.port,
            client_id=config.client_id,
            keepalive_s=hub.keepalive_s,
            tls=_tls_context() if hub.tls else None,
            will=WillMessage(
                topic=self.status_topic,
                payload=offline_payload(site, agent_id, "connection lost"),
                retain=True,
                content_type=STATUS_CONTENT_TYPE,
            ),
            connect_timeout_s=hub.connect_timeout_s,
            reconnect_min_s=hub.reconnect_min_s,
            reconnect_max_s=hub.reconnect_max_s,
            on_connected=self._publish_status,
        )
        self.forwarder = Forwarder(
            buffer,
            self.session,
            topic_base=f"{self.topic_root}/events",
            batch_max_events=hub.batch_max_events,
            batch_max_wait_s=hub.batch_max_wait_ms / 1000,
            max_inflight=hub.max_inflight,
        )
        self.pipeline = Pipeline(
            Mapper.from_config(config),
            buffer,
            site=site,
            agent=agent_id,
            on_accepted=self.forwarder.wake,
        )
        self.sources = [SourceRunner(build_connector(source)) for source in config.sources]

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config: AgentConfig) -> AsyncIterator[Agent]:
        async with SqliteBuffer.open(
            buffer_path(config),
            synchronous=config.buffer.synchronous,
            retention_s=config.buffer.retention_s,
        ) as buffer:
            yield cls(config, buffer)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down in order (module docstring)."""
        grace = self.config.agent.shutdown_grace_s
        async with self.session, asyncio.TaskGroup() as group:
            forwarder = group.create_task(self.forwarder.run(), name="forwarder")
            pipeline = group.create_task(self.pipeline.run(), name="pipeline")
            status = group.create_task(self._status_loop(), name="status")
            housekeeping = group.create_task(self._housekeeping_loop(), name="housekeeping")
            sources = [
                group.create_task(
                    runner.run(self.pipeline.emit), name=f"source-{runner.connector.name}"
                )
                for runner in self.sources
            ]
            _log.info(
                "agent %s/%s running: %d source(s), hub %s",
                self.config.agent.site, self.config.agent.id, len(sources), self.config.hub.url,
            )
            await stop.wait()
            _log.info("stopping")
            await _cancel(sources, grace)
            await self.pipeline.stop(pipeline, grace)
            await self.forwarder.drain(grace)
            # The forwarder has returned by now unless the grace period ran out.
            await _cancel([forwarder, status, housekeeping], grace)
            await self.session.close(
                final=[
                    (
                        self.status_topic,
                        offline_payload(self.config.agent.site, self.config.agent.id, "stopped"),
                        True,
                        STATUS_CONTENT_TYPE,
                    )
                ]
            )
        _log.info("stopped")

    async def _publish_status(self) -> None:
        payload = await online_payload(self)
        future = self.session.publish(
            self.status_topic, payload, qos=1, retain=True, content_type=STATUS_CONTENT_TYPE
        )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(future, timeout=5.0)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.hub.status_interval_s)
            if self.session.connected:
                try:
                    await self._publish_status()
                except Exception:
                    _log.debug("status publish failed", exc_info=True)


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


def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()
