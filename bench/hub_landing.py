"""The hub's landing speed, its CPU per event, and how fast a gap heals (issue 17, item 5).

Why one module (650 lines): both phases share the process plumbing (a hub subprocess, a fresh
database, CPU read from /proc per process, the bounded polls of `seq_held`) and print into one
table; split, each half would import the other's private helpers.

1. Landing, per wire format: one real `edge-agent hub run` process (a subprocess, the
   configuration's defaults but for the broker and database addresses and `[gaps]` off) on a
   private mosquitto and a fresh PostgreSQL database, fed by a loopback publisher that sends
   what agents send: batches of realistic telemetry events (`bench.wire_formats.telemetry`,
   the envelope `events.wire` splices: id, seq, site, agent, data, trace context), QoS 1, from
   `AGENTS` simulated agents at as many sites, round robin, each with its own MQTT client.
   The publisher keeps at most `WINDOW` events published but not yet landed: what the
   simulated agents' forwarders keep in flight at their defaults (`max_inflight` messages of
   `batch_max_events` each, per agent; a real agent is bounded the same way by its PUBACKs),
   so the broker never holds a pile of its own. Figures:

   - landed events/s: events ÷ seconds from the first publish to the moment the hub's
     `seq_held` covers every event (polled every 20 ms); and the steady rate between 10 % and
     90 % landed (start-up and tail left out);
   - hub µs/event: the hub process's CPU (utime + stime from /proc/PID/stat, all threads) over
     the phase ÷ events; PostgreSQL µs/event the same for the hub's backends (the database's
     client backends in `pg_stat_activity`; the server's WAL writer and checkpointer are not
     in it); mosquitto's and the publisher's likewise;
   - checked after each phase: `events` holds every event exactly once (count = distinct ids =
     events published).

2. Gap healing: a real agent (`edge-agent run`, simulated source, 100 events/s) and a real hub
   with `[gaps]` on (`check_interval_s = 0.3`, `open_after_s = 1`: tests/hub/harness.py's
   settings), the hub's key allowed for `replay` at the agent. Once the agent's events all
   landed and its source is paused, a seq range is removed at the hub (rows deleted, coverage
   rebuilt, as tests/hub/test_gaps.py does); timed from that commit: the gap row appears, the
   signed replay request is recorded, its answer arrives, the range is held again.

3. Plants per hub process: the steady msgpack landing rate ÷ a plant's event rate, for the
   agent's measured live peak and its moderate phase (docs/performance.md, "Figures") and a
   typical plant.

    .venv/bin/python -m bench.hub_landing [--quick] [--events N] [--out FILE] [--write-docs]

Printed, and written as JSON (`bench/results.hub.json`, or `--out`); never asserted.
`--write-docs` renders the committed `bench/results.hub.reference.json` into
docs/performance.md, "Hub landing" (`render`, between its markers). `bench.run` (so `make
bench`) runs it too. Only loopback addresses; every wait is bounded; children (the hub, the
agent, mosquitto) are always ended.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.report import Results, Section, _measured_on, _number, _table
from bench.results import about_the_run, write
from bench.wire_formats import telemetry
from events.formats import FORMATS, FormatName
from events.wire import AgentIdentity, encode_body
from hub.store import HubStore
from testkit.agent_process import REPO, AgentProcess
from testkit.broker import MosquittoBroker
from testkit.postgres import scratch_database

AGENTS = 8
TARGET_PER_S = 30_000.0  # issue 17, item 5: at least the agents' combined peak, on 2 cores
BATCH_MAX_EVENTS = 500  # the agent's `[hub] batch_max_events` default
AGENT_MAX_INFLIGHT = 16  # the agent's `[hub] max_inflight` default (messages awaiting PUBACK)
# Events published and not yet landed, at most: what the simulated agents' forwarders would
# have in flight at their defaults (messages in flight x events per message, per agent).
WINDOW = AGENTS * AGENT_MAX_INFLIGHT * BATCH_MAX_EVENTS
FULL_EVENTS = 300_000
QUICK_EVENTS = 20_000
ONE_EVENT_SHARE = 10  # the binding modes (one event per message) get a tenth as many
GAP_ROUNDS_FULL, GAP_ROUNDS_QUICK = 3, 1
# Per-plant rates for item 3: the agent's live peak and moderate phase (docs/performance.md,
# "Figures": OPC UA, 1,000 items) and a plant of 500 tags changing once a second.
PLANT_RATES = (
    ("agent's measured live peak (OPC UA max rate, docs/performance.md)", 10_428.0),
    ("agent's moderate phase (2,000 changes/s)", 2_000.0),
    ("a plant of 500 tags changing once a second", 500.0),
)
# tests/hub/harness.py's hub_config: the settings the gap rounds run with.
_GAP_SETTINGS = {"check_interval_s": 0.3, "open_after_s": 1.0, "seqs_per_gap": 10}
_TICKS = os.sysconf("SC_CLK_TCK")
_POLL_S = 0.02
_NAMESPACE = uuid.UUID("0d5e2f4a-8c1b-4f7e-9b3a-61c0a7e5d222")


# -- the publisher -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stored:
    """A buffered event as `events.wire` reads it (`events.wire.StoredEvent`)."""

    seq: int
    id: str
    kind: str
    body: bytes


@dataclass(frozen=True, slots=True)
class _Message:
    client: int
    topic: str
    payload: bytes
    properties: Properties
    events: int


def _messages(name: FormatName, events: int, agents: int) -> list[_Message]:
    """Every message of the phase, encoded beforehand, agents interleaved round robin."""
    fmt = FORMATS[name]
    size = fmt.max_events_per_message or BATCH_MAX_EVENTS
    at = datetime.now(UTC) - timedelta(hours=1)
    per_agent: list[list[_Message]] = []
    for n in range(agents):
        identity = AgentIdentity(site=f"plant-{n + 1}", agent="edge-01")
        stored = []
        for seq in range(1, events // agents + 1):
            event = telemetry(seq, at)
            event_id = str(uuid.uuid5(_NAMESPACE, f"{n}/{seq}"))
            event = dataclasses.replace(event, id=event_id)
            body = encode_body(event, site=identity.site, agent=identity.agent)
            stored.append(_Stored(seq, event_id, event.type.name, body))
        mine = []
        for start in range(0, len(stored), size):
            wire = fmt.encode(stored[start:start + size], identity)
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.ContentType = wire.content_type
            if wire.user_properties:
                properties.UserProperty = list(wire.user_properties)
            mine.append(_Message(
                n, f"mfg/{identity.site}/{identity.agent}/events/telemetry", wire.payload,
                properties, len(stored[start:start + size]),
            ))
        per_agent.append(mine)
    interleaved: list[_Message] = []
    for index in range(max(len(m) for m in per_agent)):
        interleaved.extend(m[index] for m in per_agent if index < len(m))
    return interleaved


class Publisher:
    """One MQTT v5 client per simulated agent, fed from one thread, at most `WINDOW` events
    ahead of what landed (`landed`, set by the poller)."""

    def __init__(self, broker: MosquittoBroker, agents: int) -> None:
        self.clients = []
        for n in range(agents):
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"bench-agent-{n}",
                protocol=MQTTProtocolVersion.MQTTv5,
            )
            client.max_inflight_messages_set(64)
            client.connect(broker.host, broker.port)
            client.loop_start()
            self.clients.append(client)
        self.landed = 0
        self.published = 0
        self.started_at = 0.0
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, messages: Sequence[_Message]) -> None:
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(messages,), daemon=True)
        self._thread.start()

    def _run(self, messages: Sequence[_Message]) -> None:
        try:
            for message in messages:
                while self.published - self.landed > WINDOW:
                    time.sleep(0.002)
                info = self.clients[message.client].publish(
                    message.topic, message.payload, qos=1, properties=message.properties
                )
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    raise RuntimeError(f"publish failed: {mqtt.error_string(info.rc)}")
                self.published += message.events
        except BaseException as error:  # reported by the poller
            self.error = error

    def close(self) -> None:
        if self._thread is not None:
            self._thread.join(10)
        for client in self.clients:
            client.disconnect()
            client.loop_stop()


# -- CPU -----------------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def _backends(conn: asyncpg.Connection, database: str) -> dict[int, float]:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() "
        "AND backend_type = 'client backend'", database,
    )
    return {row["pid"]: cpu_s(row["pid"]) for row in rows}


# -- the hub process ---------------------------------------------------------------------------


def _hub_toml(path: Path, broker: MosquittoBroker, url: str, extra: str = "") -> Path:
    path.write_text(f"""
[broker]
url = "{broker.url}"
client_id = "bench-hub"

[database]
url = "{url}"
{extra}""")
    return path


class Hub:
    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Hub:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "hub", "run", "-c", str(self.config)],
                cwd=REPO, stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + 30
        while "hub ready" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the hub did not get ready:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


# -- 1. landing ----------------------------------------------------------------------------------


async def _landed(conn: asyncpg.Connection) -> int:
    value = await conn.fetchval("SELECT coalesce(sum(last_seq - first_seq + 1), 0) FROM seq_held")
    return int(value)


async def land_phase(
    name: FormatName, events: int, broker: MosquittoBroker, work: Path
) -> dict[str, Any]:
    print(f"hub landing: {name}, {events:,} events from {AGENTS} agents ...", file=sys.stderr,
          flush=True)
    messages = _messages(name, events, AGENTS)
    events = sum(m.events for m in messages)
    async with scratch_database("bench_hub") as url:
        database = url.rsplit("/", 1)[1]
        config = _hub_toml(work / f"hub-{name}.toml", broker, url)
        with Hub(config, work / f"hub-{name}.log") as hub:
            conn = await asyncpg.connect(url)
            publisher = Publisher(broker, AGENTS)
            try:
                backends_before = await _backends(conn, database)
                hub_before, broker_before = cpu_s(hub.pid), cpu_s(broker.pid or 0)
                own_before = time.process_time()
                publisher.start(messages)
                marks: dict[float, tuple[float, int]] = {}
                deadline = time.monotonic() + max(120.0, events / 2_000)
                landed = 0
                while landed < events:
                    if publisher.error is not None:
                        raise RuntimeError(f"publisher: {publisher.error}")
                    if time.monotonic() > deadline or hub.process is None or (
                        hub.process.poll() is not None
                    ):
                        raise RuntimeError(
                            f"{name}: {landed:,} of {events:,} events landed in time; hub log:\n"
                            f"{hub.log_tail()}"
                        )
                    await asyncio.sleep(_POLL_S)
                    landed = publisher.landed = await _landed(conn)
                    now = time.monotonic()
                    for share in (0.1, 0.9):
                        if share not in marks and landed >= share * events:
                            marks[share] = (now, landed)
                finished = time.monotonic()
                backends_after = await _backends(conn, database)
                hub_cpu = cpu_s(hub.pid) - hub_before
                broker_cpu = cpu_s(broker.pid or 0) - broker_before
                own_cpu = time.process_time() - own_before
                counts = await conn.fetchrow(
                    "SELECT count(*) AS n, count(DISTINCT id) AS d FROM events"
                )
            finally:
                publisher.close()
                await conn.close()
    postgres_cpu = sum(
        cpu - backends_before.get(pid, 0.0) for pid, cpu in backends_after.items()
    )
    seconds = finished - publisher.started_at
    hub_us, pg_us = hub_cpu / events * 1e6, postgres_cpu / events * 1e6
    broker_us = broker_cpu / events * 1e6
    return {
        "format": name,
        "agents": AGENTS,
        "events": events,
        "messages": len(messages),
        "events_per_message": events / len(messages),
        "seconds": seconds,
        "landed_per_s": events / seconds,
        "steady_per_s": _steady(marks),
        "hub_cpu_us_per_event": hub_us,
        "postgres_cpu_us_per_event": pg_us,
        "postgres_backends": len(backends_after),
        "mosquitto_cpu_us_per_event": broker_us,
        # What these CPU figures allow on 2 idle cores: the hub's one core, or both cores
        # shared by hub, PostgreSQL and mosquitto, whichever is less (the publisher, standing
        # in for agents on other machines, left out). An estimate, not a measurement.
        "cpu_ceiling_2_cores_per_s": min(
            1e6 / max(hub_us, 1e-9), 2e6 / max(hub_us + pg_us + broker_us, 1e-9)
        ),
        "publisher_cpu_us_per_event": own_cpu / events * 1e6,
        "rows": counts["n"],
        "distinct_ids": counts["d"],
        "exactly_once": counts["n"] == counts["d"] == events,
    }


def _steady(marks: dict[float, tuple[float, int]]) -> float:
    """Events/s between the polls that saw 10 % and 90 % landed (NaN: the same poll)."""
    (start, low), (end, high) = marks[0.1], marks[0.9]
    return (high - low) / (end - start) if end > start and high > low else float("nan")


def run_landing(
    events: int, work: Path, only: Sequence[str] = ()
) -> list[dict[str, Any]]:
    results = []
    with MosquittoBroker(["max_queued_messages 0"]) as broker:
        for name, fmt in FORMATS.items():
            if only and name not in only:
                continue
            count = events if fmt.max_events_per_message is None else events // ONE_EVENT_SHARE
            results.append(asyncio.run(land_phase(name, max(count, AGENTS * 100), broker, work)))
    return results


# -- 2. gap healing ------------------------------------------------------------------------------


async def _gap_round(
    url: str, first: int, last: int, last_seq: int, site: str, agent: str
) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("DELETE FROM events WHERE seq BETWEEN $1 AND $2", first, last)
            await conn.execute("DELETE FROM event_ids WHERE seq BETWEEN $1 AND $2", first, last)
        async with HubStore.open(url, pool_size=1) as store:
            await store.rebuild_held(site, agent)
        injected = time.monotonic()
        seen: dict[str, float] = {}
        deadline = injected + 60
        while "healed" not in seen:
            if time.monotonic() > deadline:
                raise RuntimeError(f"gap {first}-{last} not healed within 60 s: {seen}")
            await asyncio.sleep(_POLL_S)
            now = time.monotonic() - injected
            if "detected" not in seen and await conn.fetchval(
                "SELECT count(*) FROM gaps WHERE first_seq = $1 AND last_seq = $2", first, last
            ):
                seen["detected"] = now
            outcomes = {
                row["outcome"] for row in await conn.fetch(
                    "SELECT outcome FROM replay_requests WHERE first_seq = $1 AND last_seq = $2",
                    first, last,
                )
            }
            if outcomes and "requested" not in seen:
                seen["requested"] = now
            if "answered" in outcomes and "answered" not in seen:
                seen["answered"] = now
            held = await conn.fetch("SELECT first_seq, last_seq FROM seq_held")
            if [(r["first_seq"], r["last_seq"]) for r in held] == [(1, last_seq)]:
                seen["healed"] = now
        requests = await conn.fetchval(
            "SELECT count(*) FROM replay_requests WHERE first_seq = $1 AND last_seq = $2",
            first, last,
        )
    finally:
        await conn.close()
    return {"first_seq": first, "last_seq": last, "requests": requests,
            **{f"{key}_s": value for key, value in seen.items()}}


async def run_gaps(rounds: int, work: Path) -> dict[str, Any]:
    # The tests' harness: the same agent and hub configurations the gap tests run.
    from tests.hub.harness import (
        AGENT,
        SITE,
        HubProcess,
        agent_config,
        hub_config,
        hub_keys,
        pause_source,
        wait_complete,
        wait_until,
    )

    print(f"hub gaps: {rounds} injected gap(s) ...", file=sys.stderr, flush=True)
    results = []
    with MosquittoBroker() as broker:
        async with scratch_database("bench_gaps") as url:
            private, public = hub_keys(work / "keys")
            hub = HubProcess(hub_config(work / "gaps-hub.toml", broker, url, key_file=private),
                             work / "gaps-hub.log")
            agent = AgentProcess(agent_config(work / "gaps-agent", broker, public),
                                 work / "gaps-agent.log")
            try:
                hub.start()
                hub.wait_log("hub ready")
                agent.start()

                async def enough() -> bool:
                    conn = await asyncpg.connect(url)
                    try:
                        return bool(await conn.fetchval(
                            "SELECT count(*) >= 50 * $1 FROM event_ids", rounds + 1
                        ))
                    finally:
                        await conn.close()

                await wait_until(enough, "enough events landed", timeout=60)
                await pause_source(broker, private)
                last_seq = await wait_complete(url, agent.config, timeout=60)
                for n in range(rounds):
                    first = 10 + 50 * n
                    results.append(await _gap_round(url, first, first + 9, last_seq, SITE,
                                                    AGENT))
            finally:
                agent.ensure_stopped()
                hub.ensure_stopped()
    return {**_GAP_SETTINGS, "rounds": results}


# -- 3. plants per hub process ----------------------------------------------------------------


def plants(landing: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    msgpack = [row for row in landing if row["format"] == "cloudevents-batch-msgpack"]
    if not msgpack:
        return []
    rate = msgpack[0]["steady_per_s"]
    if rate != rate:  # NaN: too few polls in between (a quick run); the whole phase's rate
        rate = msgpack[0]["landed_per_s"]
    return [{"plant": label, "events_per_s": per_plant, "plants": rate / per_plant}
            for label, per_plant in PLANT_RATES]


# -- the run ---------------------------------------------------------------------------------------


def run_hub_landing(
    events: int, work: Path, gap_rounds: int, only: Sequence[str] = ()
) -> dict[str, Any]:
    """Items 1 to 3 of the module docstring, in one run (`bench.run` calls this)."""
    landing = run_landing(events, work, only)
    gaps = asyncio.run(run_gaps(gap_rounds, work)) if gap_rounds else {**_GAP_SETTINGS,
                                                                        "rounds": []}
    msgpack = [row for row in landing if row["format"] == "cloudevents-batch-msgpack"]
    target = None
    if msgpack:
        value = msgpack[0]["steady_per_s"]
        value = msgpack[0]["landed_per_s"] if value != value else value  # NaN: quick run
        target = {"target": "msgpack batches landed by one hub process", "value": value,
                  "limit": TARGET_PER_S, "unit": "events/s", "pass": bool(value >= TARGET_PER_S)}
    return {"landing": landing, "gaps": gaps, "plants": plants(landing), "target": target,
            "window_events": WINDOW, "batch_max_events": BATCH_MAX_EVENTS}


def print_table(results: dict[str, Any]) -> None:
    print(f"\nHub landing: loopback publisher ({AGENTS} agents) → mosquitto → one `edge-agent "
          "hub run` process → PostgreSQL")
    print(f"{'format':<26} {'events':>8} {'ev/msg':>6} {'landed ev/s':>12} {'steady ev/s':>12} "
          f"{'hub µs/ev':>10} {'pg µs/ev':>9} {'mqtt µs/ev':>10} {'ceiling/s':>10} {'once':>5}")
    for row in results["landing"]:
        print(f"{row['format']:<26} {row['events']:>8,} {row['events_per_message']:>6.0f} "
              f"{row['landed_per_s']:>12,.0f} {row['steady_per_s']:>12,.0f} "
              f"{row['hub_cpu_us_per_event']:>10.1f} {row['postgres_cpu_us_per_event']:>9.1f} "
              f"{row['mosquitto_cpu_us_per_event']:>10.1f} "
              f"{row['cpu_ceiling_2_cores_per_s']:>10,.0f} "
              f"{'yes' if row['exactly_once'] else 'NO':>5}")
    gaps = results["gaps"]
    print(f"\nGap healing (check_interval_s {gaps['check_interval_s']}, open_after_s "
          f"{gaps['open_after_s']}), seconds after the gap was made:")
    for row in gaps["rounds"]:
        print(f"  seq {row['first_seq']}-{row['last_seq']}: gap row {row['detected_s']:.2f}, "
              f"replay requested {row['requested_s']:.2f}, answered "
              f"{row.get('answered_s', float('nan')):.2f}, healed {row['healed_s']:.2f} "
              f"({row['requests']} request(s))")
    target = results.get("target")
    if target:
        print(f"\nTarget: {target['target']}: {target['value']:,.0f} {target['unit']} "
              f"(≥ {target['limit']:,.0f}): {'met' if target['pass'] else 'NOT met'}")
    print("\nPlants one hub process serves (steady msgpack landing rate ÷ a plant's rate):")
    for row in results["plants"]:
        print(f"  {row['plants']:>7,.1f}  at {row['events_per_s']:,.0f} events/s: {row['plant']}")


# -- docs ----------------------------------------------------------------------------------------


def render(results: Results) -> str:
    """The Markdown of the "Hub landing" tables, for one results file (ends with a newline)."""
    conditions = (
        f"{results['landing'][0]['agents']} simulated agents, agent batches of "
        f"{results['batch_max_events']} events, at most {_number(results['window_events'], 0)} "
        "events published and not yet landed, the hub's default `[landing]` and `[database]` "
        "settings"
    )
    landing = _table(
        ["format", "events", "events/message", "landed events/s", "steady events/s",
         "hub CPU µs/event", "PostgreSQL CPU µs/event", "mosquitto CPU µs/event",
         "CPU ceiling, 2 idle cores", "exactly once"],
        "-|-:|-:|-:|-:|-:|-:|-:|-:|-",
        [[f"`{row['format']}`", _number(row["events"], 0), _number(row["events_per_message"], 0),
          _number(row["landed_per_s"], 0), _number(row["steady_per_s"], 0),
          _number(row["hub_cpu_us_per_event"], 1), _number(row["postgres_cpu_us_per_event"], 1),
          _number(row["mosquitto_cpu_us_per_event"], 1),
          _number(row.get("cpu_ceiling_2_cores_per_s", float("nan")), 0),
          "yes" if row["exactly_once"] else "**no**"]
         for row in results["landing"]],
    )
    gaps = results["gaps"]
    healing = _table(
        ["gap (10 seqs)", "gap row", "replay requested", "answered", "held again",
         "requests"],
        "-|-:|-:|-:|-:|-:",
        [[f"seq {row['first_seq']}-{row['last_seq']}", f"{_number(row['detected_s'], 2)} s",
          f"{_number(row['requested_s'], 2)} s",
          f"{_number(row.get('answered_s', float('nan')), 2)} s",
          f"{_number(row['healed_s'], 2)} s", _number(row["requests"], 0)]
         for row in gaps["rounds"]],
    )
    served = _table(
        ["a plant sending", "events/s per plant", "plants per hub process"],
        "-|-:|-:",
        [[row["plant"], _number(row["events_per_s"], 0), _number(row["plants"], 1)]
         for row in results["plants"]],
    )
    target = results.get("target")
    verdict = "" if not target else (
        f"Target (issue 17): {target['target']} ≥ {_number(target['limit'], 0)} "
        f"{target['unit']} on 2 cores: {_number(target['value'], 0)} {target['unit']}, "
        + ("met." if target["pass"] else "not met on this run.")
    )
    return "\n\n".join([
        _measured_on(results, "bench.hub_landing", conditions), landing,
        *([verdict] if verdict else []),
        f"Gap healing, seconds after the gap was made (`check_interval_s = "
        f"{gaps['check_interval_s']}`, `open_after_s = {gaps['open_after_s']}`):", healing,
        served,
    ]) + "\n"


_DO_NOT_EDIT = "(python -m bench.hub_landing --write-docs; do not edit by hand)"
SECTION = Section(
    "bench.hub_landing", REPO / "bench" / "results.hub.reference.json", render,
    f"<!-- bench.hub_landing: BEGIN {_DO_NOT_EDIT} -->", "<!-- bench.hub_landing: END -->",
)


def write_docs() -> None:
    from bench.report import PERFORMANCE_DOC

    results = json.loads(SECTION.reference.read_text())
    text = PERFORMANCE_DOC.read_text()
    PERFORMANCE_DOC.write_text(SECTION.replaced(text, render(results)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_EVENTS:,} events per batch format, one gap")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results.hub.json")
    parser.add_argument("--only", nargs="*", default=(), choices=sorted(FORMATS),
                        help="these formats only")
    parser.add_argument("--gaps", type=int, default=None, help="injected gaps (0: none)")
    parser.add_argument("--note", default="", help="a remark on the run's conditions, kept with "
                        "the figures (shown under the docs' 'Measured' line)")
    parser.add_argument("--write-docs", action="store_true",
                        help="render the reference results into docs/performance.md and exit")
    args = parser.parse_args()
    if args.write_docs:
        write_docs()
        return
    events = args.events or (QUICK_EVENTS if args.quick else FULL_EVENTS)
    started = time.monotonic()
    results = {"benchmark": "bench.hub_landing",
               **about_the_run("quick" if args.quick else "full")}
    if args.note:
        results["note"] = args.note
    with tempfile.TemporaryDirectory(prefix="bench-hub-") as work:
        rounds = args.gaps if args.gaps is not None else (
            GAP_ROUNDS_QUICK if args.quick else GAP_ROUNDS_FULL
        )
        results.update(run_hub_landing(events, Path(work), rounds, args.only))
    results["seconds"] = time.monotonic() - started
    print_table(results)
    write(args.out, results)
    print(f"\n{results['seconds']:.0f} s; figures written to {args.out}")


if __name__ == "__main__":
    main()
