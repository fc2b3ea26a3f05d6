"""Browsing and reading for people (`edge-agent opcua browse/read`): one session, facts out.

`walk` browses a subtree and returns one `BrowsedNode` per node, in tree order: its NodeId with
the namespace URI (stable across server restarts; paste it into `node = ...`), its browse path
from the start, browse name, node class, and for variables the data type, the current value
with its status, and the EngineeringUnits property (OPC UA `EUInformation`: UNECE code as an
integer, display name) when the server has one. The caller (`agent.cli.opcua`) prints the tree
or turns it into config stubs; turning EngineeringUnits into UCUM codes is the config's
business (`config.tags`), not the connector's.

Invariants:
- Nothing is written to the server; one session per call.
- Below the Objects folder the standard objects of namespace 0 (Server, Locations, Aliases...)
  are skipped unless `standard=True`, and named in `BrowseResult.hidden`: an OT engineer looks
  for the plant's nodes, not for the server's diagnostics.
- At most `_MAX_CHILDREN` children per node (the rest counted in `more`), so a huge folder
  cannot flood the terminal.
- A node that cannot be read (hidden type, denied attribute) still appears, with what could
  be read; a value that is Bad carries its status name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from asyncua import ua
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from connectors.opcua.addressing import PATH_ROOT, AddressNotFound, AddressResolver, nearest_nodes
from connectors.opcua.config import OpcUaSettings
from connectors.opcua.session import open_session

_MAX_CHILDREN = 500  # per node
_OBJECTS = ua.NodeId(ua.Int32(ObjectIds.ObjectsFolder), ua.Int16(0))


@dataclass(frozen=True, slots=True)
class EngineeringUnits:
    """A variable's EngineeringUnits property (OPC UA Part 8, EUInformation): `unit_id` is the
    UNECE Rec 20 common code packed into an int (-1: none), `display_name` what it shows."""

    unit_id: int
    display_name: str
    description: str = ""
    namespace_uri: str = ""


@dataclass(frozen=True, slots=True)
class BrowsedNode:
    level: int
    node_id: str  # with the namespace URI, as a config can hold it
    path: tuple[str, ...]  # browse names from the Objects folder (excluded) to the node
    browse_name: str
    node_class: str
    data_type: str | None = None  # variables only; "?" when the server hides it
    value: Any = None
    status: str | None = None  # the value's status name when not Good
    units: EngineeringUnits | None = None
    event_notifier: bool = False  # an object whose events can be subscribed to
    more: int = 0  # children not listed (beyond _MAX_CHILDREN)


@dataclass(slots=True)
class BrowseResult:
    nodes: list[BrowsedNode] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)  # standard objects skipped


@dataclass(frozen=True, slots=True)
class ReadResult:
    address: str
    node_id: str
    value: Any
    status: str  # "Good" or the status code's name
    bad: bool
    source_time: datetime | None
    server_time: datetime | None
    units: EngineeringUnits | None


async def walk(
    settings: OpcUaSettings, start: str, depth: int, *, standard: bool = False
) -> BrowseResult:
    """The subtree at `start` (an address; "Objects" or "" for the Objects folder) to `depth`
    levels below it. Raises AddressNotFound (with the nearest names) for a start that is not
    there, SourceUnavailable / SourceConfigError when no session can be opened."""
    result = BrowseResult()
    async with open_session(settings) as client:
        namespaces = list(await client.get_namespace_array())
        if start.rstrip("/") in ("", "Objects"):
            node = client.nodes.objects
        else:
            text = start if start.startswith(PATH_ROOT) or "=" in start else PATH_ROOT + start
            node = client.get_node(await AddressResolver(client).resolve(text))
            try:
                await node.read_browse_name()
            except UaStatusCodeError as error:
                raise await _not_found(client, text, ua.StatusCode(error.code).name) from None
        above = () if node.nodeid == _OBJECTS else await _folders_above(node)
        await _walk(node, namespaces, 0, depth, above, standard, result)
    return result


async def read_one(settings: OpcUaSettings, address: str) -> ReadResult:
    """One value with its status and timestamps; AddressNotFound (naming the nearest nodes)
    when the server does not know the node."""
    async with open_session(settings) as client:
        namespaces = list(await client.get_namespace_array())
        node = client.get_node(await AddressResolver(client).resolve(address))
        value = await node.read_data_value(raise_on_bad_status=False)
        status = value.StatusCode if value.StatusCode is not None else ua.StatusCode()
        if status.value == StatusCodes.BadNodeIdUnknown:
            raise await _not_found(client, address, status.name)
        units = await engineering_units(node) if not status.is_bad() else None
        return ReadResult(
            address=address,
            node_id=stable_id(node.nodeid, namespaces),
            value=value.Value.Value if value.Value is not None else None,
            status="Good" if status.is_good() else status.name,
            bad=status.is_bad(),
            source_time=value.SourceTimestamp,
            server_time=value.ServerTimestamp,
            units=units,
        )


async def _not_found(client: Any, address: str, name: str) -> AddressNotFound:
    close = await nearest_nodes(client, address)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else (
        "; browse the folder to find it: edge-agent opcua browse ENDPOINT --node FOLDER"
    )
    return AddressNotFound(f"the server has no node {address!r} ({name}){hint}")


async def _walk(
    node: Node,
    namespaces: list[str],
    level: int,
    depth: int,
    parent_path: tuple[str, ...],
    standard: bool,
    result: BrowseResult,
) -> None:
    name = (await node.read_browse_name()).Name
    node_class = await node.read_node_class()
    path = parent_path if node.nodeid == _OBJECTS and level == 0 else (*parent_path, name)
    entry = BrowsedNode(level, stable_id(node.nodeid, namespaces), path, name, node_class.name)
    children: list[Node] = []
    if level < depth:
        children = await node.get_children()
        if node.nodeid == _OBJECTS and not standard:
            shown = []
            for child in children:
                if child.nodeid.NamespaceIndex == 0:
                    result.hidden.append((await child.read_browse_name()).Name)
                else:
                    shown.append(child)
            children = shown
    more = max(0, len(children) - _MAX_CHILDREN)
    if node_class == ua.NodeClass.Variable:
        data_value = await node.read_data_value(raise_on_bad_status=False)
        status = data_value.StatusCode
        entry = BrowsedNode(
            level, entry.node_id, path, name, entry.node_class,
            data_type=await _data_type_name(node),
            value=data_value.Value.Value if data_value.Value is not None else None,
            status=None if status is None or status.is_good() else status.name,
            units=await engineering_units(node),
            more=more,
        )
    elif node_class == ua.NodeClass.Object:
        notifier = await node.read_attribute(AttributeIds.EventNotifier, raise_on_bad_status=False)
        bits = notifier.Value.Value if notifier.Value is not None else 0
        entry = BrowsedNode(
            level, entry.node_id, path, name, entry.node_class,
            event_notifier=isinstance(bits, int) and bool(bits & 1), more=more,
        )
    result.nodes.append(entry)
    for child in children[:_MAX_CHILDREN]:
        if node_class == ua.NodeClass.Variable and (
            (await child.read_browse_name()).Name == "EngineeringUnits"
        ):
            continue  # shown as the variable's unit
        await _walk(child, namespaces, level + 1, depth, path, standard, result)


async def _folders_above(node: Node) -> tuple[str, ...]:
    """The browse names between the Objects folder and `node` (both excluded), from the
    server's inverse hierarchical references; () when the server has no such path."""
    try:
        path = await node.get_path(max_length=30)
    except (UaError, OSError, TimeoutError):
        return ()
    ids = [step.nodeid for step in path]
    if _OBJECTS not in ids:
        return ()
    names = [(await step.read_browse_name()).Name for step in path[ids.index(_OBJECTS) + 1:-1]]
    return tuple(str(name) for name in names)


async def engineering_units(node: Node) -> EngineeringUnits | None:
    """The variable's EngineeringUnits property, or None (absent, unreadable, not an
    EUInformation). `check-config --connect` reads it too (`connectors.opcua.probe`)."""
    try:
        properties = await node.get_children_descriptions(refs=ObjectIds.HasProperty)
        for described in properties:
            if described.BrowseName.Name != "EngineeringUnits":
                continue
            value = await Node(node.session, described.NodeId).read_value()
            if isinstance(value, ua.EUInformation):
                return EngineeringUnits(
                    unit_id=int(value.UnitId),
                    display_name=(value.DisplayName.Text or "") if value.DisplayName else "",
                    description=(value.Description.Text or "") if value.Description else "",
                    namespace_uri=value.NamespaceUri or "",
                )
    except (UaError, OSError, TimeoutError, ValueError):
        return None
    return None


async def _data_type_name(node: Node) -> str:
    try:
        data_type = await node.read_attribute(AttributeIds.DataType)
        if data_type.Value is None:
            return "?"
        type_node = Node(node.session, data_type.Value.Value)
        return str((await type_node.read_browse_name()).Name)
    except Exception:  # a server that hides types still browses
        return "?"


def stable_id(node_id: ua.NodeId, namespaces: list[str]) -> str:
    """The NodeId as text with its namespace URI instead of the index (`nsu=URI;s=...`); a
    namespace 0 id stays as it is (`i=2253`)."""
    text: str = node_id.to_string()
    index = node_id.NamespaceIndex
    if index == 0 or index >= len(namespaces):
        return text
    return text.replace(f"ns={index};", f"nsu={namespaces[index]};", 1)
