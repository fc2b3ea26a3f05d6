"""One hub process: `edge-agent hub run -c hub.toml`.

Start order (and stop in reverse): the store (schema, partitions) and the status tables
(`hub.status`), the web server (`hub.web`: dashboard, `/api/fleet`, `/metrics`; it reads the
database only, so it answers while the broker is away), the MQTT session (manual ack, the shared
subscription, the agents' statuses on an ordinary subscription, this process's reply topic;
MQTT v5, or 3.1.1 with `[broker] protocol`: then the events subscription is not shared and the
replay requests carry their reply fields in their JSON, `hub.gaps`),
then the tasks in one TaskGroup: landing, status recording, gap healing, partition upkeep.
SIGTERM or SIGINT cancels the group: what was not committed is not acknowledged, so the broker
sends it again (to this process when it comes back with the same session, or to another one of
the group). A SIGKILL loses nothing either:
the same rule holds without any clean-up.

The log says `hub dashboard on http://HOST:PORT/` once the web server listens (the real port
when the config says 0) and `hub ready: subscribed to ...` once the subscription is made (tests
and operators wait for both).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from agent.link.mqtt_session import InboundMessage, MqttSession
from agent.link.signing import RequestSigner
from hub.config import HubConfig
from hub.gaps import GapHealer
from hub.ingest import Landing
from hub.status import StatusRecorder, make_status_schema
from hub.store import HubStore
from hub.web import serve_dashboard

__all__ = ["HubStartError", "run_hub"]

_log = logging.getLogger("hub")
_PARTITION_UPKEEP_S = 3600.0
_READY_TIMEOUT_S = 60.0


class HubStartError(Exception):
    """The hub cannot start as configured (key file, password file): exit 2."""


def _signer(config: HubConfig) -> RequestSigner | None:
    gaps = config.gaps
    if not gaps.enabled or gaps.key_file is None:
        return None
    try:
        return RequestSigner.from_file(gaps.key_file, gaps.key_id)
    except ValueError as error:
        raise HubStartError(f"gaps.key_file: {error}") from error


def _password(config: HubConfig) -> str | None:
    path = config.broker.password_file
    if path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as error:
        raise HubStartError(f"broker.password_file: cannot read {path}: {error}") from error


def _dashboard_password(config: HubConfig) -> str | None:
    path = config.dashboard.password_file
    if not config.dashboard.enabled or path is None:
        return None
    try:
        return path.read_text().strip()
    except OSError as error:
        raise HubStartError(f"dashboard.password_file: cannot read {path}: {error}") from error


@contextlib.asynccontextmanager
async def _dashboard(
    config: HubConfig, store: HubStore, password: str | None
) -> AsyncIterator[None]:
    if not config.dashboard.enabled:
        yield
        return
    async with contextlib.AsyncExitStack() as stack:
        try:
            url = await stack.enter_async_context(serve_dashboard(
                store.pool, config.dashboard, config.broker.topic_prefix, password=password,
            ))
        except OSError as error:
            raise HubStartError(
                f"dashboard: cannot listen on {config.dashboard.host}:{config.dashboard.port}:"
                f" {error}"
            ) from error
        _log.info("hub dashboard on %s", url)
        yield


def _tls(config: HubConfig) -> ssl.SSLContext | None:
    broker = config.broker
    if not broker.tls:
        return None
    try:
        return ssl.create_default_context(
            cafile=str(broker.ca_file) if broker.ca_file is not None else None
        )
    except (OSError, ssl.SSLError) as error:
        raise HubStartError(f"broker.ca_file: {error}") from error


async def run_hub(config: HubConfig, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set, SIGTERM or SIGINT (module docstring)."""
    signer = _signer(config)
    password, tls = _password(config), _tls(config)
    dashboard_password = _dashboard_password(config)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    broker, database = config.broker, config.database
    async with HubStore.open(
        database.url, pool_size=database.pool_size,
        partition_days_ahead=database.partition_days_ahead,
        command_timeout_s=database.command_timeout_s,
    ) as store:
        await make_status_schema(store.pool)
        statuses: StatusRecorder | None = None
        if config.status.enabled:
            statuses = StatusRecorder(  # the topics as they come (`dots_as_levels`)
                store.pool, topic_prefix=broker.wire(broker.topic_prefix),
                sample_interval_s=config.status.sample_interval_s,
                keep_hours=config.status.keep_hours,
            )
        landing = Landing(
            store, batch_max_messages=config.landing.batch_max_messages,
            batch_max_bytes=config.landing.batch_max_bytes,
            batch_max_wait_ms=config.landing.batch_max_wait_ms,
            retry_min_s=config.landing.retry_min_s, landed_by=broker.client_id,
        )
        healer: GapHealer | None = None
        replies: set[asyncio.Task[None]] = set()

        def deliver(message: InboundMessage) -> None:
            if healer is not None and healer.owns(message.topic):
                task = asyncio.ensure_future(_reply(healer, message))
                replies.add(task)
                task.add_done_callback(replies.discard)
                return
            if statuses is not None and statuses.owns(message.topic):
                statuses.offer(message)
                return
            landing.offer(message)

        session = MqttSession(
            host=broker.host, port=broker.port, client_id=broker.client_id,
            keepalive_s=broker.keepalive_s, tls=tls, username=broker.username,
            password=password, session_expiry_s=broker.session_expiry_s,
            connect_timeout_s=broker.connect_timeout_s,
            reconnect_min_s=broker.reconnect_min_s, reconnect_max_s=broker.reconnect_max_s,
            on_delivery=deliver, receive_maximum=broker.receive_maximum,
            resume_at_start=True, protocol=broker.protocol,
            dots_as_levels=broker.dots_as_levels, logger=_log,
        )
        if signer is not None:
            healer = GapHealer(
                store, session, config.gaps, topic_prefix=broker.topic_prefix,
                # As the agent's answers come: the agent's session wires what it publishes.
                reply_root=broker.wire(f"{broker.topic_prefix}/_hub/{broker.client_id}/reply"),
                signer=signer,
            )
        async with _dashboard(config, store, dashboard_password), session:
            await session.subscribe(broker.events_filter, qos=1)
            if statuses is not None:
                await session.subscribe(statuses.filter, qos=1)
            if healer is not None:
                await session.subscribe(healer.reply_filter, qos=1)
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(landing.run(), name="hub-landing"),
                    group.create_task(_partition_upkeep(store), name="hub-partitions"),
                    group.create_task(_announce_ready(session, broker.events_filter)),
                ]
                if healer is not None:
                    tasks.append(group.create_task(healer.run(), name="hub-gaps"))
                if statuses is not None:
                    tasks.append(group.create_task(statuses.run(), name="hub-statuses"))
                await stop.wait()
                _log.info("hub stopping")
                for task in tasks:
                    task.cancel()
            for reply in list(replies):
                reply.cancel()
    _log.info("hub stopped")


async def _announce_ready(session: MqttSession, events_filter: str) -> None:
    if await session.wait_connected(_READY_TIMEOUT_S):
        _log.info("hub ready: subscribed to %s", events_filter)


async def _reply(healer: GapHealer, message: InboundMessage) -> None:
    try:
        await healer.offer_reply(message)
    except Exception:
        _log.exception("recording a replay answer failed")
    message.ack()  # an answer is not retried: the gap's next request asks again


async def _partition_upkeep(store: HubStore) -> None:
    while True:
        await asyncio.sleep(_PARTITION_UPKEEP_S)
        try:
            await store.ensure_partitions(datetime.now(UTC))
        except Exception as error:
            _log.warning("making partitions ahead failed: %s; retrying in an hour", error)
