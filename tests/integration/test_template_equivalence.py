"""A template instantiated for three lines produces the events of the same config written by
hand (issue 19, "Done when"): one real asyncua server with three filling lines, the agent in
process and a real mosquitto; the same values with the same source timestamps are fed to the
agent once under each config, and what reaches the hub is compared event by event.

The ids must be equal (they derive from site, source, signal, source timestamp and value,
`events.ids`), and so is everything else but `seq`: `seq` numbers the events in the order one
agent accepted them, and the initial values of a subscription come together in an order the
server picks. Each later value is written after the previous one's event arrived, so the
comparison needs no timing luck.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.server.server import Server

from testkit.broker import MosquittoBroker, Subscriber, free_loopback_port
from testkit.events import decode_events, unique_by_id
from tests.integration.test_first_path import running_agent, until

LINES = ("L1", "L2", "L3")
# leaf, initial value, variant type
LEAVES = (
    ("GoodCount", 0, ua.VariantType.Int32),
    ("State", 0, ua.VariantType.Int32),
    ("Temperature", 65.0, ua.VariantType.Double),
    ("Stopped", False, ua.VariantType.Boolean),
    ("StopReason", 2, ua.VariantType.Int32),
)
TYPES = {leaf: variant for leaf, _, variant in LEAVES}

HEAD = """\
[agent]
site = "plant-a"
id = "edge-01"
state_dir = "{state_dir}"

[hub]
url = "{hub}"
batch_max_wait_ms = 20

[lookups.stop_reasons]
entries = { 1 = "JAM", 2 = "STARVED", 3 = "BLOCKED" }
"""

SOURCE = """
[[sources]]
name = "plant"
type = "opcua"
endpoint = "{endpoint}"
publishing_interval_ms = 50
"""

TEMPLATED = (
    HEAD
    + """
[templates.filler]
params = ["line", "max"]
  [[templates.filler.signals]]
  node = "ns=2;s={line}.Filler.GoodCount"
  event = "production.count"
  asset = "{line}/filler"
  name = "good"
  rollover = "{max}"
  [[templates.filler.signals]]
  node = "ns=2;s={line}.Filler.State"
  event = "machine.state"
  asset = "{line}/filler"
  name = "state"
  states = { 0 = "idle", 1 = "running", 2 = "down", 3 = "fault" }
  [[templates.filler.signals]]
  node = "ns=2;s={line}.Filler.Temperature"
  event = "telemetry"
  asset = "{line}/filler"
  name = "temperature"
  unit = "Cel"
  [[templates.filler.signals]]
  node = "ns=2;s={line}.Filler.Stopped"
  event = "machine.downtime"
  asset = "{line}/filler"
  name = "stopped"
  reason = "stop_reason"
  [[templates.filler.signals]]
  node = "ns=2;s={line}.Filler.StopReason"
  asset = "{line}/filler"
  name = "stop_reason"
  lookup = "stop_reasons"
"""
    + SOURCE
    + """
  [[sources.instances]]
  template = "filler"
  params = { line = "L1", max = 65535 }

  [[sources.instances]]
  template = "filler"
  params = { line = "L2", max = 65535 }
  overrides = { temperature = { decimals = 1 } }

  [[sources.instances]]
  template = "filler"
  params = { line = "L3", max = 9999 }
"""
)

# The same signals, written out by hand (`{line}`, `{max}`, `{extra}` filled per line by
# `str.format`, which also turns `{{`, `}}` into braces).
BY_HAND_LINE = """
  [[sources.signals]]
  node = "ns=2;s={line}.Filler.GoodCount"
  event = "production.count"
  asset = "{line}/filler"
  name = "good"
  rollover = {max}
  [[sources.signals]]
  node = "ns=2;s={line}.Filler.State"
  event = "machine.state"
  asset = "{line}/filler"
  name = "state"
  states = {{ 0 = "idle", 1 = "running", 2 = "down", 3 = "fault" }}
  [[sources.signals]]
  node = "ns=2;s={line}.Filler.Temperature"
  event = "telemetry"
  asset = "{line}/filler"
  name = "temperature"
  unit = "Cel"{extra}
  [[sources.signals]]
  node = "ns=2;s={line}.Filler.Stopped"
  event = "machine.downtime"
  asset = "{line}/filler"
  name = "stopped"
  reason = "stop_reason"
  [[sources.signals]]
  node = "ns=2;s={line}.Filler.StopReason"
  asset = "{line}/filler"
  name = "stop_reason"
  lookup = "stop_reasons"
"""


def by_hand_text() -> str:
    lines = [
        BY_HAND_LINE.format(line="L1", max=65535, extra=""),
        BY_HAND_LINE.format(line="L2", max=65535, extra="\n  decimals = 1"),
        BY_HAND_LINE.format(line="L3", max=9999, extra=""),
    ]
    return HEAD + SOURCE + "".join(lines)


class ThreeLines:
    """The OPC UA server: `write` sets a node's value with a source timestamp."""

    def __init__(self, endpoint: str, variables: dict[str, Any]) -> None:
        self.endpoint = endpoint
        self._variables = variables

    async def write(self, line: str, leaf: str, value: object, at: datetime) -> None:
        data_value = ua.DataValue(
            ua.Variant(value, TYPES[leaf]),
            SourceTimestamp=ua_time(at),
            ServerTimestamp=ua_time(datetime.now(UTC)),
        )
        await self._variables[f"{line}.Filler.{leaf}"].write_value(data_value)

    async def reset(self, at: datetime) -> None:
        """Every node back to its initial value, stamped `at`."""
        for line in LINES:
            for leaf, initial, _ in LEAVES:
                await self.write(line, leaf, initial, at)


def node_id(identifier: str, index: int) -> ua.NodeId:
    return ua.NodeId(ua.String(identifier), ua.Int16(index), ua.NodeIdType.String)


def ua_time(moment: datetime) -> ua.DateTime:
    return ua.DateTime.fromtimestamp(moment.timestamp(), tz=UTC)


@asynccontextmanager
async def serve_three_lines() -> AsyncIterator[ThreeLines]:
    port = free_loopback_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/lines/"
    server = Server()
    await server.init()
    server.set_endpoint(endpoint)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    index = await server.register_namespace("urn:plant-edge-agent:test:three-lines")
    assert index == 2, index
    variables: dict[str, Any] = {}
    for line in LINES:
        parent = await server.nodes.objects.add_object(node_id(line, index), line)
        for leaf, initial, variant in LEAVES:
            ident = f"{line}.Filler.{leaf}"
            variables[ident] = await parent.add_variable(
                node_id(ident, index), leaf, ua.Variant(initial, variant)
            )
    async with server:
        yield ThreeLines(endpoint, variables)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def run_once(
    config_text: str, tmp_path: Path, broker: MosquittoBroker, lines: ThreeLines, t0: datetime
) -> dict[str, dict[str, Any]]:
    """The events (by id) that reach the hub when the agent runs `config_text` against the
    server reset to its initial values (at `t0`) and fed the same writes."""
    tmp_path.mkdir()  # noqa: ASYNC240  (a test's own directory, before the agent starts)
    path = tmp_path / "agent.toml"
    path.write_text(
        config_text.replace("{state_dir}", str(tmp_path / "state"))
        .replace("{hub}", broker.url)
        .replace("{endpoint}", lines.endpoint)
    )
    await lines.reset(t0)
    writes: list[tuple[str, str, object]] = [
        ("L1", "GoodCount", 5),
        ("L2", "State", 1),
        ("L2", "Temperature", 70.56),  # decimals = 1 on L2 only (an override)
        ("L3", "GoodCount", 9998),
        ("L3", "GoodCount", 3),  # wraps at 9999 on L3 (max = 9999)
        ("L2", "Stopped", True),  # a downtime with its reason (stop_reason = 2)
        ("L2", "Stopped", False),
        ("L3", "Temperature", 71.0),
    ]
    with Subscriber(broker, "mfg/plant-a/edge-01/events/#") as subscriber:

        def arrived() -> dict[str, dict[str, Any]]:
            return unique_by_id(decode_events(subscriber.messages))

        def has(subject: str, moment: datetime) -> Callable[[], bool]:
            wanted = stamp(moment)
            return lambda: any(
                e["subject"] == subject and e["time"] == wanted for e in arrived().values()
            )

        async with running_agent(path):
            # the initial values: a count, a state and a temperature per line
            await until(lambda: len(arrived()) >= 9, "the 9 events of the initial values")
            for offset, (line, leaf, value) in enumerate(writes, start=1):
                moment = t0 + timedelta(seconds=offset)
                await lines.write(line, leaf, value, moment)
                await until(has(f"{line}/filler", moment), f"the event of {line} {leaf}={value}")
        return arrived()


async def test_three_instances_produce_the_events_of_the_hand_written_config(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    async with serve_three_lines() as lines:
        templated = await run_once(TEMPLATED, tmp_path / "templated", broker, lines, t0)
        by_hand = await run_once(by_hand_text(), tmp_path / "by-hand", broker, lines, t0)

    assert len(templated) == 9 + 8, sorted(e["type"] for e in templated.values())
    assert sorted(e["seq"] for e in templated.values()) == list(range(1, 18))
    assert sorted(e["seq"] for e in by_hand.values()) == list(range(1, 18))

    def without_seq(events: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {key: {k: v for k, v in e.items() if k != "seq"} for key, e in events.items()}

    assert without_seq(templated) == without_seq(by_hand)  # ids included: the same ids

    # ... and they are the events the parameters and the override ask for
    def data(subject: str, kind: str) -> list[dict[str, Any]]:
        found = [e for e in templated.values() if e["subject"] == subject and e["type"] == kind]
        return [e["data"] for e in sorted(found, key=lambda e: e["time"])]

    assert [d["value"] for d in data("L2/filler", "telemetry.v1")] == [65.0, 70.6]
    assert [d["increment"] for d in data("L3/filler", "production.count.v1")] == [None, 9998, 5]
    (start, end) = data("L2/filler", "machine.downtime.v1")
    assert (start["phase"], start["reason"], end["phase"]) == ("start", "STARVED", "end")
