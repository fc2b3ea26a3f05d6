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

A NodeId the server does not know gets `nearest_nodes`: the existing nodes whose string
identifiers are closest, found by browsing the node that the identifier's dotted prefix names
(`Line1.Filler.Gone` -> the children of `Line1.Filler`), so the message can say "did you mean".

Resolution happens at the start of every session (namespace indexes and browsed nodes may
differ after a server restart); an address that cannot be resolved raises
`AddressNotFound` with the reason, which the connector reports for that signal only.

Browse paths are walked one segment at a time, but each node's children are browsed once per
`AddressResolver` (one per session start) and indexed by browse name: N signals under the same
folders cost one Browse request per distinct folder on their paths, not one per segment per
signal (10,000 signals in one folder were quadratic: 10,000 browses of a 10,000-child folder,
each decoded and scanned in full). The cache lives only as long as the resolver, so a server
restart or a changed address space is seen at the next session; within one resolution pass a
child added after its parent was browsed is not seen (it is at the next session). A failed
browse is not cached. Messages for a missing or ambiguous segment are made from the same
browse result as before, so they are unchanged ("did you mean", the children listed).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.uaerrors import UaError

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
        self._children: dict[ua.NodeId, _Children] = {}

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
        node_id = self._client.nodes.objects.nodeid
        walked = PATH_ROOT.rstrip("/")
        for step in address.path:
            children = await self._children_of(node_id)
            matches = [
                child
                for child in children.by_name.get(step.name, ())
                if step.namespace is None or child.BrowseName.NamespaceIndex == step.namespace
            ]
            if not matches:
                all_names = children.sorted_names
                names = ", ".join(all_names[:20])
                close = difflib.get_close_matches(step.name, all_names, n=3, cutoff=0.5)
                hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise AddressNotFound(
                    f"{walked} has no child {step.name!r}{hint} (children: {names or 'none'})"
                )
            if len(matches) > 1:
                raise AddressNotFound(
                    f"{walked} has {len(matches)} children named {step.name!r}; write the "
                    f"namespace index, e.g. '{matches[0].BrowseName.NamespaceIndex}:{step.name}'"
                )
            node_id = matches[0].NodeId
            walked = f"{walked}/{step.name}"
        return node_id

    async def _children_of(self, node_id: ua.NodeId) -> _Children:
        """The node's children (hierarchical references, forward), browsed once per resolver."""
        children = self._children.get(node_id)
        if children is None:
            found = await self._client.get_node(node_id).get_children_descriptions()
            children = _Children(found)
            self._children[node_id] = children
        return children


class _Children:
    """One node's browsed children, indexed by browse name (in browse order within a name)."""

    __slots__ = ("_descriptions", "_sorted_names", "by_name")

    def __init__(self, descriptions: list[ua.ReferenceDescription]) -> None:
        self._descriptions = descriptions
        self.by_name: dict[str, list[ua.ReferenceDescription]] = {}
        for child in descriptions:
            self.by_name.setdefault(child.BrowseName.Name, []).append(child)
        self._sorted_names: list[str] | None = None

    @property
    def sorted_names(self) -> list[str]:
        """Every child's browse name, sorted, duplicates kept (only a failing step needs it)."""
        if self._sorted_names is None:
            self._sorted_names = sorted(child.BrowseName.Name for child in self._descriptions)
        return self._sorted_names


async def nearest_nodes(client: Client, text: str, limit: int = 3) -> list[str]:
    """For an address the server does not know: the nearest existing siblings, written as
    the address was (a NodeId with the same namespace form), closest first; [] when none can
    be found. String identifiers are cut at their last `.` or `/` and the node so named (in
    the same namespace) is browsed; other identifiers, or no such parent, give []."""
    try:
        address = parse_address(text)
    except ValueError:
        return []
    node_id = address.node_id
    if node_id is None or not isinstance(node_id.Identifier, str):
        return []
    identifier = node_id.Identifier
    cut = max(identifier.rfind("."), identifier.rfind("/"))
    if cut <= 0:
        return []
    try:
        index = await AddressResolver(client).resolve(text)
        parent = client.get_node(
            ua.NodeId(ua.String(identifier[:cut]), index.NamespaceIndex, ua.NodeIdType.String)
        )
        children = await parent.get_children_descriptions()
    except (AddressNotFound, UaError, OSError, TimeoutError):
        return []
    siblings: dict[str, str] = {}  # last segment -> full identifier
    for child in children:
        if isinstance(child.NodeId.Identifier, str):
            full = child.NodeId.Identifier
            siblings.setdefault(full[max(full.rfind("."), full.rfind("/")) + 1:], full)
    wanted = identifier[cut + 1:]
    close = difflib.get_close_matches(wanted, list(siblings), n=limit, cutoff=0.6)
    if not close:  # a case slip difflib rates low: "temperature" for "Temperature"
        close = [name for name in siblings if name.lower() == wanted.lower()]
    prefix = text[: text.rfind(identifier)] if identifier in text else ""
    close = [siblings[name] for name in close]
    return [prefix + name for name in close]
