"""Opening one OPC UA session with the configured security, trust and user identity.

Used by the connector, `edge-agent opcua browse/read` and `check-config --connect`, so all
three connect exactly alike. Errors are classified for the caller:

- `SourceUnavailable` (try again later): server unreachable, timeout, the server's certificate
  is not trusted yet (the operator trusts it, the next attempt works), the server does not
  trust the agent's certificate yet (the OT engineer moves it from the server's rejected folder
  to its trusted one; the message names its SHA-1 thumbprint as servers display it).
- `SourceConfigError` (fix the config): the endpoint offers no such policy and mode, the
  agent's certificate or key is missing, the password cannot be read, a `credential:NAME`
  setting but no `$CREDENTIALS_DIRECTORY`, the server refused the user (wrong user name or
  password: retrying would only lock the account).

Every message says what failed, the likely cause and what to check, once: a socket error
becomes "nothing listens on HOST port N", "the host name ... does not resolve", "no answer
within N s" or "no route to HOST" (`connection_cause`; the OS error number at most in
parentheses), a source without security on a server that needs it names what the server
offers, a refused certificate names its thumbprint.

A server that refuses the agent's certificate may answer OpenSecureChannel with a ServiceFault
(node-opcua does) instead of an OpenSecureChannelResponse. asyncua decodes that answer as a
response, fails ("Exception raised while parsing message from server", with a traceback) and
ends in an AssertionError that names nothing. Each session's socket protocol therefore reads
such a fault first (`_RefusalAwareProtocol`): the connect fails with the fault's status code,
which `_classify` turns into the message above, and asyncua's own log record of that status
is dropped (`_ReportedRefusals`): the connector reports it once, in its own words.

A server that stops or restarts makes asyncua's publish loop log "Publish iteration crashed"
with a traceback every second until the session closes. When the error only says the session
or its connection ended (`session_ended`) that record becomes one debug line here
(`_SessionEndInPublishLoop`); the connector's watchdog reports the loss once, and the runtime
logs it as one state change. Any other publish-loop error keeps its record and traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_client import UASocketProtocol
from asyncua.common.utils import Buffer
from asyncua.crypto import security_policies
from asyncua.crypto.uacrypto import CertProperties
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary
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
# What servers answer when the agent's certificate is not (yet) in their trust list: asyncua
# and node-opcua servers say BadSecurityChecksFailed (the spec lets them hide the reason).
_AGENT_CERT_UNTRUSTED = {
    StatusCodes.BadCertificateUntrusted,
    StatusCodes.BadSecurityChecksFailed,
}
_AGENT_CERT_REJECTED = _AGENT_CERT_UNTRUSTED | {
    StatusCodes.BadCertificateInvalid,
    StatusCodes.BadCertificateUriInvalid,
    StatusCodes.BadCertificateUseNotAllowed,
}
# Marks the errors `_RefusalAwareProtocol` raises, so that asyncua's log record of them is
# dropped (the connector reports the refusal itself).
_REFUSAL_NOTE = "the server answered OpenSecureChannel with a ServiceFault"
_SERVICE_FAULT = ua.FourByteNodeId(ua.Int32(ObjectIds.ServiceFault_Encoding_DefaultBinary))


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
    _read_channel_refusals(client)
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
        if not settings.secured and "No matching endpoints" in str(error):
            offered = await _offered_endpoints(client)
            raise SourceConfigError(
                f"{settings.endpoint} has no endpoint without security (security_policy = "
                f"\"None\"); it offers: {offered}. Set security_policy and security_mode to one "
                "of these, make the agent's certificate (`edge-agent certs create -c CONFIG`) "
                "and trust it on the server"
            ) from error
        raise SourceUnavailable(
            f"cannot connect to {settings.endpoint}: {connection_cause(error, settings)}"
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
            f"cannot get the endpoints of {settings.endpoint}: "
            f"{connection_cause(error, settings)}"
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
        # Said once, by whoever reports the source unavailable (the runtime, check-config).
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


class _RefusalAwareProtocol(UASocketProtocol):
    """asyncua's socket protocol, reading a ServiceFault that answers OpenSecureChannel as the
    refusal it is (see the module docstring)."""

    def _process_received_message(
        self, msg: ua.Message | ua.Acknowledge | ua.ErrorMessage | None
    ) -> None:
        # asyncua's Message and UaStatusCodeError are untyped.
        if isinstance(msg, ua.Message) and isinstance(
            msg.SecurityHeader(), ua.AsymmetricAlgorithmHeader  # type: ignore[no-untyped-call]
        ):
            status = _service_fault_status(msg.body())  # type: ignore[no-untyped-call]
            if status is not None:
                # asyncua fails the pending OpenSecureChannel with it and closes the socket.
                error = UaStatusCodeError(status.value)  # type: ignore[no-untyped-call]
                error.add_note(_REFUSAL_NOTE)
                raise error
        super()._process_received_message(msg)


def _service_fault_status(body: Buffer) -> ua.StatusCode | None:
    """The bad status of a ServiceFault message body; None for any other body."""
    try:
        if nodeid_from_binary(body) != _SERVICE_FAULT:
            return None
        header = struct_from_binary(ua.ResponseHeader, body)
    except (UaError, ValueError, EOFError):
        return None
    status: ua.StatusCode = header.ServiceResult
    return status if status.is_bad() else None


def _read_channel_refusals(client: Client) -> None:
    """Make every socket protocol of `client` a `_RefusalAwareProtocol`. asyncua builds one per
    connect (`UaClient._make_protocol`, which also wires its callbacks); it is kept and only the
    protocol's class is swapped for the subclass, which adds a method and no state."""
    uaclient = client.uaclient
    make_protocol = uaclient._make_protocol

    def make_refusal_aware_protocol() -> UASocketProtocol:
        protocol = make_protocol()
        protocol.__class__ = _RefusalAwareProtocol
        return protocol

    uaclient._make_protocol = make_refusal_aware_protocol  # type: ignore[method-assign]


class _ReportedRefusals(logging.Filter):
    """Drops asyncua's record of a refusal that `_RefusalAwareProtocol` raised ("Got error
    status from server: ..."): the connector reports it once, with what to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        arguments = record.args if isinstance(record.args, tuple) else ()
        return not any(
            _REFUSAL_NOTE in getattr(argument, "__notes__", ()) for argument in arguments
        )


def _install_refusal_filter() -> None:
    protocol_log = logging.getLogger(f"{UASocketProtocol.__module__}.UASocketProtocol")
    if not any(isinstance(existing, _ReportedRefusals) for existing in protocol_log.filters):
        protocol_log.addFilter(_ReportedRefusals())


_install_refusal_filter()


# What a session's end looks like from inside asyncua's publish loop when the server stops or
# restarts (or the network drops): a routine state change that the connector's watchdog turns
# into one `SourceUnavailable`, not an error with a traceback.
_SESSION_ENDED = frozenset({
    StatusCodes.BadSessionClosed,
    StatusCodes.BadSessionIdInvalid,
    StatusCodes.BadSecureChannelClosed,
    StatusCodes.BadSecureChannelIdInvalid,
    StatusCodes.BadConnectionClosed,
    StatusCodes.BadServerHalted,
    StatusCodes.BadShutdown,
    StatusCodes.BadCommunicationError,
    StatusCodes.BadNotConnected,
    StatusCodes.BadServerNotConnected,
})
_PUBLISH_CRASHED = "Publish iteration crashed"


def session_ended(error: BaseException) -> bool:
    """Whether `error` only says that the session or its connection is gone."""
    if isinstance(error, UaStatusCodeError):
        return error.code in _SESSION_ENDED
    return isinstance(error, OSError | TimeoutError | EOFError)


class _SessionEndInPublishLoop(logging.Filter):
    """Translates asyncua's "Publish iteration crashed; retrying in 1s" (logged with a
    traceback, every second until the session is closed) when its error only says the session
    ended: one debug line here instead, since the connector reports the loss once. Any other
    error in the publish loop keeps asyncua's record and its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(_PUBLISH_CRASHED):
            return True
        error = record.exc_info[1] if record.exc_info else None
        if error is None or not session_ended(error):
            return True
        _log.debug(
            "asyncua's publish loop: the session ended (%s: %s)", type(error).__name__,
            describe_error(error),
        )
        return False


def _install_publish_loss_filter() -> None:
    from asyncua.client import ua_session

    session_log = logging.getLogger(f"{ua_session.__name__}.UaSession")
    if not any(isinstance(f, _SessionEndInPublishLoop) for f in session_log.filters):
        session_log.addFilter(_SessionEndInPublishLoop())


_install_publish_loss_filter()


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
            if code in _AGENT_CERT_UNTRUSTED:
                return SourceUnavailable(
                    f"{settings.endpoint} does not trust the agent's certificate yet ({name}): "
                    f"on the server, move the certificate with SHA-1 thumbprint {own} from its "
                    "rejected folder to its trusted folder (or trust it in the server's "
                    "certificate settings); the agent keeps retrying and connects by itself"
                )
            return SourceUnavailable(
                f"{settings.endpoint} refused the agent's certificate ({name}); trust "
                f"thumbprint {own} on the server (its rejected list), then it connects"
            )
    if code in _SECURITY_REJECTED:  # retried like any refusal: the server may be reconfigured
        return SourceUnavailable(
            f"{settings.endpoint} refused security_policy = {settings.security_policy!r} with "
            f"security_mode = {settings.effective_mode!r} ({name}): the server needs another "
            "security_policy / security_mode: set the ones its endpoints offer (its configuration "
            "lists them; `edge-agent opcua browse` with --security-policy tries one)"
        )
    return SourceUnavailable(f"cannot connect to {settings.endpoint}: the server says {name}")


async def _offered_endpoints(client: Client) -> str:
    """What the server's endpoints offer, as `Policy/Mode` (for a message; "?" if unknown)."""
    try:
        async with asyncio.timeout(5.0):
            endpoints = await client.connect_and_get_server_endpoints()
    except Exception:  # only for a message: the connect error is what is reported
        return "?"
    return ", ".join(sorted(
        {f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}" for e in endpoints}
    )) or "nothing"


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


# What a server answers when the session's security does not fit its endpoints.
_SECURITY_REJECTED = {
    StatusCodes.BadSecurityModeRejected,
    StatusCodes.BadSecurityPolicyRejected,
    StatusCodes.BadSecurityModeInsufficient,
}


def connection_cause(error: BaseException, settings: OpcUaSettings) -> str:
    """Why a connection failed, in the words of the one who has to fix it: what happened, the
    likely cause, what to check; the OS error number at most in parentheses."""
    host, port = _host_port(settings.endpoint)
    number = f", errno {error.errno}" if isinstance(error, OSError) and error.errno else ""
    if isinstance(error, socket.gaierror):
        return (
            f"the host name {host!r} does not resolve (name lookup failed{number}): check the "
            "spelling in `endpoint`, the DNS or /etc/hosts, or write the server's IP address"
        )
    if isinstance(error, ConnectionRefusedError):
        return (
            f"nothing listens on {host} port {port} (connection refused{number}): is the OPC UA "
            "server running, and is the port in `endpoint` the one it serves on?"
        )
    if isinstance(error, TimeoutError):
        return (
            f"no answer from {host} port {port} within {settings.request_timeout_s:g} s: the host "
            "is down or a firewall drops the connection (check the route and port), or the "
            "server is too slow (raise request_timeout_s)"
        )
    if isinstance(error, OSError) and error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return (
            f"no route to {host} (host or network unreachable{number}): check the address, the "
            "network cable or VLAN, and the route from this machine"
        )
    if isinstance(error, ConnectionResetError | BrokenPipeError):
        return (
            f"{host} port {port} closed the connection ({describe_error(error)}): the port may "
            "belong to something other than an OPC UA server, or the server refused the session"
        )
    if isinstance(error, UaStatusCodeError):
        return f"the server says {ua.StatusCode(error.code).name}"
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror.lower()}{number}"
    return describe_error(error)


def _host_port(endpoint: str) -> tuple[str, int]:
    """The host and port of `opc.tcp://HOST[:PORT][/PATH]` (4840 when none is written)."""
    parsed = urlsplit(endpoint)
    try:
        port = parsed.port or 4840
    except ValueError:
        port = 4840
    return parsed.hostname or endpoint, port


def describe_error(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) < 300 else text[:297] + "..."
