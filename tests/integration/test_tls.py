"""The hub connection's security against a real mosquitto: a TLS listener with certificates made
by `cryptography` (testkit/tls.py), mTLS, username/password from a systemd-style
credentials directory, and MQTT v5 session expiry across a real link outage (a TCP proxy that
is cut while the broker stays up)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent.link.mqtt_session import MqttSession
from agent.link.status import offline_payload
from agent.service.credentials import CredentialError, hub_credentials
from config.schema import HubSection
from testkit.broker import MosquittoBroker
from testkit.tcp_proxy import TcpProxy
from testkit.tls import Pki, make_pki, tls_listener_conf


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    directory = Path(tempfile.mkdtemp(prefix="edge-agent-pki-"))
    directory.chmod(0o755)  # mosquitto reads the files after dropping to its own user
    try:
        yield make_pki(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def tls_broker(pki: Pki) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tls_listener_conf(pki)) as broker:
        yield broker


@asynccontextmanager
async def hub_session(hub: HubSection, **options: Any) -> AsyncIterator[MqttSession]:
    credentials = hub_credentials(hub)
    session = MqttSession(
        host=hub.host, port=hub.port, client_id="edge-agent-tls-test",
        tls=credentials.tls, username=credentials.username, password=credentials.password,
        session_expiry_s=hub.session_expiry_s,
        connect_timeout_s=3.0, reconnect_min_s=0.2, reconnect_max_s=0.5, **options,
    )
    async with session:
        yield session


async def wait_failure(session: MqttSession, limit_s: float = 10.0) -> str:
    """The session's reason for not connecting, once it has one (bounded)."""
    assert not await session.wait_connected(timeout=1.0), "connected, expected a refusal"
    deadline = limit_s
    while session.last_error is None and deadline > 0:
        await session.wait_connected(timeout=0.2)
        deadline -= 0.2
    assert session.last_error is not None
    return session.last_error


def tls_hub(broker: MosquittoBroker, **settings: Any) -> HubSection:
    return HubSection(url=f"mqtts://127.0.0.1:{broker.port}", **settings)


async def test_client_certificate_from_the_right_ca_connects_and_publishes(
    pki: Pki, tls_broker: MosquittoBroker
) -> None:
    hub = tls_hub(
        tls_broker, ca_file=str(pki.ca), cert_file=str(pki.client_cert),
        key_file=str(pki.client_key),
    )
    async with hub_session(hub) as session:
        assert await session.wait_connected(timeout=10.0), session.last_error
        ack = await session.publish("mfg/plant-a/edge-01/events/test", b"x", qos=1)
        assert ack.ok


async def test_broker_certificate_from_another_ca_is_refused_with_a_clear_error(
    pki: Pki, tls_broker: MosquittoBroker
) -> None:
    hub = tls_hub(
        tls_broker, ca_file=str(pki.other_ca), cert_file=str(pki.client_cert),
        key_file=str(pki.client_key),
    )
    async with hub_session(hub) as session:
        error = await wait_failure(session)
    assert "TLS: the broker's certificate is not trusted" in error
    assert "check hub.ca_file" in error
    assert "CERTIFICATE_VERIFY_FAILED" in error


async def test_expired_client_certificate_is_refused_with_a_clear_error(
    pki: Pki, tls_broker: MosquittoBroker
) -> None:
    hub = tls_hub(
        tls_broker, ca_file=str(pki.ca), cert_file=str(pki.expired_cert),
        key_file=str(pki.expired_key),
    )
    async with hub_session(hub) as session:
        error = await wait_failure(session)
    assert "the broker refused this agent's certificate: it has expired" in error


async def test_missing_client_certificate_is_refused_with_a_clear_error(
    pki: Pki, tls_broker: MosquittoBroker
) -> None:
    async with hub_session(tls_hub(tls_broker, ca_file=str(pki.ca))) as session:
        error = await wait_failure(session)
    assert "the broker requires a client certificate" in error


def test_unusable_key_files_fail_before_connecting(pki: Pki, tmp_path: Path) -> None:
    mismatched = HubSection(  # the key of another certificate
        url="mqtts://127.0.0.1:8883", ca_file=str(pki.ca), cert_file=str(pki.client_cert),
        key_file=str(pki.expired_key),
    )
    with pytest.raises(CredentialError, match="are not a matching PEM certificate"):
        hub_credentials(mismatched)
    missing = HubSection(url="mqtts://127.0.0.1:8883", ca_file=str(tmp_path / "nope.pem"))
    with pytest.raises(CredentialError, match=r"hub.ca_file: .*nope.pem does not exist"):
        hub_credentials(missing)
    not_a_ca = tmp_path / "garbage.pem"
    not_a_ca.write_text("not a certificate\n")
    with pytest.raises(CredentialError, match=r"hub.ca_file: .* no usable CA certificate"):
        hub_credentials(HubSection(url="mqtts://127.0.0.1:8883", ca_file=str(not_a_ca)))


def password_file_text(directory: Path, user: str, password: str) -> str:
    """A mosquitto password file (hashed by mosquitto_passwd, shipped with mosquitto)."""
    path = directory / "passwords"
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([tool, "-b", "-c", str(path), user, password], check=True, timeout=30)
    return path.read_text()


async def test_username_and_password_from_a_systemd_credential(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passwords = password_file_text(tmp_path, "edge-01", "s3cret")
    credentials = tmp_path / "credentials"  # what systemd's LoadCredential= makes
    credentials.mkdir()
    (credentials / "mqtt-password").write_text("s3cret\n")
    (credentials / "wrong-password").write_text("guess\n")
    (credentials / "client.key").write_text(pki.client_key.read_text())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    conf = [*tls_listener_conf(pki), "allow_anonymous false", "password_file {workdir}/passwords"]
    with MosquittoBroker(conf, files={"passwords": passwords}) as broker:
        common = {
            "ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
            "key_file": "credential:client.key", "username": "edge-01",
        }
        hub = tls_hub(broker, password="credential:mqtt-password", **common)
        async with hub_session(hub) as session:
            assert await session.wait_connected(timeout=10.0), session.last_error
        wrong = tls_hub(broker, password="credential:wrong-password", **common)
        async with hub_session(wrong) as session:
            error = await wait_failure(session)
        assert "connection refused by broker" in error
        assert "0x86" in error or "0x87" in error  # bad user name or password / not authorized


def test_a_secret_reference_that_cannot_be_read_says_which_key_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    hub = HubSection(url="mqtt://127.0.0.1:1883", username="u", password="credential:mqtt")
    with pytest.raises(CredentialError, match=r"hub.password: .*CREDENTIALS_DIRECTORY is not set"):
        hub_credentials(hub)
    (tmp_path / "empty").write_text("\n")
    hub = HubSection(url="mqtt://127.0.0.1:1883", username="u", password=f"file:{tmp_path}/empty")
    with pytest.raises(CredentialError, match=r"hub.password: .*empty is empty"):
        hub_credentials(hub)
    hub = HubSection(url="mqtt://127.0.0.1:1883", username="u", password=f"file:{tmp_path}/no")
    with pytest.raises(CredentialError, match=r"hub.password: .*no does not exist"):
        hub_credentials(hub)


@pytest.mark.parametrize("expiry_s", [60, 0])
async def test_session_expiry_keeps_subscription_and_queued_messages_across_a_link_outage(
    broker: MosquittoBroker, expiry_s: int
) -> None:
    proxy = TcpProxy(broker.port)
    await proxy.start()
    received: list[bytes] = []
    try:
        session = MqttSession(
            host="127.0.0.1", port=proxy.port, client_id=f"edge-agent-expiry-{expiry_s}",
            session_expiry_s=expiry_s, reconnect_min_s=0.2, reconnect_max_s=0.5,
            on_message=lambda topic, payload, props: received.append(payload),
        )
        async with session:
            assert await session.wait_connected(timeout=10.0)
            assert session.session_present is False  # the first connection is always clean
            await session.subscribe("mfg/plant-a/edge-01/cmd/#", qos=1)
            await proxy.cut()
            assert await session.wait_disconnected(timeout=10.0)
            # While the link is down, the hub sends the agent a command (QoS 1).
            publish_direct(broker, "mfg/plant-a/edge-01/cmd/ping", b"while-away")
            await proxy.restore()
            assert await session.wait_connected(timeout=10.0), session.last_error
            assert session.session_present is (expiry_s > 0)
            # The agent's own publishing is unaffected by a resumed session.
            assert (await session.publish("mfg/plant-a/edge-01/events/x", b"1", qos=1)).ok
            publish_direct(broker, "mfg/plant-a/edge-01/cmd/ping", b"after")
            for _ in range(100):
                if b"after" in received:
                    break
                await session.wait_disconnected(timeout=0.05)
    finally:
        await proxy.close()
    assert b"after" in received  # the (re-made) subscription works either way
    assert (b"while-away" in received) is (expiry_s > 0)


def publish_direct(broker: MosquittoBroker, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(timeout=5.0)
    finally:
        client.disconnect()
        client.loop_stop()


def fleet_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "fleet", "--json", "--timeout", "5", *args],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60,
    )


async def test_the_hub_tools_connect_with_tls_client_certificate_and_password(
    pki: Pki, tmp_path: Path
) -> None:
    """`edge-agent fleet` (and every hub tool: they share the options) against a broker that
    wants mTLS and a password, as the agent's own `[hub]` does."""
    passwords = password_file_text(tmp_path, "hub-ops", "s3cret")
    (tmp_path / "password").write_text("s3cret\n")
    (tmp_path / "wrong").write_text("guess\n")
    conf = [*tls_listener_conf(pki), "allow_anonymous false", "password_file {workdir}/passwords"]
    with MosquittoBroker(conf, files={"passwords": passwords}) as broker:
        hub = tls_hub(
            broker, ca_file=str(pki.ca), cert_file=str(pki.client_cert),
            key_file=str(pki.client_key), username="hub-ops",
            password=f"file:{tmp_path / 'password'}",
        )
        async with hub_session(hub) as session:
            assert await session.wait_connected(timeout=10.0), session.last_error
            ack = await session.publish(
                "mfg/plant-a/edge-09/status", offline_payload("plant-a", "edge-09", "stopped"),
                qos=1, retain=True,
            )
            assert ack.ok
        options = [
            "--hub", f"mqtts://127.0.0.1:{broker.port}", "--ca-file", str(pki.ca),
            "--client-cert", str(pki.client_cert), "--client-key", str(pki.client_key),
            "--username", "hub-ops",
        ]
        fleet = fleet_cli(*options, "--password-file", str(tmp_path / "password"))
        refused = fleet_cli(*options, "--password-file", str(tmp_path / "wrong"))
        untrusted = fleet_cli(*options[:2], "--ca-file", str(pki.other_ca), *options[4:],
                              "--password-file", str(tmp_path / "password"))
        no_cert = fleet_cli(*options[:4], "--client-key", str(pki.client_key))

    assert fleet.returncode == 0, fleet.stderr
    [row] = [json.loads(line) for line in fleet.stdout.splitlines()]
    assert (row["agent"], row["state"], row["reason"]) == ("plant-a/edge-09", "offline", "stopped")
    assert refused.returncode == 1
    assert "cannot reach the hub" in refused.stderr and "refused by broker" in refused.stderr
    assert untrusted.returncode == 1 and "certificate" in untrusted.stderr, untrusted.stderr
    assert no_cert.returncode == 1 and "--client-key" in no_cert.stderr, no_cert.stderr
