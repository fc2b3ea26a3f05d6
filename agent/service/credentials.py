"""Secrets and the hub's TLS identity, read where the config says they are.

The config never holds a secret (see `config.schema`, `SecretRef` and `FileRef`): it holds a
reference, `credential:NAME` (a systemd credential), `file:/path` (secrets) or `/path` (key and
certificate files), in the one convention of `connectors.credentials`, which resolves them.

They are read when the agent starts and on every reload, never at `check-config` time (an
operator's shell has no `$CREDENTIALS_DIRECTORY`). Whatever is missing or unusable raises
`CredentialError` naming the config key, the place and what to do: a config error for the caller
(refuse to start; on reload, keep the running config). Secret values are never logged.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from config.schema import HubSection
from connectors.credentials import CredentialUnavailable, resolve

__all__ = ["CredentialError", "HubCredentials", "hub_credentials", "resolve_path"]

class CredentialError(Exception):
    """A secret, key or certificate the config names cannot be used; the message says why."""


@dataclass(frozen=True)
class HubCredentials:
    """What the MQTT session needs to authenticate the broker and itself."""

    tls: ssl.SSLContext | None
    username: str | None
    password: str | None
    # When the agent's own client certificate expires (epoch s): under TLS 1.3 a broker that
    # refuses an expired one may only close the connection, so the session says why itself.
    client_cert_expires_at: float | None = None


def resolve_path(key: str, reference: str) -> Path:
    """The file a `FileRef` or `SecretRef` points at (`key` names it in errors)."""
    try:
        return resolve(key, reference)
    except CredentialUnavailable as error:
        raise CredentialError(str(error)) from error


def read_secret(key: str, reference: str) -> str:
    """The secret text (one trailing newline removed, as editors add one)."""
    path = resolve_path(key, reference)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise CredentialError(f"{key}: {path} does not exist ({reference!r})") from error
    except PermissionError as error:
        raise CredentialError(
            f"{key}: {path} is not readable by the agent's user ({reference!r})"
        ) from error
    except (OSError, UnicodeDecodeError) as error:
        raise CredentialError(f"{key}: cannot read {path}: {error}") from error
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise CredentialError(f"{key}: {path} is empty ({reference!r})")
    return secret


def _readable(key: str, reference: str) -> str:
    path = resolve_path(key, reference)
    try:
        with path.open("rb"):
            pass
    except FileNotFoundError as error:
        raise CredentialError(f"{key}: {path} does not exist") from error
    except OSError as error:
        raise CredentialError(f"{key}: cannot read {path}: {error.strerror or error}") from error
    return str(path)


def tls_context(hub: HubSection) -> ssl.SSLContext:
    """A client context that verifies the broker (hostname and chain: `ca_file`, else the
    system's CAs) and presents `cert_file`/`key_file` when given (TLS 1.2 or newer)."""
    cafile = _readable("hub.ca_file", hub.ca_file) if hub.ca_file else None
    try:
        context = ssl.create_default_context(cafile=cafile)
    except ssl.SSLError as error:
        raise CredentialError(
            f"hub.ca_file: {cafile} holds no usable CA certificate: {error}"
        ) from error
    except OSError as error:
        raise CredentialError(f"hub.ca_file: cannot load {cafile}: {error}") from error
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if hub.cert_file and hub.key_file:
        certfile = _readable("hub.cert_file", hub.cert_file)
        keyfile = _readable("hub.key_file", hub.key_file)
        try:
            context.load_cert_chain(certfile, keyfile)
        except ssl.SSLError as error:
            raise CredentialError(
                f"hub.cert_file/hub.key_file: {certfile} and {keyfile} are not a matching PEM "
                f"certificate and unencrypted private key: {error.reason or error}"
            ) from error
    return context


def hub_credentials(hub: HubSection) -> HubCredentials:
    """Read everything the hub connection needs; CredentialError says what is missing."""
    password = read_secret("hub.password", hub.password) if hub.password else None
    tls = tls_context(hub) if hub.tls else None
    expires_at = None
    if tls is not None and hub.cert_file:
        from cryptography import x509

        certfile = _readable("hub.cert_file", hub.cert_file)
        try:
            with open(certfile, "rb") as file:
                certificate = x509.load_pem_x509_certificate(file.read())
            expires_at = certificate.not_valid_after_utc.timestamp()
        except (OSError, ValueError):
            expires_at = None  # tls_context loaded it; only the expiry hint is lost
    return HubCredentials(
        tls=tls, username=hub.username, password=password, client_cert_expires_at=expires_at
    )
