"""The agent's `/metrics` (issue 20), scraped from a real agent process (simulated source, real
mosquitto) and read with prometheus_client's own parsers, never with our code.

- The figures are the agent's: with the source paused (a signed `pause`) and the buffer
  drained, every scraped counter equals what the agent's full status (`remote status`) says,
  exactly; the PUBACK latency histogram counted one observation per published message; the
  command counters saw the `pause` accepted and an unsigned `pause` refused; the process
  metrics match /proc.
- OpenMetrics when the Accept header asks for it.
- Labels are bounded: only the known label names, `source` only the configured source.
- Basic auth: no credentials and wrong ones get 401, on every path.
- Off by default: an agent without `[web]` has no listening socket at all.
- TLS: HTTPS with the configured certificate (a client trusting another CA is refused); a
  password file that is not there stops the start, naming `web.password_file`.
- A reload (SIGHUP) serves again on the same port.
"""

from __future__ import annotations

import base64
import os
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker, free_loopback_port
from testkit.commands import Requester
from testkit.tls import make_pki
from tests.hub.harness import AGENT, SITE, hub_keys, signed, wait_until

USER, PASSWORD = "plant-it", "s3cret pass:word"
ALLOWED_LABELS = {"source", "class", "reason", "command", "state", "site", "agent", "version",
                  "format", "le"}


def agent_toml(home: Path, broker: MosquittoBroker, public_key: Path | None, web: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    keys = f'[commands.keys]\nhub = "{public_key}"\n\n[commands.allow]\npause = ["hub"]\n' if (
        public_key is not None) else ""
    path = home / "agent.toml"
    path.write_text(f"""
[agent]
site = "{SITE}"
id = "{AGENT}"
state_dir = "{home / 'state'}"
shutdown_grace_s = 5

[hub]
url = "{broker.url}"
topic_prefix = "mfg"
reconnect_min_s = 0.2
reconnect_max_s = 1.0
batch_max_events = 10
batch_max_wait_ms = 10
status_interval_s = 1

{keys}
{web}

[[sources]]
name = "sim"
type = "simulated"
rate_hz = 20

  [[sources.signals]]
  node = "counter"
  event = "production.count"
  asset = "line1/filler"
  name = "good"
""")
    return path


def web_section(home: Path, port: int) -> str:
    (home / "web-password").write_text(PASSWORD + "\n")
    return f"""
[web]
enabled = true
port = {port}
username = "{USER}"
password_file = "web-password"
"""


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    timeout = aiohttp.ClientTimeout(total=20)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
            url, headers=headers or {}
        ) as response:
            return response.status, response.headers.get("Content-Type", ""), await response.text()
    except aiohttp.ClientConnectionError:
        return 0, "", ""


def families(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(found: dict[str, Metric], sample_name: str, **labels: str) -> float:
    """The one sample `sample_name` with exactly these labels (besides none other)."""
    for family in found.values():
        for sample in family.samples:
            if sample.name == sample_name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no sample {sample_name}{labels}")


async def scrape(base: str) -> dict[str, Metric]:
    status, content_type, body = await get(f"{base}metrics", basic(USER, PASSWORD))
    assert status == 200, (status, body)
    assert content_type.startswith("text/plain"), content_type
    return families(body)


async def test_metrics_are_the_agents_counters(tmp_path: Path, broker: MosquittoBroker) -> None:
    private, public = hub_keys(tmp_path / "keys")
    port = free_loopback_port()
    home = tmp_path / "agent"
    home.mkdir()
    agent = AgentProcess(agent_toml(home, broker, public, web_section(home, port)),
                         tmp_path / "agent.log")
    base = f"http://127.0.0.1:{port}/"
    try:
        agent.start()

        async def flowing() -> dict[str, Metric] | None:
            status, _type, body = await get(f"{base}metrics", basic(USER, PASSWORD))
            if status != 200:
                return None
            found = families(body)
            acked = value(found, "edge_agent_forwarder_events_acked_total")
            return found if acked >= 20 else None

        await wait_until(flowing, "the endpoint up and events acked", 30)
        agent.wait_log("web: serving http://127.0.0.1:")

        # Basic auth on every path: none, a wrong password, a wrong user.
        for path in ("metrics", ""):
            for headers in ({}, basic(USER, "wrong"), basic("someone", PASSWORD)):
                status, _type, body = await get(f"{base}{path}", headers)
                assert status == 401, (path, headers, status, body)
            assert (await get(f"{base}{path}", basic(USER, PASSWORD)))[0] == 200

        with Requester(broker, f"mfg/{SITE}/{AGENT}") as requester:
            refused = await requester.ask_async("pause", {"source": "sim"})  # unsigned
            assert not refused["ok"], refused
            reason = refused["error"]["reason"]
            answer = await requester.ask_async(
                "pause", signed(private, "pause", {"source": "sim"}))
            assert answer["ok"], answer

            async def settled() -> dict[str, Metric] | None:
                found = await scrape(base)
                quiet = (value(found, "edge_agent_buffer_pending_events", **{"class": "telemetry"})
                         == 0 and value(found, "edge_agent_forwarder_inflight_messages") == 0)
                return found if quiet else None

            await wait_until(settled, "the paused agent's buffer drained", 30)
            full = await requester.ask_async("status", {})
        assert full["ok"], full
        document: dict[str, Any] = full["result"]
        found = await scrape(base)

        # Every counter equals the agent's own (status) figure: nothing moves while paused.
        source = document["sources"]["sim"]
        assert source["state"] == "paused"
        assert value(found, "edge_agent_source_readings_total", source="sim") == (
            source["readings_total"]) > 0
        assert value(found, "edge_agent_source_state", source="sim", state="paused") == 1
        assert value(found, "edge_agent_source_state", source="sim", state="running") == 0
        assert value(found, "edge_agent_source_connected", source="sim") == 0
        assert value(found, "edge_agent_source_errors_total", source="sim") == 0
        pipeline, forwarder = document["pipeline"], document["forwarder"]
        assert value(found, "edge_agent_readings_total") == pipeline["readings_total"]
        assert value(found, "edge_agent_events_accepted_total") == (
            pipeline["events_accepted_total"]) > 0
        assert value(found, "edge_agent_records_rejected_total") == (
            pipeline["records_rejected_total"])
        acked = value(found, "edge_agent_forwarder_events_acked_total")
        assert acked == forwarder["events_forwarded_total"] == pipeline["events_accepted_total"]
        assert value(found, "edge_agent_forwarder_events_dead_lettered_total") == (
            forwarder["events_dead_lettered_total"]) == 0
        assert value(found, "edge_agent_hub_connected") == 1
        assert value(found, "edge_agent_hub_connections_total") >= 1
        buffer = document["buffer"]
        for name, entry in buffer["classes"].items():
            assert value(found, "edge_agent_buffer_pending_events", **{"class": name}) == (
                entry["pending"]) == 0
        assert value(found, "edge_agent_buffer_dead_letters") == buffer["dead_letters"]
        assert value(found, "edge_agent_buffer_last_seq") == buffer["last_seq"] > 0

        # One PUBACK latency observation per message published (all settled, no reconnect).
        published = value(found, "edge_agent_forwarder_messages_published_total")
        assert published >= acked / 10 > 0  # batch_max_events = 10
        assert value(found, "edge_agent_forwarder_puback_latency_seconds_count") == published
        assert value(found, "edge_agent_forwarder_puback_latency_seconds_bucket",
                     le="+Inf") == published
        assert value(found, "edge_agent_forwarder_puback_latency_seconds_sum") > 0

        # Commands: the signed pause accepted, the unsigned one refused with its reason.
        assert value(found, "edge_agent_commands_accepted_total", command="pause") == 1
        assert value(found, "edge_agent_commands_refused_total", reason=reason) == 1

        # The process, as /proc says.
        fds = len(os.listdir(f"/proc/{agent.pid}/fd"))
        assert abs(value(found, "process_open_fds") - fds) <= 8, fds
        rss_kib = vm_rss_kib(agent.pid)
        rss = value(found, "process_resident_memory_bytes")
        assert 0.5 * rss_kib * 1024 < rss < 2 * rss_kib * 1024, (rss, rss_kib)
        assert value(found, "process_cpu_seconds_total") > 0

        # Conventions: counters end in _total, labels bounded, one series per source.
        for family in found.values():
            for sample in family.samples:
                assert set(sample.labels) <= ALLOWED_LABELS, sample
                if "source" in sample.labels:
                    assert sample.labels["source"] == "sim", sample
            if family.type == "counter" and family.name.startswith("edge_agent_"):
                assert all(s.name.endswith(("_total", "_created")) for s in family.samples)

        # OpenMetrics by content negotiation, read with the OpenMetrics parser.
        headers = {**basic(USER, PASSWORD), "Accept": "application/openmetrics-text"}
        status, content_type, body = await get(f"{base}metrics", headers)
        assert status == 200 and content_type.startswith("application/openmetrics-text")
        assert body.endswith("# EOF\n")
        parsed = openmetrics_families(body)  # type: ignore[no-untyped-call]  # untyped upstream
        names = {family.name for family in parsed}
        assert {"edge_agent_source_readings", "edge_agent_forwarder_puback_latency_seconds",
                "edge_agent_buffer_pending_events"} <= names
    finally:
        agent.ensure_stopped()


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def listening_sockets(pid: int) -> list[str]:
    """The TCP sockets process `pid` listens on (its descriptors, matched to /proc/net)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.append(fields[1])
    return found


async def test_off_by_default_no_port_is_opened(tmp_path: Path, broker: MosquittoBroker) -> None:
    home = tmp_path / "agent"
    agent = AgentProcess(agent_toml(home, broker, None, ""), tmp_path / "agent.log")
    try:
        agent.start()
        agent.wait_log("running: 1 source(s)")
        # Running and forwarding (a status with forwarded events) before looking.
        with Requester(broker, f"mfg/{SITE}/{AGENT}") as requester:

            async def forwarding() -> dict[str, Any] | None:
                # "running" is logged before the command subscription is made: a request sent
                # before it is not delivered to the agent, so an unanswered one is asked again.
                try:
                    answer = await requester.ask_async("status", {}, timeout=3.0)
                except TimeoutError:
                    return None
                forwarded = answer["result"]["forwarder"]["events_forwarded_total"]
                return answer if forwarded > 0 else None

            await wait_until(forwarding, "events forwarded", 30)
        assert listening_sockets(agent.pid) == []
        assert "web:" not in agent.log_text()
    finally:
        agent.ensure_stopped()


async def test_tls_serves_https_only(tmp_path: Path, broker: MosquittoBroker) -> None:
    pki = make_pki(tmp_path / "pki")
    port = free_loopback_port()
    home = tmp_path / "agent"
    web = f"""
[web]
enabled = true
port = {port}
tls_cert = "{pki.server_cert}"
tls_key = "{pki.server_key}"
"""
    agent = AgentProcess(agent_toml(home, broker, None, web), tmp_path / "agent.log")
    trusted = ssl.create_default_context(cafile=str(pki.ca))
    timeout = aiohttp.ClientTimeout(total=20)
    try:
        agent.start()
        agent.wait_log(f"web: serving https://127.0.0.1:{port}/")

        async def scraped() -> str | None:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                f"https://127.0.0.1:{port}/metrics", ssl=trusted
            ) as response:
                return await response.text() if response.status == 200 else None

        body = await wait_until(scraped, "a scrape over TLS", 20)
        assert value(families(body), "edge_agent_source_readings_total", source="sim") >= 0
        # Plain HTTP on the TLS port gets no page; a client that does not trust the CA is
        # refused by the handshake.
        assert (await get(f"http://127.0.0.1:{port}/metrics"))[0] in (0, 400)
        untrusted = ssl.create_default_context(cafile=str(pki.other_ca))
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                f"https://127.0.0.1:{port}/metrics", ssl=untrusted
            ):
                pass
    finally:
        agent.ensure_stopped()


async def test_a_missing_password_file_stops_the_start_naming_the_key(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    home = tmp_path / "agent"
    web = '[web]\nenabled = true\nport = 0\nusername = "u"\npassword_file = "nowhere"\n'
    agent = AgentProcess(agent_toml(home, broker, None, web), tmp_path / "agent.log")
    try:
        agent.start()
        assert agent.wait_exit(30) != 0
        assert "web.password_file" in agent.log_text(), agent.log_text()[-2000:]
    finally:
        agent.ensure_stopped()


async def test_a_reload_serves_again_on_the_same_port(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """SIGHUP builds a new generation: the old server closes its port, the new one binds it and
    scrapes go on (the counters of the new generation start again, a counter reset)."""
    port = free_loopback_port()
    home = tmp_path / "agent"
    home.mkdir()
    config = agent_toml(home, broker, None, web_section(home, port))
    agent = AgentProcess(config, tmp_path / "agent.log")
    base = f"http://127.0.0.1:{port}/"
    try:
        agent.start()
        agent.wait_log("web: serving")
        first = await wait_until(lambda: scrape_ok(base), "a first scrape", 20)
        assert value(first, "edge_agent_source_readings_total", source="sim") >= 0
        served = agent.log_text().count("web: serving")
        offset = len(agent.log_text())
        agent.hup()
        await wait_until(
            lambda: _async(agent.log_text()[offset:].count("web: serving") >= 1),
            "the new generation serving", 30)
        assert agent.log_text().count("web: serving") == served + 1
        after = await wait_until(lambda: scrape_ok(base), "a scrape after the reload", 20)
        assert value(after, "edge_agent_hub_connections_total") >= 0
    finally:
        agent.ensure_stopped()


async def scrape_ok(base: str) -> dict[str, Metric] | None:
    status, _type, body = await get(f"{base}metrics", basic(USER, PASSWORD))
    return families(body) if status == 200 else None


async def _async(result: bool) -> bool:
    return result
