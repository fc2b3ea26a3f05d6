"""Signal addresses as OT engineers write them, and their resolution to NodeIds on a server.

Three syntaxes, told apart by their start:

    ns=2;s=Line1.Temp   ns=3;i=1001   i=2253      NodeId with a namespace index
    nsu=urn:plant:line1;s=Line1.Temp               NodeId with the namespace URI (stable: the
                                                   index of a URI may change when a server
                                                   restarts or is updated)
    Objects/Line1/Filler/Temp   Objects/2:Line1/2:Temp
                                                   browse path from the Objects folder; a
                                                   segment is a browse name, optionally with
                                                   its namespace index (`2:Temp`)

Resolution happens at the start of every session (namespace indexes and browsed nodes may
differ after a server restart); an address that cannot be resolved raises
`AddressNotFound` with the reason, which the connector reports for that signal only.
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncua import ua
from asyncua.client.client import Client

PATH_ROOT = "Objects/"


class AddressNotFound(LookupError):
    """The address is well formed but the server has no such node (or namespace)."""


@dataclass(frozen=True, slots=True)
class BrowseStep:
    name: str
    namespace: int | None  # None: any namespace


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed address: a NodeId (maybe with a namespace URI) or a browse path."""

    text: str
    node_id: ua.NodeId | None = None
    namespace_uri: str | None = None
    path: tuple[BrowseStep, ...] = ()


def parse_address(text: str) -> Address:
    """Parse `text`; raises ValueError naming the expected forms."""
    if text.startswith(PATH_ROOT):
        steps = []
        for segment in text[len(PATH_ROOT):].split("/"):
            if not segment:
                raise ValueError(f"empty segment in browse path {text!r}")
            namespace, sep, name = segment.partition(":")
            if sep and namespace.isdigit() and name:
                steps.append(BrowseStep(name, int(namespace)))
            else:
                steps.append(BrowseStep(segment, None))
        return Address(text, path=tuple(steps))
    try:
        node_id = ua.NodeId.from_string(text)
    except Exception as error:  # asyncua raises several types for bad strings
        raise ValueError(
            f"not an OPC UA NodeId: {text!r} (expected a NodeId like 'ns=2;s=Line1.Temp' or "
            "'ns=3;i=1001', a NodeId with namespace URI like 'nsu=urn:plant;s=Line1.Temp', "
            "or a browse path like 'Objects/Line1/Temp')"
        ) from error
    uri = getattr(node_id, "NamespaceUri", None)
    if uri:
        plain = ua.NodeId(node_id.Identifier, ua.Int16(0), node_id.NodeIdType)
        return Address(text, node_id=plain, namespace_uri=uri)
    return Address(text, node_id=node_id)


class AddressResolver:
    """Resolves addresses against one session; caches the namespace array for it."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._namespaces: list[str] | None = None

    async def resolve(self, text: str) -> ua.NodeId:
        address = parse_address(text)
        if address.path:
            return await self._browse(address)
        assert address.node_id is not None
        if address.namespace_uri is None:
            return address.node_id
        if self._namespaces is None:
            self._namespaces = list(await self._client.get_namespace_array())
        try:
            index = self._namespaces.index(address.namespace_uri)
        except ValueError:
            raise AddressNotFound(
                f"the server has no namespace {address.namespace_uri!r}"
            ) from None
        return ua.NodeId(address.node_id.Identifier, ua.Int16(index), address.node_id.NodeIdType)

    async def _browse(self, address: Address) -> ua.NodeId:
        node = self._client.nodes.objects
        walked = PATH_ROOT.rstrip("/")
        for step in address.path:
            children = await node.get_children_descriptions()
            matches = [
                child
                for child in children
                if child.BrowseName.Name == step.name
                and (step.namespace is None or child.BrowseName.NamespaceIndex == step.namespace)
            ]
            if not matches:
                names = ", ".join(sorted(child.BrowseName.Name for child in children)[:20])
                raise AddressNotFound(
                    f"{walked} has no child {step.name!r} (children: {names or 'none'})"
                )
            if len(matches) > 1:
                raise AddressNotFound(
                    f"{walked} has {len(matches)} children named {step.name!r}; write the "
                    f"namespace index, e.g. '{matches[0].BrowseName.NamespaceIndex}:{step.name}'"
                )
            node = self._client.get_node(matches[0].NodeId)
            walked = f"{walked}/{step.name}"
        return node.nodeid
