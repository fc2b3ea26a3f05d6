"""An `MqttSession` to the hub, built from the config's `[hub]` section: the one place that
turns hub settings into a session.

The agent's runtime (its own link: will, status on connect, commands) and the hub tools
(`edge-agent remote`, `fleet`, `tail`) all connect through `hub_session`, so they agree on
the broker's address, its TLS and password handling (`agent.service.credentials`) and the session's
tuning (keepalive, session expiry, PUBACK deadline, reconnect backoff, MQTT version and what
stands in for v5 on 3.1.1): whatever a caller wants
different it says in the `HubSection` it passes (the hub tools build theirs from their options).
`agent.link.mqtt_session` itself stays free of the config: it is the MQTT code the hub shares.

Reading the secrets and TLS files happens here, when the session is built, not when it
connects: a `CredentialError` (a config error: it names the key) comes out of `hub_session`
before anything is started.
"""

from __future__ import annotations

import logging

from agent.link.mqtt_session import MqttSession, OnConnected, OnMessage, WillMessage
from agent.service.credentials import hub_credentials
from config.hub import HubSection

__all__ = ["hub_session"]


def hub_session(
    hub: HubSection,
    *,
    client_id: str,
    connect_timeout_s: float | None = None,
    will: WillMessage | None = None,
    on_connected: OnConnected | None = None,
    on_message: OnMessage | None = None,
    logger: logging.Logger | None = None,
) -> MqttSession:
    """A session (not started: `async with` it) to `hub`'s broker as `client_id`.

    `connect_timeout_s` overrides `hub.connect_timeout_s` (a hub tool's `--timeout`, which the
    section's bounds do not limit). Raises `CredentialError` if a secret, key or certificate
    the section names cannot be used."""
    credentials = hub_credentials(hub)
    return MqttSession(
        host=hub.host,
        port=hub.port,
        client_id=client_id,
        keepalive_s=hub.keepalive_s,
        tls=credentials.tls,
        client_cert_expires_at=credentials.client_cert_expires_at,
        username=credentials.username,
        password=credentials.password,
        session_expiry_s=hub.session_expiry_s,
        will=will,
        connect_timeout_s=hub.connect_timeout_s if connect_timeout_s is None else connect_timeout_s,
        puback_timeout_s=hub.puback_timeout_s,
        reconnect_min_s=hub.reconnect_min_s,
        reconnect_max_s=hub.reconnect_max_s,
        on_connected=on_connected,
        on_message=on_message,
        protocol=hub.protocol,
        max_packet_size=hub.max_packet_size,
        dots_as_levels=hub.dots_as_levels,
        logger=logger,
    )
