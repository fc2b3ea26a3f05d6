"""OPC UA source settings: every bad input is refused with a message saying what and where;
addresses parse; the agent certificate carries what OPC UA asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import ValidationError

from connectors.opcua.addressing import BrowseStep, parse_address
from connectors.opcua.certificates import create_application_certificate
from connectors.opcua.config import OpcUaSettings, OpcUaSignalSettings

ENDPOINT = "opc.tcp://127.0.0.1:4840"


def settings(**extra: Any) -> OpcUaSettings:
    return OpcUaSettings.model_validate({"endpoint": ENDPOINT, **extra})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"username": "op", "password": "x"}, "`password` must not be written in the config"),
        ({"username": "op"}, "username 'op' needs a password: password_file or password_env"),
        ({"password_env": "PW"}, "needs a `username`"),
        ({"username": "op", "password_env": "PW", "password_file": "/p"}, "not both"),
        ({"security_mode": "Sign"}, "needs a security_policy"),
        ({"security_policy": "Basic256Sha256", "security_mode": "None"}, "Sign\" or"),
        ({"security_policy": "Basic128Rsa15"}, "Basic256Sha256"),
        ({"user_certificate": "/u.der"}, "both user_certificate and user_private_key"),
        ({"reconnect_min_s": 10, "reconnect_max_s": 5}, "reconnect_min_s must not be larger"),
    ],
)
def test_bad_source_settings_are_refused(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        settings(**extra)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"node": "Line1.Temp"}, "not an OPC UA NodeId: 'Line1.Temp'"),
        ({"node": "Objects//Temp"}, "empty segment in browse path"),
        ({"node": "i=1", "deadband_absolute": 1, "deadband_percent": 2}, "not both"),
        ({"node": "i=1", "mode": "poll", "deadband_absolute": 1}, "subscribe\" only"),
        ({"node": "i=1", "event_types": ["i=2915"]}, "mode = \"events\" only"),
        ({"node": "i=2253", "mode": "events", "backfill": True}, "not to events"),
    ],
)
def test_bad_signal_settings_are_refused(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        OpcUaSignalSettings.model_validate(extra)
    assert message in str(error.value)


def test_password_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_PW", "from-env")
    assert settings(username="op", password_env="EDGE_PW").read_password() == "from-env"
    (tmp_path / "pw").write_text("from-file\n")
    assert settings(username="op", password_file=tmp_path / "pw").read_password() == "from-file"
    monkeypatch.delenv("EDGE_PW")
    with pytest.raises(ValueError, match=r"EDGE_PW .* is not set"):
        settings(username="op", password_env="EDGE_PW").read_password()


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    resolved = settings(password_file="secrets/pw", username="op").with_base_dir(tmp_path)
    assert resolved.certificate == tmp_path / "pki/own/cert.der"
    assert resolved.pki_dir == tmp_path / "pki"
    assert resolved.password_file == tmp_path / "secrets/pw"


def test_secured_defaults_to_sign_and_encrypt() -> None:
    assert settings(security_policy="Aes256_Sha256_RsaPss").effective_mode == "SignAndEncrypt"
    assert settings().effective_mode == "None"


def test_addresses_parse() -> None:
    assert parse_address("ns=2;s=A.B").node_id is not None
    uri = parse_address("nsu=urn:plant:x;s=A.B")
    assert uri.namespace_uri == "urn:plant:x" and uri.node_id is not None
    assert uri.node_id.NamespaceIndex == 0
    path = parse_address("Objects/2:Line1/Temp")
    assert path.path == (BrowseStep("Line1", 2), BrowseStep("Temp", None))


def test_the_agent_certificate_has_what_opc_ua_requires(tmp_path: Path) -> None:
    info = create_application_certificate(
        certificate_path=tmp_path / "own" / "cert.der",
        key_path=tmp_path / "own" / "private" / "key.pem",
        application_uri="urn:plant-a:edge-01", host_name="edge-01", days=100,
    )
    cert = x509.load_der_x509_certificate((tmp_path / "own" / "cert.der").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:plant-a:edge-01"]
    assert san.get_values_for_type(x509.DNSName) == ["edge-01"]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment
    assert usage.key_encipherment and usage.data_encipherment
    extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(extended) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 100
    assert len(info.thumbprint) == 40
    assert (tmp_path / "own" / "private" / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "own" / "private").stat().st_mode & 0o777 == 0o700
