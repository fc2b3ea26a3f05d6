"""Opening one OPC UA session with the configured security, trust and user identity.

Used by the connector, `edge-agent opcua browse/read` and `check-config --connect`, so all
three connect exactly alike. Errors are classified for the caller:

- `SourceUnavailable` (try again later): server unreachable, timeout, the server's certificate
  is not trusted yet (the operator trusts it, the next attempt works), the server does not
  trust the agent's certificate yet (the OT engineer trusts it on the server).
- `SourceConfigError` (fix the config): the endpoint offers no such policy and mode, the
  agent's certificate or key is missing, the password cannot be read, a `credential:NAME`
  setting but no `$CREDENTIALS_DIRECTORY`, the server refused the user (wrong user name or
  password: retrying would only lock the account).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies
from asyncua.crypto.uacrypto import CertProperties
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509

from connectors.base import SourceConfigError, SourceUnavailable
from connectors.opcua.certificates import describe, load_certificate
from connectors.opcua.config import OpcUaSettings
from connectors.opcua.trust import TrustStore, UntrustedCertificate

_log = logging.getLogger(__name__)

_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_MODES = {
    "None": ua.MessageSecurityMode.None_,
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
_USER_REJECTED = {
    StatusCodes.BadUserAccessDenied,
    StatusCodes.BadIdentityTokenInvalid,
    StatusCodes.BadIdentityTokenRejected,
    StatusCodes.BadUserSignatureInvalid,
}
_AGENT_CERT_REJECTED = {
    StatusCodes.BadCertificateUntrusted,
    StatusCodes.BadSecurityChecksFailed,
    StatusCodes.BadCertificateInvalid,
    StatusCodes.BadCertificateUriInvalid,
    StatusCodes.BadCertificateUseNotAllowed,
}


@dataclass(slots=True)
class SessionInfo:
    """What was learnt while connecting, for status."""

    notices: dict[str, str] = field(default_factory=dict)


@asynccontextmanager
async def open_session(
    settings: OpcUaSettings, info: SessionInfo | None = None
) -> AsyncIterator[Client]:
    """Connect with `settings` and yield the client; disconnect (bounded) on exit."""
    info = info if info is not None else SessionInfo()
    try:
        settings = settings.resolve_credentials()
    except ValueError as error:
        raise SourceConfigError(str(error)) from error
    client = Client(
        settings.endpoint,
        timeout=settings.request_timeout_s,
        watchdog_intervall=settings.watchdog_interval_s,
    )
    client.application_uri = settings.effective_application_uri
    client.name = client.description = "plant-edge-agent"
    client.product_uri = "urn:plant-edge-agent"
    if settings.secured:
        await _set_security(client, settings, info)
    await _set_identity(client, settings)
    try:
        await client.connect()
    except (OSError, TimeoutError, UaError) as error:
        with contextlib.suppress(Exception):
            client.disconnect_socket()
        if isinstance(error, UaStatusCodeError):
            raise _classify(error, settings) from error
        raise SourceUnavailable(
            f"cannot connect to {settings.endpoint}: {describe_error(error)}"
        ) from error
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            # Bounded: a dead server must not hold up a stop. (Not around notification reads.)
            async with asyncio.timeout(2.0):
                await client.disconnect()


async def _set_security(client: Client, settings: OpcUaSettings, info: SessionInfo) -> None:
    own_files = (("certificate", settings.certificate), ("private_key", settings.private_key))
    for what, path in own_files:
        if not path.is_file():
            raise SourceConfigError(
                f"the agent's {what} {path} does not exist; create it with "
                "`edge-agent certs create -c CONFIG` and trust its thumbprint on the server"
            )
    own = load_certificate(settings.certificate)
    _expiry_notice(info, "certificate", "the agent's certificate", own, settings)
    policy = _POLICIES[settings.security_policy]
    mode = _MODES[settings.effective_mode]
    try:
        endpoints = await client.connect_and_get_server_endpoints()
    except (OSError, TimeoutError, UaError) as error:
        raise SourceUnavailable(
            f"cannot get the endpoints of {settings.endpoint}: {describe_error(error)}"
        ) from error
    endpoint = next(
        (
            candidate
            for candidate in endpoints
            if candidate.SecurityMode == mode and candidate.SecurityPolicyUri == policy.URI
        ),
        None,
    )
    if endpoint is None:
        offered = sorted(
            {f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints}
        )
        raise SourceConfigError(
            f"{settings.endpoint} offers no endpoint with security_policy = "
            f"{settings.security_policy!r} and security_mode = {settings.effective_mode!r}; "
            f"it offers: {', '.join(offered)}"
        )
    server_der = _first_certificate(endpoint.ServerCertificate)
    server_certificate = x509.load_der_x509_certificate(server_der)
    store = TrustStore(settings.pki_dir, trust_on_first_use=settings.trust_on_first_use)
    try:
        store.check(server_certificate, server=settings.endpoint)
    except UntrustedCertificate as error:
        _log.error("%s", error)
        raise SourceUnavailable(str(error)) from error
    _expiry_notice(info, "server_certificate", "the server's certificate", server_certificate,
                   settings)
    try:
        await client.set_security(
            policy,
            certificate=CertProperties(settings.certificate, _format(settings.certificate)),
            private_key=CertProperties(settings.private_key, _format(settings.private_key)),
            server_certificate=server_der,
            mode=mode,
        )
    except (OSError, ValueError, TypeError, UaError) as error:
        raise SourceConfigError(
            f"cannot use the agent's certificate {settings.certificate} / key "
            f"{settings.private_key}: {describe_error(error)}"
        ) from error


async def _set_identity(client: Client, settings: OpcUaSettings) -> None:
    if settings.username is not None:
        try:
            password = settings.read_password()
        except ValueError as error:
            raise SourceConfigError(str(error)) from error
        client.set_user(settings.username)
        client.set_password(password)
    elif settings.user_certificate is not None and settings.user_private_key is not None:
        try:
            await client.load_client_certificate(
                str(settings.user_certificate), _format(settings.user_certificate)
            )
            await client.load_private_key(
                settings.user_private_key, extension=_format(settings.user_private_key)
            )
        except (OSError, ValueError) as error:
            raise SourceConfigError(
                f"cannot load the user certificate {settings.user_certificate} / key "
                f"{settings.user_private_key}: {describe_error(error)}"
            ) from error


def _classify(error: UaStatusCodeError, settings: OpcUaSettings) -> Exception:
    code = error.code
    name = ua.StatusCode(code).name
    if code in _USER_REJECTED:
        who = f"user {settings.username!r}" if settings.username else "the user identity"
        return SourceConfigError(
            f"{settings.endpoint} refused {who} ({name}): wrong user name or password, or the "
            "user may not log in; fix password_file / password_env and restart"
        )
    if code in _AGENT_CERT_REJECTED and settings.secured:
        with contextlib.suppress(OSError, ValueError):
            own = describe(load_certificate(settings.certificate)).thumbprint
            return SourceUnavailable(
                f"{settings.endpoint} refused the agent's certificate ({name}); trust "
                f"thumbprint {own} on the server (its rejected list), then it connects"
            )
    return SourceUnavailable(f"cannot connect to {settings.endpoint}: {name}")


def _expiry_notice(
    info: SessionInfo, key: str, what: str, certificate: x509.Certificate, settings: OpcUaSettings
) -> None:
    details = describe(certificate)
    left = details.not_after - datetime.now(UTC)
    if left < timedelta(days=settings.certificate_warn_days):
        days = left.total_seconds() / 86_400
        state = f"expires in {days:.0f} days" if days >= 0 else f"expired {-days:.0f} days ago"
        info.notices[key] = (
            f"{what} ({details.thumbprint}) {state}, on {details.not_after.date().isoformat()}"
        )
        _log.warning("%s", info.notices[key])
    else:
        info.notices.pop(key, None)


def _format(path: Path) -> str | None:
    """"pem" or "der" by the file's content: asyncua goes by the extension, which a systemd
    credential (`$CREDENTIALS_DIRECTORY/NAME`) need not have. None if unreadable (the load
    that follows reports it)."""
    try:
        with path.open("rb") as file:
            head = file.read(64)
    except OSError:
        return None
    return "pem" if head.lstrip().startswith(b"-----BEGIN") else "der"


def _first_certificate(chain: bytes) -> bytes:
    """The server's own certificate: the first DER element of a chain."""
    if len(chain) < 4 or chain[0] != 0x30:
        return chain
    length_byte = chain[1]
    if length_byte < 0x80:
        return chain[: 2 + length_byte]
    count = length_byte & 0x7F
    length = int.from_bytes(chain[2 : 2 + count], "big")
    return chain[: 2 + count + length]


def describe_error(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) < 300 else text[:297] + "..."
