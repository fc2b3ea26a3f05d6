"""The `peer` fixture: each connector's real peer (`peers.open_peer`), by parameter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conformance.peers import Peer, open_peer


@pytest.fixture
async def peer(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Peer]:
    async with open_peer(request.param, tmp_path) as started:
        yield started
