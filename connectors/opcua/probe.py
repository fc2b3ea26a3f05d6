"""Probing a source before the agent is (re)started (`edge-agent check-config --connect`).

One session with the source's security settings; every configured address is resolved and
its node class, data type, EngineeringUnits (variables) and (for event signals) event notifier
bit are read. Nothing is subscribed. The caller decides whether a data type fits what the
signal feeds, and whether the node's unit is the signal's (`config.ucum_engineering`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

from connectors.base import ProbeResult
from connectors.opcua.addressing import AddressNotFound, AddressResolver, nearest_nodes
from connectors.opcua.browse import EngineeringUnits, engineering_units
from connectors.opcua.config import OpcUaSettings, OpcUaSignalSettings, SignalMode
from connectors.opcua.session import open_session

# Built-in OPC UA data types by what they hold (Part 6, 5.1.2), by browse name.
INTEGER_TYPES = {"SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
                 "Integer", "UInteger"}
NUMBER_TYPES = INTEGER_TYPES | {"Float", "Double", "Number", "Decimal"}


@dataclass(frozen=True, slots=True)
class NodeProbeResult(ProbeResult):
    """A probe result that also carries the node's EngineeringUnits (None: it has none)."""

    units: EngineeringUnits | None = None


@dataclass(frozen=True, slots=True)
class SignalProbe:
    address: str
    node_id: str | None = None
    node_class: str | None = None
    data_type: str | None = None
    problem: str | None = None
    units: EngineeringUnits | None = None  # the variable's EngineeringUnits, when it has them


async def probe(
    settings: OpcUaSettings, signals: Sequence[OpcUaSignalSettings]
) -> list[SignalProbe]:
    """Resolve and describe every signal; raises SourceUnavailable / SourceConfigError when
    the session itself cannot be opened."""
    results: list[SignalProbe] = []
    async with open_session(settings) as client:
        resolver = AddressResolver(client)
        for signal in signals:
            try:
                node_id = await resolver.resolve(signal.node)
                node = client.get_node(node_id)
                results.append(await _describe(node, signal))
            except AddressNotFound as error:
                results.append(SignalProbe(signal.node, problem=str(error)))
            except UaStatusCodeError as error:
                results.append(SignalProbe(signal.node, problem=await missing_node_problem(
                    client, signal.node, error.code
                )))
    return results


async def missing_node_problem(client: Client, address: str, code: int) -> str:
    """What to say about an address the server answered with a bad status `code`: the status,
    and for an unknown node the nearest existing siblings."""
    name = ua.StatusCode(ua.UInt32(code)).name
    if code != StatusCodes.BadNodeIdUnknown:
        return f"the server says {name}"
    close = await nearest_nodes(client, address)
    hint = f": did you mean {' or '.join(map(repr, close))}?" if close else (
        ": no node with this NodeId; browse for it with `edge-agent opcua browse`"
    )
    return f"the server says {name}{hint}"


async def _describe(node: Node, signal: OpcUaSignalSettings) -> SignalProbe:
    node_class = await node.read_node_class()
    text_id: str = node.nodeid.to_string()
    if signal.mode is SignalMode.EVENTS:
        notifier = await node.read_attribute(AttributeIds.EventNotifier, raise_on_bad_status=False)
        bits = notifier.Value.Value if notifier.Value is not None else 0
        problem = None if isinstance(bits, int) and bits & 1 else (
            "is not an event notifier (its EventNotifier attribute has no SubscribeToEvents bit)"
        )
        return SignalProbe(signal.node, text_id, node_class.name, None, problem)
    if node_class != ua.NodeClass.Variable:
        return SignalProbe(signal.node, text_id, node_class.name, None,
                           f"is a {node_class.name}, not a Variable with a value")
    data_type = await node.read_attribute(AttributeIds.DataType)
    type_name = "?"
    if data_type.Value is not None:
        type_node = Node(node.session, data_type.Value.Value)
        type_name = str((await type_node.read_browse_name()).Name)
    return SignalProbe(signal.node, text_id, node_class.name, type_name,
                       units=await engineering_units(node))
