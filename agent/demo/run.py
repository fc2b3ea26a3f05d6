"""`edge-agent demo`: a simulated filling line, the agent reading it, and a view of the hub.

The plant runs as a child process (a real OPC UA server on a loopback port); the agent runs in
this process with a generated config; a small subscriber on the hub counts what arrives and
prints the first event of each type, decoded. A progress line shows events read, buffered,
forwarded, the backlog and whether the hub is connected. With no broker the agent keeps
buffering and says so; when a broker appears the backlog drains.

With ``--with-hub`` (`make hub-demo`) the hub's half runs too (`agent.demo.hub`): an
`edge-agent hub run` child process lands the events in the machine's PostgreSQL and serves its
dashboard; the progress line adds what landed there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from agent.demo.hub import DemoHub, DemoHubError
from agent.demo.plant import (
    FILLER_TEMPERATURE,
    GOOD_COUNT,
    REJECT_COUNT,
    STATE,
    TANK_TEMPERATURE,
)
from agent.link.mqtt_session import MqttSession
from agent.runtime import Agent
from agent.service import logs
from config.schema import AgentConfig
from events.formats import decode_message

SITE, AGENT_ID, PREFIX = "plant-a", "edge-01", "mfg"


# The MES side of the demo: a batch file dropped into a folder and a webhook post.
MES_TOKEN = "demo-token"
SAMPLE_FILE = (
    "WO;MATERIAL;GOOD_QTY;SCRAP_QTY;FINISHED\n"
    "WO-4711;MAT-100;480;20;26.11.2026 06:55:00\n"
    "WO-4712;MAT-200;96;4;26.11.2026 07:40:00\n"
)
SAMPLE_POST = {
    "material": "MAT-100", "lot": "L-0042", "bin": "WH-1/A3", "delta": -12.5, "uom": "kg",
    "reason": "CYCLE-COUNT", "at": "2026-11-26T08:15:00+01:00", "messageId": "demo-1",
}


def mes_sources(state_dir: Path, http_port: int) -> list[dict[str, Any]]:
    """A file drop (semicolon CSV, local times in Berlin) and a webhook (inventory)."""
    return [
        {"name": "mes-drop", "type": "mes-files", "folder": str(state_dir / "mes-drop"),
         "pattern": "*.csv", "delimiter": ";", "complete": "rename", "poll_s": 0.5,
         "event": "workorder.completed", "asset": "line1", "time_column": "FINISHED",
         "time_format": "%d.%m.%Y %H:%M:%S", "time_zone": "Europe/Berlin",
         "columns": {"order": {"column": "WO"}, "product": {"column": "MATERIAL"},
                     "good": {"column": "GOOD_QTY", "type": "float", "unit": "1"},
                     "scrap": {"column": "SCRAP_QTY", "type": "float"}}},
        {"name": "mes-webhook", "type": "mes-http", "listen": f"127.0.0.1:{http_port}",
         "tokens_file": str(state_dir / "mes-tokens"), "idempotency_field": "messageId",
         "routes": [{"path": "/mes/inventory", "event": "inventory.adjusted",
                     "asset": "warehouse", "time_column": "at",
                     "columns": {"material": {"column": "material"}, "lot": {"column": "lot"},
                                 "location": {"column": "bin"},
                                 "delta": {"column": "delta", "type": "float"},
                                 "unit": {"column": "uom"}, "reason": {"column": "reason"}}}]},
    ]


def demo_config(
    hub: str, opcua_port: int, state_dir: Path, http_port: int = 0,
    hub_key: Path | None = None,
) -> AgentConfig:
    signal_rules: list[dict[str, Any]] = [
        {"node": GOOD_COUNT, "event": "production.count", "asset": "line1/filler",
         "name": "good_count"},
        {"node": REJECT_COUNT, "event": "production.count", "asset": "line1/filler",
         "name": "reject_count"},
        {"node": STATE, "event": "machine.state", "asset": "line1/filler", "name": "state",
         "states": {"0": "idle", "1": "running", "2": "down", "3": "fault"}},
        {"node": FILLER_TEMPERATURE, "event": "telemetry", "asset": "line1/filler",
         "name": "temperature", "unit": "Cel"},
        {"node": TANK_TEMPERATURE, "event": "telemetry", "asset": "line1/tank",
         "name": "temperature", "unit": "Cel"},
    ]
    return AgentConfig.model_validate(
        {
            "agent": {"site": SITE, "id": AGENT_ID, "state_dir": str(state_dir.resolve()),
                      "shutdown_grace_s": 5},
            "hub": {"url": hub, "topic_prefix": PREFIX, "status_interval_s": 10,
                    "reconnect_max_s": 5},
            "buffer": {"retention_s": 3600},
            # The agent's status page and /metrics (agent.web), on a free loopback port.
            "web": {"enabled": True, "port": 0},
            # The demo hub's key may ask for a replay of a gap (`agent.demo.hub`).
            **({"commands": {"keys": {"hub": str(hub_key)}, "allow": {"replay": ["hub"]}}}
               if hub_key is not None else {}),
            "sources": [
                {"name": "line1", "type": "opcua",
                 "endpoint": f"opc.tcp://127.0.0.1:{opcua_port}/plant/",
                 "publishing_interval_ms": 100, "signals": signal_rules},
                *(mes_sources(state_dir.resolve(), http_port) if http_port else []),
            ],
        }
    )


def run_demo(
    *, hub: str, duration: float | None, state_dir: Path, rate: float, opcua_port: int,
    database: str | None = None, dashboard_port: int = 8780,
) -> int:
    parts = urlsplit(hub)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        print(f"the demo only talks to a broker on this machine; got {hub}", file=sys.stderr)
        return 2
    logs.configure("warning")
    state_dir.mkdir(parents=True, exist_ok=True)
    if database is None:
        return _run_plant(hub, duration, state_dir, rate, opcua_port, None)
    with DemoHub(broker_url=hub, database_url=database, state_dir=state_dir,
                 dashboard_port=dashboard_port) as demo_hub:
        try:
            asyncio.run(demo_hub.prepare())
            demo_hub.start()
            demo_hub.wait_ready()
        except DemoHubError as error:
            print(f"edge-agent demo --with-hub: {error}", file=sys.stderr)
            return 1
        print(f"hub landing in {database}; dashboard {demo_hub.dashboard_url} "
              f"(log {demo_hub.state_dir / 'hub.log'})")
        return _run_plant(hub, duration, state_dir, rate, opcua_port, demo_hub)


def _run_plant(
    hub: str, duration: float | None, state_dir: Path, rate: float, opcua_port: int,
    demo_hub: DemoHub | None,
) -> int:
    port = opcua_port or _free_port()
    plant = subprocess.Popen(
        [sys.executable, "-m", "agent.demo.plant", "--port", str(port), "--rate", str(rate)],
        stdout=subprocess.DEVNULL,
    )
    try:
        if not _wait_port(port, timeout=20.0, process=plant):
            print("the simulated plant did not start", file=sys.stderr)
            return 1
        print(f"simulated filling line serving opc.tcp://127.0.0.1:{port}/plant/")
        http_port = _free_port()
        (state_dir / "mes-drop").mkdir(parents=True, exist_ok=True)
        (state_dir / "mes-tokens").write_text(MES_TOKEN + "\n")
        config = demo_config(
            hub, port, state_dir, http_port,
            hub_key=demo_hub.public_key if demo_hub is not None else None,
        )
        return asyncio.run(_run(config, duration, http_port, demo_hub))
    finally:
        plant.send_signal(signal.SIGTERM)
        try:
            plant.wait(timeout=10)
        except subprocess.TimeoutExpired:
            plant.kill()


async def _run(
    config: AgentConfig, duration: float | None, http_port: int = 0,
    demo_hub: DemoHub | None = None,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    hub = HubView()
    watcher = MqttSession(
        host=config.hub.host, port=config.hub.port,
        client_id=f"edge-agent-demo-view-{os.getpid()}", on_message=hub.on_message,
        reconnect_max_s=2.0,
    )
    print(f"agent {SITE}/{AGENT_ID} forwarding to {config.hub.url}, topics {PREFIX}/{SITE}/"
          f"{AGENT_ID}/#; buffer in {config.agent.state_dir}")
    started = time.monotonic()
    cpu_started = time.process_time()
    async with watcher, Agent.open(config) as agent:
        await watcher.subscribe(f"{PREFIX}/{SITE}/{AGENT_ID}/events/#", qos=1)
        runner = asyncio.create_task(agent.run(stop))
        if duration is not None:
            loop.call_later(duration, stop.set)
        mes = asyncio.create_task(_mes_samples(config, http_port)) if http_port else None
        announce = asyncio.create_task(_announce_web(agent, stop))
        await _progress(agent, hub, stop, config.hub.url, demo_hub)
        await runner
        announce.cancel()
        if mes is not None:
            mes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mes
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_started
    forwarded = agent.forwarder.counters.events_forwarded_total
    print(f"\nstopped after {elapsed:.1f} s: {agent.pipeline.counters.readings_total} readings, "
          f"{agent.pipeline.counters.events_accepted_total} events accepted, {forwarded} "
          f"forwarded ({forwarded / elapsed:.0f} events/s), {hub.received} received at the hub")
    if demo_hub is not None:
        landed = await demo_hub.wait_landed(forwarded)
        print(f"landed in PostgreSQL ({demo_hub.database_url}, table events): {landed}")
    if forwarded:
        print(f"CPU of this process (agent and hub view): {cpu:.1f} s, "
              f"{cpu / forwarded * 1e6:.0f} µs per forwarded event")
    return 0


async def _mes_samples(config: AgentConfig, http_port: int) -> None:
    """What an MES does: drop a batch file (written aside, then renamed in) and post a
    webhook; the business events appear at the hub beside the OPC UA ones."""
    await asyncio.sleep(2.0)
    folder = config.agent.state_dir / "mes-drop"
    part = folder / "completions-demo.csv.part"
    part.write_text(SAMPLE_FILE)
    part.rename(folder / "completions-demo.csv")
    print(f"\nMES: dropped {folder / 'completions-demo.csv'} (2 completed work orders)")
    url = f"http://127.0.0.1:{http_port}/mes/inventory"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, json=SAMPLE_POST, headers={"Authorization": f"Bearer {MES_TOKEN}"}
        ) as response:
            print(f"MES: POST {url} -> {response.status} {await response.text()}", flush=True)


async def _announce_web(agent: Agent, stop: asyncio.Event) -> None:
    """Say where the agent's status page and metrics are, once it listens (bounded)."""
    for _ in range(100):
        if agent.web.url is not None:
            print(f"\nstatus page {agent.web.url}  ·  metrics {agent.web.url}metrics",
                  flush=True)
            return
        if stop.is_set():
            return
        await asyncio.sleep(0.1)


class HubView:
    """What a consumer at the hub sees: counts, and the first event of each type."""

    def __init__(self) -> None:
        self.received = 0
        self._shown: set[str] = set()

    def on_message(self, topic: str, payload: bytes, properties: object) -> None:
        try:
            events = decode_message(
                payload,
                getattr(properties, "ContentType", None),
                getattr(properties, "UserProperty", None) or (),
            )
        except Exception:
            return
        self.received += len(events)
        for event in events:
            if event["type"] not in self._shown:
                self._shown.add(event["type"])
                print(f"\nat the hub, on {topic}:\n  {json.dumps(event)}", flush=True)


async def _progress(
    agent: Agent, hub: HubView, stop: asyncio.Event, url: str, demo_hub: DemoHub | None
) -> None:
    tty = sys.stdout.isatty()
    said_unreachable = False
    last_line = 0.0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        stats = await agent.buffer.stats()
        connected = agent.session.connected
        if not connected and time.time() - agent.started_at > 3 and not said_unreachable:
            said_unreachable = True
            print(f"\nno MQTT broker answers at {url}: events stay in the buffer until one "
                  "does (e.g. start `mosquitto -p 1883`), then the backlog drains", flush=True)
        if connected:
            said_unreachable = False
        line = (
            f"read {agent.pipeline.counters.readings_total} | buffered "
            f"{agent.pipeline.counters.events_accepted_total} | forwarded "
            f"{agent.forwarder.counters.events_forwarded_total} | backlog {stats.pending} | "
            f"hub {'connected' if connected else 'unreachable'} | received at hub {hub.received}"
        )
        if demo_hub is not None:
            line += f" | landed in PostgreSQL {await demo_hub.landed()}"
        if tty:
            print("\r" + line.ljust(110), end="", flush=True)
        elif time.monotonic() - last_line >= 2.0:
            last_line = time.monotonic()
            print(line, flush=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_port(port: int, *, timeout: float, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.settimeout(0.5)
            probe.connect(("127.0.0.1", port))
            return True
        time.sleep(0.1)
    return False
