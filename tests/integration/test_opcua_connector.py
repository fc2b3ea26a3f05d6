"""The OPC UA connector against a real asyncua server: addressing, per-signal failures,
deadband, polling, alarms, a server restart mid-stream and backfill from history."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors.base import Quality, Reading
from connectors.opcua import OpcUaConnector, OpcUaSettings, OpcUaSignalSettings
from connectors.opcua import connector as opcua_connector
from connectors.opcua.config import SignalMode
from testkit.broker import free_loopback_port
from testkit.opcua_servers import ALARMS, COUNT, TEMPERATURE, serve_line
from tests.integration.test_opcua_security import running, until


def plain(endpoint: str, **extra: Any) -> OpcUaSettings:
    return OpcUaSettings.model_validate(
        {"endpoint": endpoint, "publishing_interval_ms": 20, "signal_retry_s": 0.2, **extra}
    )


async def until_async(
    values: Callable[[], Awaitable[list[object]]], wanted: object, limit_s: float = 10.0
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while wanted not in await values():
        if loop.time() > deadline:
            raise AssertionError(f"{wanted!r} did not appear within {limit_s} s")
        await asyncio.sleep(0.02)


def values_of(readings: list[Reading], signal: str) -> list[Any]:
    return [reading.value for reading in readings if reading.signal == signal]


async def test_browse_path_and_namespace_uri_resolve_and_keep_the_written_address() -> None:
    path = "Objects/Line1/Count"
    async with serve_line(free_loopback_port()) as line:
        connector = OpcUaConnector(
            "line", plain(line.endpoint),
            [OpcUaSignalSettings(node=path), OpcUaSignalSettings(node=TEMPERATURE)],
        )
        async with running(connector) as readings:
            await until(lambda: {r.signal for r in readings} == {path, TEMPERATURE},
                        "both signals")
            await line.write("Count", 7)
            await until(lambda: 7 in values_of(readings, path), "the count by browse path")
    assert connector.health.signal_errors == {}


async def test_a_missing_node_is_reported_and_retried_while_the_others_flow() -> None:
    missing = "ns=3;s=Line1.NotThereYet"
    bad_path = "Objects/Line1/Nope"
    async with serve_line(free_loopback_port()) as line:
        connector = OpcUaConnector(
            "line", plain(line.endpoint),
            [OpcUaSignalSettings(node=missing), OpcUaSignalSettings(node=bad_path),
             OpcUaSignalSettings(node=TEMPERATURE)],
        )
        async with running(connector) as readings:
            await until(lambda: values_of(readings, TEMPERATURE), "the good signal")
            errors = connector.health.signal_errors
            assert errors[missing] == "BadNodeIdUnknown"
            assert "Objects/Line1 has no child 'Nope'" in errors[bad_path]
            assert "Count" in errors[bad_path]  # the children are listed to help
            await line.write("Temperature", 22.0)
            await until(lambda: 22.0 in values_of(readings, TEMPERATURE), "still flowing")
            # The node appears (a server update): the slow retry picks it up.
            await line.server.nodes.objects.add_variable("ns=3;s=Line1.NotThereYet", "Late", 5)
            await until(lambda: values_of(readings, missing) == [5], "the late node's value")
            assert missing not in connector.health.signal_errors
            assert bad_path in connector.health.signal_errors


async def test_an_absolute_deadband_suppresses_small_changes() -> None:
    async with serve_line(free_loopback_port()) as line:
        connector = OpcUaConnector(
            "line", plain(line.endpoint),
            [OpcUaSignalSettings(node=TEMPERATURE, deadband_absolute=1.0),
             OpcUaSignalSettings(node=COUNT)],
        )
        async with running(connector) as readings:
            await until(lambda: values_of(readings, TEMPERATURE) == [20.0], "the first value")
            for value in (20.3, 20.6, 20.9, 22.5):
                await line.write("Temperature", value)
                await asyncio.sleep(0.05)
            await line.write("Count", 1)  # a marker that arrives after the writes above
            await until(lambda: values_of(readings, COUNT)[-1:] == [1], "the marker")
            await until(lambda: 22.5 in values_of(readings, TEMPERATURE), "the large change")
        assert values_of(readings, TEMPERATURE) == [20.0, 22.5]


async def test_polled_signals_are_read_in_batches_and_emitted_on_change() -> None:
    async with serve_line(free_loopback_port()) as line:
        connector = OpcUaConnector(
            "line", plain(line.endpoint),
            [OpcUaSignalSettings(node=TEMPERATURE, mode=SignalMode.POLL, poll_interval_ms=20),
             OpcUaSignalSettings(
                 node="Objects/Line1/Count", mode=SignalMode.POLL, poll_interval_ms=20
             )],
        )
        async with running(connector) as readings:
            await until(lambda: len(readings) == 2, "both current values")
            at = datetime.now(UTC).replace(microsecond=0)
            await line.write("Temperature", 25.0, at=at)
            await until(lambda: values_of(readings, TEMPERATURE) == [20.0, 25.0], "the change")
            await asyncio.sleep(0.2)  # ten more polls of unchanged values
        assert values_of(readings, TEMPERATURE) == [20.0, 25.0]
        assert readings[-1].timestamp == at
        assert readings[-1].server_timestamp is not None and readings[-1].received_at


async def test_an_alarm_event_arrives_as_a_reading_with_severity_and_message() -> None:
    async with serve_line(free_loopback_port()) as line:
        connector = OpcUaConnector(
            "line", plain(line.endpoint),
            [OpcUaSignalSettings(node=ALARMS, mode=SignalMode.EVENTS),
             OpcUaSignalSettings(node=COUNT)],
        )
        async with running(connector) as readings:
            await until(lambda: values_of(readings, COUNT), "the subscription is live")
            at = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
            await line.raise_alarm("Filler over temperature", 800, at=at)
            await until(lambda: values_of(readings, ALARMS), "the alarm")
        (alarm,) = [reading for reading in readings if reading.signal == ALARMS]
        attributes = dict(alarm.attributes)
        assert alarm.value == "Filler over temperature"
        assert alarm.timestamp == at
        assert attributes["severity"] == 800
        assert attributes["source_name"] == "Line1.Filler"
        assert attributes["condition"] == "FillerOverTemperature"


async def test_server_restart_mid_stream_reconnects_and_values_after_it_arrive() -> None:
    from agent.runtime import SourceRunner

    port = free_loopback_port()
    connector = OpcUaConnector(
        "line", plain(f"opc.tcp://127.0.0.1:{port}/line/", watchdog_interval_s=0.2,
                      reconnect_min_s=0.1, reconnect_max_s=0.5),
        [OpcUaSignalSettings(node=TEMPERATURE)],
    )
    readings: list[Reading] = []

    async def emit(batch: Any) -> None:
        readings.extend(batch)

    runner = SourceRunner(connector, backoff_min_s=0.1, backoff_max_s=0.5)
    task = asyncio.create_task(runner.run(emit))
    try:
        async with serve_line(port) as line:
            await until(lambda: values_of(readings, TEMPERATURE), "the first value")
            await line.write("Temperature", 30.0)
            await until(lambda: 30.0 in values_of(readings, TEMPERATURE), "before restart")
        await until(lambda: not connector.health.connected, "the drop is noticed")
        dropped = connector.health.disconnected_at
        assert dropped is not None
        async with serve_line(port) as line:
            await until(lambda: connector.health.connected, "reconnected", limit_s=20)
            await line.write("Temperature", 41.0)
            await until(lambda: 41.0 in values_of(readings, TEMPERATURE), "after restart")
        back = connector.health.reconnected_at
        assert back is not None and back > dropped
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=10)
    assert task.done()


async def test_a_session_gap_is_backfilled_from_history_with_the_same_facts() -> None:
    async with serve_line(free_loopback_port(), history=True) as line:
        settings = plain(line.endpoint)
        signals = [OpcUaSignalSettings(node=TEMPERATURE, backfill=True)]
        connector = OpcUaConnector("line", settings, signals)
        await line.write("Temperature", 21.0)
        async with running(connector) as live:
            await until(lambda: values_of(live, TEMPERATURE) == [21.0], "the live value")
        # The session is gone; the server keeps changing and historizing.
        for value in (22.0, 23.0, 24.0):
            await line.write("Temperature", value)
            # The server historizes through its own subscription: let it record each value.
            await until_async(lambda: line.historized("Temperature"), value)
        async with running(connector) as after:
            await until(lambda: len([r for r in after if r.backfilled]) >= 4, "the gap's values")
            await until(lambda: not after[-1].backfilled, "the live current value")
        backfilled = [r for r in after if r.backfilled]
        assert [r.value for r in backfilled] == [21.0, 22.0, 23.0, 24.0]
        times = [r.timestamp for r in backfilled]
        assert times == sorted(times)
        # The first backfilled value is the fact seen live: an equal reading (same event id).
        assert backfilled[0] == live[0]
        # The live repeat of the current value equals the last backfilled one.
        assert after[-1] == backfilled[-1]


async def test_a_server_without_history_is_reported_not_failed() -> None:
    async with serve_line(free_loopback_port(), history=False) as line:
        connector = OpcUaConnector(
            "line", plain(line.endpoint), [OpcUaSignalSettings(node=TEMPERATURE, backfill=True)]
        )
        async with running(connector) as live:
            await until(lambda: live, "the live value")
        async with running(connector) as after:
            await until(lambda: after, "the value after the gap")
        notice = connector.health.notices[f"history:{TEMPERATURE}"]
        assert "keeps no history" in notice
        assert all(reading.quality is Quality.GOOD for reading in after)


async def test_a_large_server_clock_skew_is_reported() -> None:
    async with serve_line(free_loopback_port()) as line:
        await line.set_clock(timedelta(hours=1))
        connector = OpcUaConnector(
            "line", plain(line.endpoint), [OpcUaSignalSettings(node=TEMPERATURE)]
        )
        async with running(connector) as readings:
            await until(lambda: readings, "a value: skew is a notice, not a failure")
        notice = connector.health.notices["clock_skew"]
        assert re.fullmatch(
            r"the server clock is 3\d{3}\.\d s ahead of the agent's "
            r"\(more than clock_skew_warn_s = 5\.0\)",
            notice,
        )
        # The server's clock is set right: the next session clears the notice.
        await line.set_clock(timedelta(0))
        async with running(connector) as readings:
            await until(lambda: readings, "a value")
        assert "clock_skew" not in connector.health.notices


async def test_a_silent_subscription_is_detected_and_recreated(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from agent.runtime import SourceRunner

    # A keep-alive every 0.5 s instead of 5 s, so "silent" (3 keep-alives, at least 2 s)
    # comes within the test's time.
    monkeypatch.setattr(opcua_connector, "_KEEPALIVE_MS", 500.0)
    async with serve_line(free_loopback_port()) as line:
        connector = OpcUaConnector(
            "line", plain(line.endpoint, watchdog_interval_s=0.2, reconnect_min_s=0.1,
                          reconnect_max_s=0.5),
            [OpcUaSignalSettings(node=TEMPERATURE)],
        )
        readings: list[Reading] = []

        async def emit(batch: Any) -> None:
            readings.extend(batch)

        runner = SourceRunner(connector, backoff_min_s=0.1, backoff_max_s=0.5)
        task = asyncio.create_task(runner.run(emit))
        try:
            await until(lambda: values_of(readings, TEMPERATURE), "the first value")
            assert line.silence_subscriptions() == 1  # the connection and session stay up
            await until(lambda: connector.health.reconnected_at is not None,
                        "the silent subscription noticed and a new session", limit_s=20)
            assert any("went silent" in record.getMessage() for record in caplog.records)
            await until(lambda: connector.health.connected, "the new session", limit_s=20)
            await line.write("Temperature", 44.0)
            await until(lambda: 44.0 in values_of(readings, TEMPERATURE),
                        "a value through the recreated subscription")
        finally:
            task.cancel()
            await asyncio.wait({task}, timeout=10)
        assert task.done()
