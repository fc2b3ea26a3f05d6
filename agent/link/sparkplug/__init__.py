"""Sparkplug B 3.0 output: the agent as an edge node on its hub session (docs/sparkplug.md).

    buffer ──lease──▶ forwarder ──OutputHook──▶ SparkplugEdgeNode ──▶ MqttSession ──▶ broker
                       (ack on PUBACK)          topic per device,       will = NDEATH
                                                DDATA encoding, births,  (will_provider)
                                                seq, STATE gate
                      runtime ──on_message──▶ SparkplugEdgeNode.offer (NCMD, STATE)

The buffer has one consumer, so Sparkplug is not a second sink: it is the forwarder's output
mode. The forwarder keeps its ack rule (a DDATA's PUBACK acks exactly its events), its lanes,
splitting and dead letters; the edge node decides the topic of each event (its device), encodes
a DDATA of one device's events, publishes births ahead of it, numbers messages (seq) and tells
the forwarder to hold while the Primary Host is offline or a rebirth is due
(`agent.link.sparkplug.edge_node` states the invariants).

Modules: `metrics` (events as metrics), `payloads` (protobuf messages), `edge_node` (state and
hooks); `sparkplug_b_pb2` is generated from `sparkplug_b.proto` (docs/sparkplug.md says how).
"""

from __future__ import annotations

import logging

from agent.link.forwarder import Forwarder
from agent.link.mqtt_session import MqttSession
from agent.link.sparkplug.edge_node import SparkplugEdgeNode
from config.schema import AgentConfig

__all__ = ["SparkplugEdgeNode", "attach"]

_log = logging.getLogger(__name__)


def attach(
    config: AgentConfig, session: MqttSession, forwarder: Forwarder
) -> SparkplugEdgeNode | None:
    """With `[sparkplug] enabled`, the edge node wired into `session` (its will) and
    `forwarder` (its output); None otherwise, and nothing changes."""
    section = config.sparkplug
    if not section.enabled:
        return None
    if config.hub.session_expiry_s > 0:
        _log.warning(
            "sparkplug: hub.session_expiry_s = %d keeps an MQTT session across reconnects; "
            "Sparkplug 3.0 wants clean sessions (set it to 0)",
            config.hub.session_expiry_s,
        )
    node = SparkplugEdgeNode(
        session,
        group_id=section.group_id or config.agent.site,
        edge_node_id=section.edge_node_id or config.agent.id,
        primary_host_id=section.primary_host_id,
        state_dir=config.agent.state_dir,
        wake=forwarder.wake,
    )
    session.will_provider = node.will
    forwarder.output = node
    return node
