"""Browsing and reading for people (`edge-agent opcua browse/read`): one session, text out.

Each browsed node prints on one line, indented by depth: its NodeId with the namespace URI
(stable across server restarts; paste it into `node = ...`), browse name, node class, and for
variables the data type and current value.
"""

from __future__ import annotations

from collections.abc import Callable

from asyncua import ua
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds

from connectors.opcua.addressing import PATH_ROOT, AddressResolver
from connectors.opcua.config import OpcUaSettings
from connectors.opcua.session import open_session

Output = Callable[[str], None]
_MAX_CHILDREN = 500  # per node, so a huge folder cannot flood the terminal


async def browse_tree(settings: OpcUaSettings, path: str, depth: int, out: Output) -> None:
    async with open_session(settings) as client:
        namespaces = list(await client.get_namespace_array())
        if path.rstrip("/") in ("", "Objects"):
            start = client.nodes.objects
        else:
            text = path if path.startswith(PATH_ROOT) or "=" in path else PATH_ROOT + path
            start = client.get_node(await AddressResolver(client).resolve(text))
        await _print(start, namespaces, 0, depth, out)


async def read_one(settings: OpcUaSettings, address: str, out: Output) -> None:
    async with open_session(settings) as client:
        node = client.get_node(await AddressResolver(client).resolve(address))
        value = await node.read_data_value(raise_on_bad_status=False)
        status = value.StatusCode.name if value.StatusCode is not None else "Good"
        shown = value.Value.Value if value.Value is not None else None
        out(f"{address} = {shown!r} ({status}; source time {value.SourceTimestamp}, "
            f"server time {value.ServerTimestamp})")


async def _print(node: Node, namespaces: list[str], level: int, depth: int, out: Output) -> None:
    name = await node.read_browse_name()
    node_class = await node.read_node_class()
    line = f"{'  ' * level}{_stable_id(node.nodeid, namespaces)}  {name.Name}  {node_class.name}"
    if node_class == ua.NodeClass.Variable:
        data_type = await _data_type_name(node)
        value = await node.read_data_value(raise_on_bad_status=False)
        shown = value.Value.Value if value.Value is not None else None
        line += f"  {data_type} = {shown!r}"
    out(line)
    if level >= depth:
        return
    children = await node.get_children()
    for child in children[:_MAX_CHILDREN]:
        await _print(child, namespaces, level + 1, depth, out)
    if len(children) > _MAX_CHILDREN:
        out(f"{'  ' * (level + 1)}... {len(children) - _MAX_CHILDREN} more")


async def _data_type_name(node: Node) -> str:
    try:
        data_type = await node.read_attribute(AttributeIds.DataType)
        if data_type.Value is None:
            return "?"
        type_node = Node(node.session, data_type.Value.Value)
        return str((await type_node.read_browse_name()).Name)
    except Exception:  # a server that hides types still browses
        return "?"


def _stable_id(node_id: ua.NodeId, namespaces: list[str]) -> str:
    text: str = node_id.to_string()
    index = node_id.NamespaceIndex
    if index == 0 or index >= len(namespaces):
        return text
    return text.replace(f"ns={index};", f"nsu={namespaces[index]};", 1)
