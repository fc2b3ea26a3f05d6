"""The agent as a long-running service: one buffer for the life of the process, configs that
come and go on reload, systemd told what is happening, a status snapshot left on disk.

Lifecycle
---------
1. The caller loaded and validated the config. `Agent.open` opens the buffer (and holds the
   state dir) and builds the first generation: secrets read, TLS context built, mapping made.
   Only then `READY=1`: a bad config, secret or buffer fails the start instead. A state dir
   that is full or read-only is waited for (`STATUS=` says so, the start timeout is extended).
2. A generation (`Agent.run`) runs until SIGTERM/SIGINT (`stop`) or a reload is applied.
3. SIGHUP (`systemctl reload`), or `request_reload()`: `RELOADING=1`; the config file is read
   and validated on a worker thread and a new `Agent` is built on the same open buffer. Nothing
   is stopped yet. If anything fails (invalid file, unreadable secret, bad certificate), the
   running generation keeps running and the reason is logged and kept in status.json. A change
   of `agent.state_dir` or `[buffer]` is refused the same way (`agent.service.reload_rules`): the
   buffer stays open across a reload, so those need a restart. Otherwise the running
   generation stops in the runtime's documented order (sources, pipeline commit, forwarder
   drain, hub session closed with status `offline`/`reloading`): every reading handed over
   is committed and every event stays in the buffer, which the new generation forwards. Then
   `READY=1` again.
   Requests that arrive while one is being handled are coalesced into one more reload.
4. All along: `WATCHDOG=1` from the event loop (see `agent.service.systemd`), and every
   `hub.status_interval_s` (sooner just after the start: 1, 2, 4 ... s) a `STATUS=` line and a
   new status.json
   (`agent.service.status_file`), also written when ready, after each reload and at the stop
   (`"state": "stopped"`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import time
from pathlib import Path
from typing import Any

from agent import __version__
from agent.flow.signal_values import MAX_SIGNALS_PER_SOURCE
from agent.link.status import sources_status
from agent.runtime import Agent
from agent.service import logs
from agent.service.credentials import CredentialError
from agent.service.reload_rules import reload_refusal
from agent.service.status_file import ProblemLog, StatusFile, iso
from agent.service.systemd import SystemdNotifier
from config.loader import ConfigError, load_config
from config.schema import AgentConfig

_log = logging.getLogger(__name__)

# While the start waits for its state dir, each retry extends systemd's start timeout by this.
_WAIT_EXTEND_USEC = 30_000_000


class AgentService:
    """Runs `Agent` generations on one buffer; see the module docstring."""

    def __init__(
        self,
        config: AgentConfig,
        config_path: Path,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or SystemdNotifier.from_environment()
        self.problems = ProblemLog()
        self.status_file = StatusFile(config.agent.state_dir)
        self.started_at = time.time()
        self.last_reload: dict[str, Any] | None = None
        self._reload = asyncio.Event()
        self._agent: Agent | None = None
        self._state = "starting"
        self._pending: int | None = None  # buffer backlog at the last snapshot

    def request_reload(self) -> None:
        """Ask for a reload (the SIGHUP handler); handled on the loop, see the docstring."""
        self._reload.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set. Raises what `Agent.open` raises (BufferFailure,
        CredentialError) before anything runs."""
        root = logging.getLogger()
        root.addHandler(self.problems)
        try:
            async with Agent.open(self.config, self.config_path, on_wait=self._waiting) as first:
                await self._serve(first, stop)
        finally:
            root.removeHandler(self.problems)
            self.notifier.close()

    def _waiting(self, reason: str) -> None:
        """The state dir cannot be written yet and the start waits for it (`Agent.open`): say
        so in STATUS= and keep systemd's start timeout and watchdog from ending the wait."""
        self.notifier.notify(
            status=reason, extend_timeout_usec=_WAIT_EXTEND_USEC, watchdog=1
        )

    async def _serve(self, agent: Agent, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            watchdog = group.create_task(self.notifier.watchdog(), name="systemd-watchdog")
            snapshots = group.create_task(self._snapshot_loop(), name="status-file")
            try:
                while True:
                    agent.started_at = self.started_at
                    agent.reload_hook = self.request_reload  # remote `reload` takes SIGHUP's path
                    self._agent = agent
                    generation_stop = asyncio.Event()
                    running = group.create_task(agent.run(generation_stop), name="agent")
                    self._state = "running"
                    await self._snapshot()
                    self.notifier.ready(self._status_line())
                    # What startup built (modules, config, mappers) lives as long as the
                    # process: out of the collector's way, so full collections stay cheap on
                    # the per-event path (about 4 µs per event otherwise, issue 8).
                    gc.freeze()
                    # The young collections that still run are allocation pressure, not
                    # cycles (bench/hot_path.py --cycles finds none): each value keeps ~7
                    # objects alive until its batch commits, so the default trigger of 700
                    # fires every ~100 values. 10,000 cut the collector's share from ~4 to
                    # ~1.5 µs per reading (docs/performance.md, "The hot path in process").
                    gc.set_threshold(10_000, 10, 10)
                    replacement = await self._next_generation(stop, running)
                    if replacement is None:
                        self._state = "stopping"
                        self.notifier.stopping()
                    else:
                        self._state = "reloading"
                        agent.stop_reason = "reloading"
                    generation_stop.set()
                    await running
                    if replacement is None:
                        return
                    self._switch_to(replacement)
                    agent = replacement
            finally:
                watchdog.cancel()
                snapshots.cancel()
                await asyncio.wait([watchdog, snapshots], timeout=5.0)
                self._state = "stopped"
                await self._snapshot()

    async def _next_generation(
        self, stop: asyncio.Event, running: asyncio.Task[None]
    ) -> Agent | None:
        """Wait for the stop (None) or a reload that validated (the new, not yet started
        generation). A generation that ends by itself also returns None."""
        while not (stop.is_set() or running.done()):
            if self._reload.is_set():
                self._reload.clear()
                replacement = await self._prepare_reload()
                if replacement is not None:
                    return replacement
                continue
            waiters = [
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(self._reload.wait()),
            ]
            try:
                await asyncio.wait([*waiters, running], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
        return None

    async def _prepare_reload(self) -> Agent | None:
        """Read, validate and build the next generation; None (and the reason logged) if the
        running one must stay."""
        assert self._agent is not None
        self.notifier.reloading()
        path = self.config_path
        _log.info("reload requested: reading %s", path)
        try:
            config = await asyncio.to_thread(load_config, path)
        except ConfigError as error:
            problems = "; ".join(problem.format() for problem in error.problems)
            await self._refuse(f"{path} is invalid: {problems}")
            return None
        refusal = reload_refusal(self.config, config)
        if refusal is not None:
            await self._refuse(refusal)
            return None
        try:
            replacement = Agent(config, self._agent.buffer, config_path=path)
        except (CredentialError, ValueError) as error:
            await self._refuse(str(error))
            return None
        self.config = config
        return replacement

    async def _refuse(self, reason: str) -> None:
        _log.error("reload refused, keeping the running config: %s", reason)
        self.last_reload = {"at": iso(time.time()), "result": "refused", "reason": reason}
        await self._snapshot()
        self.notifier.ready(self._status_line())  # ends RELOADING: the old config runs on

    def _switch_to(self, replacement: Agent) -> None:
        config = replacement.config
        logs.configure(config.agent.log_level, config.agent.log_format)
        root = logging.getLogger()
        if self.problems not in root.handlers:
            root.addHandler(self.problems)
        self.last_reload = {"at": iso(time.time()), "result": "applied", "reason": None}
        _log.info(
            "reload applied: %d source(s), hub %s", len(config.sources), config.hub.url
        )

    # -- status: STATUS= and status.json --------------------------------------------------------

    async def _snapshot_loop(self) -> None:
        # Soon after the start, then doubling up to the interval: the snapshot written when the
        # agent got ready shows its sources still `starting`, and `edge-agent status` should not
        # say so for a whole interval (30 s by default) after they connected.
        delay_s = 1.0
        while True:
            await asyncio.sleep(min(delay_s, self.config.hub.status_interval_s))
            delay_s *= 2
            await self._snapshot()
            self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        agent = self._agent
        if agent is None:
            return self._state
        running = sum(1 for runner in agent.sources if runner.state == "running")
        hub = "hub connected" if agent.session.connected else "hub unreachable"
        pending = "" if self._pending is None else f", {self._pending} pending"
        return f"{hub}, {running}/{len(agent.sources)} sources running{pending}"

    async def _snapshot(self) -> None:
        """Write status.json; a failure is logged, never raised (status must not stop the
        agent)."""
        try:
            document = await self._document()
        except Exception as error:
            _log.warning("cannot make the status snapshot: %s", error)
            return
        await asyncio.to_thread(self.status_file.write, document)  # best-effort, logs once

    async def _document(self) -> dict[str, Any]:
        agent = self._agent
        config = self.config
        document: dict[str, Any] = {
            "state": self._state,
            "pid": os.getpid(),
            "version": __version__,
            "site": config.agent.site,
            "agent": config.agent.id,
            "config": str(self.config_path),
            "started_at": iso(self.started_at),
            "status_interval_s": config.hub.status_interval_s,
            "last_reload": self.last_reload,
            "recent_problems": self.problems.recent(),
        }
        if agent is None:
            return document
        session = agent.session
        document["hub"] = {
            "url": agent.config.hub.url,
            "connected": session.connected,
            # A resolved problem is not shown as current (issue 19): the log keeps it.
            "last_error": None if session.connected else session.last_error,
            "session_present": session.session_present,
        }
        # Every signal here (the file stays on this machine); agent.link.status caps them.
        by_source = sources_status(agent, signals_per_source=MAX_SIGNALS_PER_SOURCE)
        document["sources"] = {
            runner.connector.name: {
                "state": runner.state,
                "connected": runner.connector.health.connected,
                "readings_total": runner.connector.health.readings_total,
                "last_value_at": _isoformat(runner.connector.health.last_value_at),
                "last_error": by_source[runner.connector.name]["last_error"],
                "counters": dict(runner.connector.health.counters),
                "signals": by_source[runner.connector.name]["signals"],
                "signals_not_listed": by_source[runner.connector.name]["signals_not_listed"],
            }
            for runner in agent.sources
        }
        document["pipeline"] = dataclasses.asdict(agent.pipeline.counters)
        document["forwarder"] = dataclasses.asdict(agent.forwarder.counters)
        # The versions it publishes, and each dual-publish window (`agent.flow.dual_publish`).
        document["event_types"] = agent.pipeline.dual_publish.status()
        try:
            stats = await agent.buffer.stats()
        except Exception as error:  # the buffer's own errors are reported by its users
            document["buffer"] = {"error": str(error)}
        else:
            self._pending = stats.pending
            oldest = stats.oldest_pending_at
            document["buffer"] = {
                "pending": stats.pending,
                "oldest_pending_age_s": None if oldest is None else round(time.time() - oldest, 1),
                "dead_letters": stats.dead_letters,
                "last_seq": stats.last_seq,
            }
        return document


def _isoformat(moment: object) -> str | None:
    isoformat = getattr(moment, "isoformat", None)
    return isoformat() if callable(isoformat) else None
