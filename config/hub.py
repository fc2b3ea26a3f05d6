"""`[hub]`: the broker the agent forwards to (`agent.link.hub_session` builds the session from
it), how it batches and in which format (`agent.link.forwarder`, `events.formats`), its status
interval (`agent.link.status`), and its TLS identity and password: references to where they
are, never the secrets themselves (`SecretRef`, `FileRef`; read by
`agent.service.credentials`). The hub tools (`edge-agent
remote`, `fleet`, `tail`) check their options against this same model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, Field, ValidationInfo, field_validator

from config.fields import STRICT
from connectors.credentials import CREDENTIAL_PREFIX, FILE_PREFIX, check_reference
from events.formats import DEFAULT_FORMAT, FormatName

__all__ = ["BrokerAddress", "FileRef", "HubSection", "SecretRef", "check_broker_url"]


# Secrets and key files are never written inline: the config holds a reference in the one
# convention of `connectors.credentials` (resolved by `agent.service.credentials` when the hub
# session is built). A secret is `credential:NAME` or `file:/absolute/path`; a key or
# certificate file is an absolute path or `credential:NAME`.
def _secret_reference(value: str) -> str:
    if value.startswith(CREDENTIAL_PREFIX):
        return check_reference(value)
    if value.startswith(FILE_PREFIX):
        if not Path(value.removeprefix(FILE_PREFIX)).is_absolute():
            raise ValueError(f"{value!r}: give an absolute path after `file:`")
        return value
    raise ValueError(
        "write where the secret is, not the secret itself: \"credential:NAME\" (a systemd "
        "credential, LoadCredential=NAME:/path) or \"file:/absolute/path\""
    )


def _file_reference(value: str) -> str:
    if value.startswith(CREDENTIAL_PREFIX):
        return check_reference(value)
    if not Path(value).is_absolute():
        raise ValueError(f"{value!r}: expected an absolute path or \"credential:NAME\"")
    return value


SecretRef = Annotated[str, AfterValidator(_secret_reference)]
FileRef = Annotated[str, AfterValidator(_file_reference)]


def check_broker_url(url: str) -> str:
    """A broker URL, `mqtt://HOST:PORT` or `mqtts://HOST:PORT` (the agent's `[hub] url`, the
    hub's `[broker] url`); ValueError saying what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(
            f"unsupported scheme {parts.scheme!r} in {url!r}: expected mqtt://HOST:PORT "
            "or mqtts://HOST:PORT"
        )
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}: expected mqtt://HOST:PORT")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as error:
        raise ValueError(f"bad port in {url!r}: {error}") from error
    if parts.path not in ("", "/"):
        raise ValueError(f"a broker URL has no path: {url!r}")
    return url


class BrokerAddress:
    """`host`, `port` and `tls` of a model's broker `url` (checked by `check_broker_url`)."""

    url: str

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"


class HubSection(BaseModel, BrokerAddress):
    model_config = STRICT

    url: str
    topic_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")] = "mfg"
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    # The MQTT version of the link (docs/hub-contract.md, "MQTT 3.1.1 hubs"): "5"; "3.1.1" for
    # a broker without v5 (RabbitMQ before 3.13, NATS); "auto": v5, or 3.1.1 when the broker
    # refuses v5 at CONNECT (logged once). Declared before `format`, which depends on it.
    protocol: Literal["5", "3.1.1", "auto"] = "5"
    # The broker's packet limit in bytes when it does not send one at CONNECT (MQTT 3.1.1
    # never does): messages are split to fit it, a larger event is a dead letter.
    max_packet_size: Annotated[int, Field(ge=1024, le=268_435_460)] | None = None
    # Publish every "." of a topic as "/": for brokers that refuse "." in topic names (NATS
    # before 2.10); `.../events/production.count.v1` goes out as `.../events/production/count/v1`.
    dots_as_levels: bool = False
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    reconnect_min_s: Annotated[float, Field(gt=0, le=300)] = 0.5
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    batch_max_events: Annotated[int, Field(ge=1, le=10_000)] = 500
    batch_max_wait_ms: Annotated[float, Field(ge=0, le=10_000)] = 50.0
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 16
    # How events are put into MQTT messages (`events.formats`; docs/hub-contract.md,
    # "Formats"): the CloudEvents MQTT binding's structured or binary mode (one event per
    # message), or a batch of events per message, as JSON or msgpack.
    format: FormatName = DEFAULT_FORMAT
    # Seconds a published message may wait for its PUBACK before the connection is dropped and
    # everything unacknowledged is sent again on the next one (a path that lost its PUBACKs).
    puback_timeout_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    status_interval_s: Annotated[float, Field(ge=1, le=86_400)] = 30.0
    # Seconds the broker keeps this agent's MQTT session (its subscriptions and the QoS 1
    # messages queued for it) after a connection drops; 0: forget it at once.
    session_expiry_s: Annotated[int, Field(ge=0, le=7 * 86_400)] = 300
    # TLS (mqtts:// only): the CA that signed the broker's certificate (default: the system's
    # CAs), and this agent's client certificate and key for brokers that require one (mTLS).
    ca_file: FileRef | None = None
    cert_file: FileRef | None = None
    key_file: Annotated[FileRef | None, Field(validate_default=True)] = None
    username: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    password: Annotated[SecretRef | None, Field(validate_default=True)] = None

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _tls_only(cls, value: str | None, info: ValidationInfo) -> str | None:
        url = info.data.get("url")
        if value is not None and url is not None and urlsplit(url).scheme != "mqtts":
            raise ValueError(f"`{info.field_name}` needs a TLS hub URL (mqtts://), not {url!r}")
        return value

    @field_validator("key_file")
    @classmethod
    def _key_with_cert(cls, key_file: str | None, info: ValidationInfo) -> str | None:
        has_cert = info.data.get("cert_file") is not None
        if has_cert and key_file is None:
            raise ValueError("`cert_file` is set: give its private key as `key_file` too")
        if key_file is not None and not has_cert and "cert_file" in info.data:
            raise ValueError("`key_file` is set: give its certificate as `cert_file` too")
        return key_file

    @field_validator("format")
    @classmethod
    def _format_needs_v5(cls, value: str, info: ValidationInfo) -> str:
        protocol = info.data.get("protocol", "5")
        if value == "cloudevents-binary" and protocol != "5":
            raise ValueError(
                f'format "cloudevents-binary" needs MQTT v5 (its attributes are user properties), '
                f'and `protocol` is "{protocol}": use "cloudevents-structured" (the CloudEvents '
                'binding\'s mode for MQTT 3.1.1) or a batch format, or protocol = "5"'
            )
        return value

    @field_validator("password")
    @classmethod
    def _password_with_user(cls, password: str | None, info: ValidationInfo) -> str | None:
        if password is not None and info.data.get("username") is None:
            raise ValueError("`password` is set: give the `username` it belongs to")
        return password

    _url = field_validator("url")(check_broker_url)
