"""Values of many types from a real asyncua server arrive through the lean PublishResponse
decoder (`connectors.opcua.fast_publish`) as the server wrote them."""

# asyncua types its scalars as subclasses (ua.Int32, ua.DateTime, ...) that plain ints and
# datetimes are not; building its messages here takes plain ones, as the test servers do.
# mypy: disable-error-code="arg-type,list-item"

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asyncua import ua

from connectors.base import Quality
from connectors.opcua import OpcUaConnector, OpcUaSignalSettings, fast_publish
from connectors.opcua.fast_publish import LeanPublish
from testkit.broker import free_loopback_port
from testkit.opcua_servers import TEST_NAMESPACE, serve_line
from tests.integration.test_opcua_connector import plain
from tests.integration.test_opcua_security import running, until

MOMENT = datetime(2026, 12, 7, 8, 30, 15, 250_000, tzinfo=UTC)
# name: (variant type, initial value, written value, the reading's value of the written one)
VARIABLES: dict[str, tuple[ua.VariantType, Any, Any, Any]] = {
    "Running": (ua.VariantType.Boolean, False, True, True),
    "Step": (ua.VariantType.SByte, 0, -7, -7),
    "Speed": (ua.VariantType.UInt16, 0, 65_535, 65_535),
    "Rejects": (ua.VariantType.Int32, 0, -2_000_000_000, -2_000_000_000),
    "Total": (ua.VariantType.UInt64, 0, 2**64 - 1, 2**64 - 1),
    "Level": (ua.VariantType.Float, 0.0, 1.25, 1.25),
    "Pressure": (ua.VariantType.Double, 0.0, 3.141592653589793, 3.141592653589793),
    "Recipe": (ua.VariantType.String, "", "Füllung ✓", "Füllung ✓"),
    "Changed": (ua.VariantType.DateTime, MOMENT, MOMENT + timedelta(days=1),
                (MOMENT + timedelta(days=1)).isoformat()),
    "Blob": (ua.VariantType.ByteString, b"", b"\x00\xff\x10", "00ff10"),
    # Not read by the lean path itself: decoded by asyncua's DataValue decoder at its offset.
    "Profile": (ua.VariantType.Int32, [0], [1, 2, 3], "[1, 2, 3]"),
    "State": (ua.VariantType.LocalizedText, ua.LocalizedText("idle"),
              ua.LocalizedText("running", "en"), "running"),
}  # fmt: skip


def address(name: str) -> str:
    return f"nsu={TEST_NAMESPACE};s=Line1.{name}"


async def test_values_of_many_types_arrive_through_the_lean_decoder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    installed: list[LeanPublish] = []
    install = fast_publish.install

    def recording_install(session: Any) -> LeanPublish | None:  # the real one, recorded
        lean = install(session)
        if lean is not None:
            installed.append(lean)
        return lean

    monkeypatch.setattr(fast_publish, "install", recording_install)
    async with serve_line(free_loopback_port()) as line:
        index = await line.server.get_namespace_index(TEST_NAMESPACE)
        folder = line.server.get_node(ua.NodeId("Line1", index))
        nodes = {}
        for name, (kind, initial, _, _) in VARIABLES.items():
            nodes[name] = await folder.add_variable(
                ua.NodeId(f"Line1.{name}", index), name, ua.Variant(initial, kind)
            )
        connector = OpcUaConnector(
            "line", plain(line.endpoint), [OpcUaSignalSettings(node=address(n)) for n in VARIABLES]
        )
        async with running(connector) as readings:
            await until(lambda: {r.signal for r in readings} == set(map(address, VARIABLES)),
                        "every initial value")  # fmt: skip
            for name, (kind, _, written, _) in VARIABLES.items():
                await nodes[name].write_value(
                    ua.DataValue(ua.Variant(written, kind), SourceTimestamp=MOMENT)
                )
            expected = {address(name): wanted for name, (*_, wanted) in VARIABLES.items()}

            def arrived() -> dict[str, Any]:
                return {
                    r.signal: r.value
                    for r in readings
                    if r.source_timestamp == MOMENT and r.signal in expected
                }

            await until(lambda: arrived() == expected, "every written value")
    for reading in readings:
        assert reading.quality is Quality.GOOD and reading.status is None
        assert reading.server_timestamp is not None and reading.server_timestamp.tzinfo is UTC
    written = [r for r in readings if r.source_timestamp == MOMENT]
    assert all(r.timestamp == MOMENT for r in written)
    assert {type(r.value) for r in written} == {bool, int, float, str}
    assert [r.value for r in written if r.signal == address("Running")] == [True]
    (lean,) = installed
    assert lean.lean_total > 0 and lean.fallback_total == 0
    assert lean.changes_total >= len(readings)  # every value came as a row of columns
