"""The OPC UA connector against real secured asyncua servers: each policy and mode, trust list,
user identities. The connector runs in the test's event loop; every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua

from connectors.base import Reading, SourceConfigError, SourceUnavailable
from connectors.opcua import OpcUaConnector, OpcUaSettings, OpcUaSignalSettings
from connectors.opcua.certificates import create_application_certificate
from connectors.opcua.trust import TrustStore
from testkit.broker import free_loopback_port
from testkit.opcua_servers import (
    ALL_SECURE,
    TEMPERATURE,
    serve_line,
    server_certificate,
    thumbprint_of,
)

AGENT_URI = "urn:test-host:plant-edge-agent"


def make_agent_pki(tmp_path: Path) -> Path:
    pki = tmp_path / "pki"
    create_application_certificate(
        certificate_path=pki / "own" / "cert.der",
        key_path=pki / "own" / "private" / "key.pem",
        application_uri=AGENT_URI,
        host_name="localhost",
    )
    return pki


def settings(endpoint: str, pki: Path, **extra: Any) -> OpcUaSettings:
    return OpcUaSettings.model_validate(
        {
            "endpoint": endpoint,
            "application_uri": AGENT_URI,
            "certificate": pki / "own" / "cert.der",
            "private_key": pki / "own" / "private" / "key.pem",
            "pki_dir": pki,
            "publishing_interval_ms": 50,
            **extra,
        }
    )


def trust_server(pki: Path, server_pki: Path) -> None:
    cert, _ = server_certificate(server_pki)
    TrustStore(pki).add_trusted(cert)


@asynccontextmanager
async def running(connector: OpcUaConnector) -> AsyncIterator[list[Reading]]:
    """Run one session of `connector`, collecting readings; fail on any session error."""
    readings: list[Reading] = []

    async def emit(batch: Any) -> None:
        readings.extend(batch)

    task = asyncio.create_task(connector.run(emit))
    try:
        yield readings
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)
        assert done, "the connector did not stop within 10 s of cancellation"
        if not task.cancelled() and task.exception() is not None:
            raise AssertionError(f"session failed: {task.exception()!r}")


async def until(condition: Any, what: str, limit_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for: {what}")
        await asyncio.sleep(0.02)


async def run_once(connector: OpcUaConnector, limit_s: float = 15.0) -> BaseException:
    """Run a session that is expected to fail; return its error."""

    async def emit(batch: Any) -> None:
        return None

    try:
        async with asyncio.timeout(limit_s):
            await connector.run(emit)
    except (SourceUnavailable, SourceConfigError) as error:
        return error
    raise AssertionError("the session did not fail")


SIGNALS = [OpcUaSignalSettings(node=TEMPERATURE)]


@pytest.mark.parametrize(
    "policy_type", ALL_SECURE, ids=lambda policy: policy.name
)
async def test_each_policy_and_mode_connects_with_a_trusted_server_and_a_user(
    tmp_path: Path, policy_type: ua.SecurityPolicyType
) -> None:
    policy, mode = policy_type.name.split("_")[0], policy_type.name.split("_")[-1]
    policy = {"Aes128Sha256RsaOaep": "Aes128_Sha256_RsaOaep",
              "Aes256Sha256RsaPss": "Aes256_Sha256_RsaPss"}.get(policy, policy)
    pki = make_agent_pki(tmp_path)
    server_pki = tmp_path / "server-pki"
    trust_server(pki, server_pki)
    (tmp_path / "password").write_text("s3cret\n")
    port = free_loopback_port()
    async with serve_line(port, pki=server_pki, policies=[policy_type],
                          users={"operator": "s3cret"}) as line:
        connector = OpcUaConnector(
            "line",
            settings(line.endpoint, pki, security_policy=policy, security_mode=mode,
                     username="operator", password_file=tmp_path / "password"),
            SIGNALS,
        )
        async with running(connector) as readings:
            await until(lambda: readings, "the current value")
            await line.write("Temperature", 31.5)
            await until(lambda: readings[-1].value == 31.5, "the written value")
        assert readings[0].signal == TEMPERATURE
        assert readings[0].value == 20.0


async def test_an_untrusted_server_is_refused_and_filed_until_trusted(tmp_path: Path) -> None:
    pki = make_agent_pki(tmp_path)
    server_pki = tmp_path / "server-pki"
    port = free_loopback_port()
    async with serve_line(port, pki=server_pki, policies=ALL_SECURE) as line:
        connector = OpcUaConnector(
            "line", settings(line.endpoint, pki, security_policy="Basic256Sha256"), SIGNALS
        )
        error = await run_once(connector)
        thumbprint = thumbprint_of(server_certificate(server_pki)[0])
        assert isinstance(error, SourceUnavailable)
        assert thumbprint in str(error)
        assert f"edge-agent certs trust {thumbprint}" in str(error)
        assert (pki / "rejected" / f"{thumbprint}.der").exists()
        assert not connector.health.connected

        TrustStore(pki).trust(thumbprint[:12])  # what `edge-agent certs trust` does
        assert (pki / "trusted" / f"{thumbprint}.der").exists()
        async with running(connector) as readings:
            await until(lambda: readings, "a value once the server is trusted")


async def test_trust_on_first_use_trusts_the_first_server_only(tmp_path: Path) -> None:
    pki = make_agent_pki(tmp_path)
    port = free_loopback_port()
    async with serve_line(port, pki=tmp_path / "first", policies=ALL_SECURE) as line:
        connector = OpcUaConnector(
            "line",
            settings(line.endpoint, pki, security_policy="Aes256_Sha256_RsaPss",
                     trust_on_first_use=True),
            SIGNALS,
        )
        async with running(connector) as readings:
            await until(lambda: readings, "a value from the first server")
    assert [c.info.thumbprint for c in TrustStore(pki).trusted()] == [
        thumbprint_of(tmp_path / "first" / "server" / "cert.der")
    ]
    async with serve_line(port, pki=tmp_path / "impostor", policies=ALL_SECURE):
        error = await run_once(connector)
        assert isinstance(error, SourceUnavailable)
        assert "not trusted" in str(error)


async def test_a_wrong_password_is_a_config_error_naming_the_user(tmp_path: Path) -> None:
    pki = make_agent_pki(tmp_path)
    server_pki = tmp_path / "server-pki"
    trust_server(pki, server_pki)
    port = free_loopback_port()
    os.environ["EDGE_TEST_OPCUA_PASSWORD"] = "wrong"
    try:
        async with serve_line(port, pki=server_pki, policies=ALL_SECURE,
                              users={"operator": "s3cret"}) as line:
            connector = OpcUaConnector(
                "line",
                settings(line.endpoint, pki, security_policy="Basic256Sha256",
                         username="operator", password_env="EDGE_TEST_OPCUA_PASSWORD"),
                SIGNALS,
            )
            error = await run_once(connector)
            assert isinstance(error, SourceConfigError)
            assert "refused user 'operator'" in str(error)
            assert "BadUserAccessDenied" in str(error)

            os.environ["EDGE_TEST_OPCUA_PASSWORD"] = "s3cret"
            async with running(connector) as readings:
                await until(lambda: readings, "a value with the right password")
    finally:
        del os.environ["EDGE_TEST_OPCUA_PASSWORD"]


async def test_a_server_that_does_not_trust_the_agent_names_the_agents_thumbprint(
    tmp_path: Path,
) -> None:
    pki = make_agent_pki(tmp_path)
    server_pki = tmp_path / "server-pki"
    trust_server(pki, server_pki)
    stranger = tmp_path / "stranger"
    create_application_certificate(
        certificate_path=stranger / "cert.der", key_path=stranger / "key.pem",
        application_uri="urn:someone-else",
    )
    port = free_loopback_port()
    async with serve_line(port, pki=server_pki, policies=ALL_SECURE,
                          trusted_clients=[stranger / "cert.der"]) as line:
        connector = OpcUaConnector(
            "line", settings(line.endpoint, pki, security_policy="Basic256Sha256"), SIGNALS
        )
        error = await run_once(connector)
        assert isinstance(error, SourceUnavailable)
        assert thumbprint_of(pki / "own" / "cert.der") in str(error)


async def test_x509_user_identity(tmp_path: Path) -> None:
    pki = make_agent_pki(tmp_path)
    server_pki = tmp_path / "server-pki"
    trust_server(pki, server_pki)
    user = tmp_path / "user"
    create_application_certificate(
        certificate_path=user / "cert.der", key_path=user / "key.pem",
        application_uri="urn:operator-user",
    )
    port = free_loopback_port()
    async with serve_line(port, pki=server_pki, policies=ALL_SECURE, users={}) as line:
        connector = OpcUaConnector(
            "line",
            settings(line.endpoint, pki, security_policy="Basic256Sha256",
                     user_certificate=user / "cert.der", user_private_key=user / "key.pem"),
            SIGNALS,
        )
        async with running(connector) as readings:
            await until(lambda: readings, "a value as the X.509 user")


async def test_a_missing_own_certificate_says_how_to_make_one(tmp_path: Path) -> None:
    port = free_loopback_port()
    async with serve_line(port, pki=tmp_path / "server-pki", policies=ALL_SECURE) as line:
        connector = OpcUaConnector(
            "line", settings(line.endpoint, tmp_path / "empty", security_policy="Basic256Sha256"),
            SIGNALS,
        )
        error = await run_once(connector)
        assert isinstance(error, SourceConfigError)
        assert "edge-agent certs create" in str(error)


async def test_password_and_key_from_systemd_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_agent_pki(tmp_path)
    server_pki = tmp_path / "server-pki"
    trust_server(pki, server_pki)
    # What systemd does for LoadCredential=opcua-password:... and LoadCredential=opcua-key:...
    credentials = tmp_path / "run-credentials"
    credentials.mkdir(mode=0o700)
    (credentials / "opcua-password").write_text("s3cret\n")
    (credentials / "opcua-key").write_bytes((pki / "own" / "private" / "key.pem").read_bytes())
    (pki / "own" / "private" / "key.pem").unlink()  # only the credential holds the key now
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    port = free_loopback_port()
    async with serve_line(port, pki=server_pki, policies=ALL_SECURE,
                          users={"operator": "s3cret"}) as line:
        connector = OpcUaConnector(
            "line",
            settings(line.endpoint, pki, security_policy="Basic256Sha256",
                     private_key="credential:opcua-key", username="operator",
                     password_file="credential:opcua-password"),
            SIGNALS,
        )
        async with running(connector) as readings:
            await until(lambda: readings, "a value with the password from the credential")

        # Started outside its unit (no $CREDENTIALS_DIRECTORY): a config error saying so.
        monkeypatch.delenv("CREDENTIALS_DIRECTORY")
        error = await run_once(connector)
        assert isinstance(error, SourceConfigError)
        assert str(error) == (
            "password_file: 'credential:opcua-password' is a systemd credential, but "
            "$CREDENTIALS_DIRECTORY is not set: run the agent from its unit with "
            "`LoadCredential=opcua-password:/path/to/file`, or give the file's path instead"
        )


def test_a_bad_credential_name_is_refused_and_credentials_keep_their_form(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="bad credential name 'a/b'"):
        settings("opc.tcp://127.0.0.1:4840", tmp_path, certificate="credential:a/b")
    based = settings(
        "opc.tcp://127.0.0.1:4840", Path("pki"),
        user_certificate="credential:user-cert", user_private_key="credential:user-key",
    ).with_base_dir(tmp_path)
    assert str(based.user_certificate) == "credential:user-cert"
    assert based.pki_dir == tmp_path / "pki"


async def test_certificates_near_expiry_are_reported_in_health(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    create_application_certificate(
        certificate_path=pki / "own" / "cert.der", key_path=pki / "own" / "private" / "key.pem",
        application_uri=AGENT_URI, host_name="localhost", days=5,
    )
    server_pki = tmp_path / "server-pki"
    server_certificate(server_pki, days=10)
    trust_server(pki, server_pki)
    port = free_loopback_port()
    async with serve_line(port, pki=server_pki, policies=ALL_SECURE) as line:
        connector = OpcUaConnector(
            "line", settings(line.endpoint, pki, security_policy="Aes128_Sha256_RsaOaep"),
            SIGNALS,
        )
        async with running(connector) as readings:
            await until(lambda: readings, "a value: near expiry is a notice, not a failure")
    notices = connector.health.notices
    server_thumbprint = thumbprint_of(server_pki / "server" / "cert.der")
    assert re.fullmatch(
        rf"the server's certificate \({server_thumbprint}\) expires in (9|10) days, on \S+",
        notices["server_certificate"],
    )
    assert re.fullmatch(
        rf"the agent's certificate \({thumbprint_of(pki / 'own' / 'cert.der')}\) expires in "
        r"(4|5) days, on \S+",
        notices["certificate"],
    )
