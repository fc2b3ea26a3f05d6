"""The MES connectors take their secrets in the one convention (`connectors.credentials`): a
path, or `credential:NAME` for a systemd credential, resolved when the source starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connectors.base import SourceConfigError
from connectors.mes_http.config import MesHttpSettings, RouteSettings
from connectors.mes_http.server import Outcome, TraceHeaders, WebhookServer
from connectors.mes_sql.config import MesSqlSettings

BASE = Path("/etc/plant-edge-agent")


async def never_called(route: RouteSettings, items: list[dict[str, Any]],
                       key: str | None, trace: TraceHeaders) -> Outcome:
    raise AssertionError("no request is sent")


def webhook(**overrides: Any) -> MesHttpSettings:
    values: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "tokens_file": "credential:mes-tokens",
        "routes": [{"path": "/mes/completions", "event": "workorder.completed",
                    "columns": {"order": {"column": "order"}}}],
    }
    return MesHttpSettings.model_validate(values | overrides)


def test_credential_references_keep_their_form_beside_the_config_file() -> None:
    based = webhook(tls_cert="credential:webhook.pem", tls_key="tls/webhook.key")
    based = based.with_base_dir(BASE)
    assert str(based.tokens_file) == "credential:mes-tokens"
    assert str(based.tls_cert) == "credential:webhook.pem"
    assert based.tls_key == BASE / "tls/webhook.key"
    sql = MesSqlSettings(url="postgresql://edge@127.0.0.1:5432/mes", table="t", cursor=("id",),
                         password_file=Path("credential:mes-db")).with_base_dir(BASE)
    assert str(sql.password_file) == "credential:mes-db"


def test_a_bad_credential_name_is_refused_when_the_config_loads() -> None:
    with pytest.raises(ValueError, match="bad credential name 'a/b'"):
        webhook(tokens_file="credential:a/b")
    with pytest.raises(ValueError, match="bad credential name 'a/b'"):
        MesSqlSettings(url="postgresql://edge@127.0.0.1:5432/mes", table="t", cursor=("id",),
                       password_file=Path("credential:a/b"))


async def test_the_webhook_reads_its_tokens_from_a_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mes-tokens").write_text("s3cret-token\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    async with WebhookServer(webhook(), never_called) as server:
        assert server.port > 0  # the tokens were read: the literal path does not exist

    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(SourceConfigError) as raised:
        await WebhookServer(webhook(), never_called).start()
    assert str(raised.value) == (
        "tokens_file: 'credential:mes-tokens' is a systemd credential, but "
        "$CREDENTIALS_DIRECTORY is not set: run the agent from its unit with "
        "`LoadCredential=mes-tokens:/path/to/file`, or give the file's path instead"
    )
