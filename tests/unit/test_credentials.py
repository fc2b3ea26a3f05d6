"""The one secret-reference resolver (`connectors.credentials`): every spelling it accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.credentials import (
    CredentialUnavailable,
    check_reference,
    is_credential,
    relative_to,
    resolve,
)


def test_a_systemd_credential_resolves_under_the_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert resolve("hub.password", "credential:mqtt-password") == tmp_path / "mqtt-password"
    assert resolve("password_file", Path("credential:opcua.key")) == tmp_path / "opcua.key"


def test_without_the_credentials_directory_the_error_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(CredentialUnavailable) as raised:
        resolve("tokens_file", "credential:mes-tokens")
    assert str(raised.value) == (
        "tokens_file: 'credential:mes-tokens' is a systemd credential, but "
        "$CREDENTIALS_DIRECTORY is not set: run the agent from its unit with "
        "`LoadCredential=mes-tokens:/path/to/file`, or give the file's path instead"
    )
    assert isinstance(raised.value, ValueError)  # a config error to every caller


def test_files_resolve_to_themselves_with_or_without_the_file_prefix() -> None:
    assert resolve("hub.password", "file:/etc/plant-edge-agent/pw") == Path(
        "/etc/plant-edge-agent/pw"
    )
    assert resolve("hub.ca_file", "/etc/ssl/ca.pem") == Path("/etc/ssl/ca.pem")
    assert resolve("password_file", Path("/run/credentials/edge-agent.service/mes-db")) == Path(
        "/run/credentials/edge-agent.service/mes-db"
    )


def test_credential_names_are_checked_and_kept_as_given() -> None:
    assert check_reference("credential:a_b.c-1") == "credential:a_b.c-1"
    assert check_reference(Path("/etc/x")) == Path("/etc/x")
    for bad in ("credential:a/b", "credential:", "credential:sp ace"):
        with pytest.raises(ValueError, match="bad credential name"):
            check_reference(bad)


def test_relative_paths_are_taken_from_the_config_folder_and_credentials_are_kept() -> None:
    base = Path("/etc/plant-edge-agent")
    assert relative_to(base, Path("mes-tokens")) == base / "mes-tokens"
    assert relative_to(base, Path("/abs/tokens")) == Path("/abs/tokens")
    assert relative_to(base, Path("credential:mes-tokens")) == Path("credential:mes-tokens")
    assert is_credential(Path("credential:mes-tokens")) and not is_credential("/etc/x")
