"""Browse-path resolution against a real asyncua server (testkit `serve_tree`, 4 folders x 250
variables): each folder's children are browsed once per resolver, not once per path, and every
result and error message equals the per-segment resolution it replaces.

Requests are counted with a spy: the real `UaSession.browse` of a real client talking to a real
server, wrapped to count calls (no times are asserted). `per_segment` below is the resolution
as it was before the cache (browse every segment of every path anew), kept as the oracle.
"""

from __future__ import annotations

import difflib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.client.ua_session import UaSession

from connectors.opcua import OpcUaConnector, OpcUaSettings, OpcUaSignalSettings
from connectors.opcua.addressing import PATH_ROOT, AddressNotFound, AddressResolver, parse_address
from testkit.broker import free_loopback_port
from testkit.opcua_servers import TREE_NAMESPACE, TreeServer, serve_tree
from tests.integration.test_opcua_security import running, until

FOLDERS = 4
PER_FOLDER = 250  # 1,000 variables
PATHS = [f"Objects/Tree/F{f}/V{v}" for f in range(FOLDERS) for v in range(PER_FOLDER)]
# Browses one resolver needs for PATHS: Objects, Tree and each folder, once each.
DISTINCT_PARENTS = 2 + FOLDERS


def tree_id(identifier: str, index: int) -> ua.NodeId:
    return ua.NodeId(ua.String(identifier), ua.Int16(index), ua.NodeIdType.String)


async def per_segment(client: Client, text: str) -> ua.NodeId:
    """The uncached resolution (every segment browsed anew), verbatim in behaviour."""
    address = parse_address(text)
    node = client.nodes.objects
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
            all_names = sorted(child.BrowseName.Name for child in children)
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
        node = client.get_node(matches[0].NodeId)
        walked = f"{walked}/{step.name}"
    return node.nodeid


class BrowseSpy:
    """Counts Browse (and BrowseNext) requests of one real client; delegates to the real ones."""

    def __init__(self, session: UaSession) -> None:
        self.browses = 0
        self.browse_nexts = 0
        real_browse, real_next = session.browse, session.browse_next

        async def browse(parameters: ua.BrowseParameters) -> Any:
            self.browses += 1
            return await real_browse(parameters)

        async def browse_next(parameters: ua.BrowseNextParameters) -> Any:
            self.browse_nexts += 1
            return await real_next(parameters)

        session.browse = browse  # type: ignore[method-assign]
        session.browse_next = browse_next  # type: ignore[method-assign]


@asynccontextmanager
async def tree_and_client() -> AsyncIterator[tuple[TreeServer, Client, BrowseSpy]]:
    async with serve_tree(free_loopback_port(), FOLDERS, PER_FOLDER) as tree:
        client = Client(tree.endpoint, timeout=30)
        async with client:
            yield tree, client, BrowseSpy(client.uaclient.session)


async def error_of(resolve: Callable[[str], Awaitable[ua.NodeId]], text: str) -> str:
    with pytest.raises(AddressNotFound) as caught:
        await resolve(text)
    return str(caught.value)


async def test_1000_paths_cost_one_browse_per_folder_and_equal_per_segment_resolution() -> None:
    async with tree_and_client() as (tree, client, spy):
        resolver = AddressResolver(client)
        resolved = [await resolver.resolve(path) for path in PATHS]
        assert (spy.browses, spy.browse_nexts) == (DISTINCT_PARENTS, 0)
        # The same NodeIds as the per-segment walk (which costs 3 browses per path) ...
        before = spy.browses
        oracle = [await per_segment(client, path) for path in PATHS]
        assert spy.browses - before == 3 * len(PATHS)  # the spy sees every request
        assert resolved == oracle
        # ... and as the server's own NodeIds.
        assert resolved == [
            tree_id(f"F{f}.V{v}", tree.index) for f in range(FOLDERS) for v in range(PER_FOLDER)
        ]


async def test_namespace_qualified_segments_resolve_as_before() -> None:
    index_paths = [
        "Objects/{i}:Tree/F1/{i}:V7",
        "Objects/{i}:Tree/{i}:F3/V249",
        "Objects/Tree/{i}:F0/{i}:V0",
    ]
    async with tree_and_client() as (tree, client, _spy):
        paths = [path.format(i=tree.index) for path in index_paths]
        resolver = AddressResolver(client)
        for path in paths:
            assert await resolver.resolve(path) == await per_segment(client, path)
        assert await resolver.resolve(paths[0]) == tree_id("F1.V7", tree.index)
        # A segment in another namespace than the child's is not that child.
        wrong = "Objects/0:Tree/F1/V7"
        message = await error_of(AddressResolver(client).resolve, wrong)
        assert message == await error_of(lambda text: per_segment(client, text), wrong)
        assert message.startswith("Objects has no child 'Tree'")


@pytest.mark.parametrize(
    ("path", "expected_start"),
    [
        ("Objects/Tree/F1/V2500", "Objects/Tree/F1 has no child 'V2500'; did you mean "),
        ("Objects/Tree/G2/V3", "Objects/Tree has no child 'G2'; did you mean 'F2'"),
        ("Objects/Tre/F0/V0", "Objects has no child 'Tre'; did you mean 'Tree'?"),
    ],
)
async def test_a_missing_segment_gets_the_same_error_with_did_you_mean(
    path: str, expected_start: str
) -> None:
    async with tree_and_client() as (_, client, _spy):
        expected = await error_of(lambda text: per_segment(client, text), path)
        assert expected.startswith(expected_start), expected
        # A fresh resolver (nothing cached) and one that has browsed every folder already.
        assert await error_of(AddressResolver(client).resolve, path) == expected
        warm = AddressResolver(client)
        for good in PATHS[::PER_FOLDER]:
            await warm.resolve(good)
        assert await error_of(warm.resolve, path) == expected
        # A failure is not remembered as a success, and does not break the paths after it.
        assert await warm.resolve("Objects/Tree/F1/V1") == await per_segment(
            client, "Objects/Tree/F1/V1"
        )


async def test_each_resolver_browses_anew_so_a_changed_address_space_is_seen() -> None:
    async with tree_and_client() as (tree, client, spy):
        first = AddressResolver(client)
        await first.resolve("Objects/Tree/F0/V0")
        await tree.folders[0].add_variable(
            tree_id("F0.Late", tree.index), f"{tree.index}:Late", 1.0
        )
        # The cache is per resolver (one per session start): the old one has F0's children
        # from before, a new one browses again and finds the node.
        with pytest.raises(AddressNotFound, match="has no child 'Late'"):
            await first.resolve("Objects/Tree/F0/Late")
        before = spy.browses
        late = await AddressResolver(client).resolve("Objects/Tree/F0/Late")
        assert late == tree_id("F0.Late", tree.index)
        assert spy.browses - before == 3


async def test_the_connector_subscribes_1000_paths_with_one_browse_per_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The whole connector start-up: every one of the 1,000 signals by browse path delivers
    its value, with the Browse requests of the session counted on the real UaSession class."""
    counted = {"browse": 0}
    real_browse = UaSession.browse

    async def browse(self: UaSession, parameters: ua.BrowseParameters) -> Any:
        counted["browse"] += 1
        return await real_browse(self, parameters)

    monkeypatch.setattr(UaSession, "browse", browse)
    async with serve_tree(free_loopback_port(), FOLDERS, PER_FOLDER) as tree:
        settings = OpcUaSettings.model_validate(
            {"endpoint": tree.endpoint, "publishing_interval_ms": 50, "request_timeout_s": 30}
        )
        signals = [OpcUaSignalSettings(node=path) for path in PATHS]
        signals.append(OpcUaSignalSettings(node=f"nsu={TREE_NAMESPACE};s=F0.V0"))
        connector = OpcUaConnector("tree", settings, signals)
        async with running(connector) as readings:
            wanted = {*PATHS, f"nsu={TREE_NAMESPACE};s=F0.V0"}
            await until(lambda: {r.signal for r in readings} >= wanted, "every signal's value",
                        limit_s=90)
            assert connector.health.signal_errors == {}
            by_signal = {r.signal: r.value for r in readings}
            assert by_signal["Objects/Tree/F3/V249"] == 249.0
            assert counted["browse"] <= DISTINCT_PARENTS, counted
            assert counted["browse"] >= 1  # the spy is on the path the connector takes
