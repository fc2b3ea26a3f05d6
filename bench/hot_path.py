"""Micro-benchmark of the hot path, in process: publish response → reading → event → body.

N synthetic OPC UA data changes (one telemetry signal per item, values and source timestamps
distinct) are encoded by asyncua into PublishResponses (`--batch` changes each) and go through
the real code of each stage, one publish response at a time:

    decode     `fast_publish.decode_publish_response`: the lean decoder the connector's session
               uses, data changes as columns (`DataChanges`)
    readings   `OpcUaConnector._readings` of those columns (what `_forward` does per response)
    mapping    `Mapper.map_all` (coercion, units, context, event ids)
    encode     `Pipeline.records` (delivery class and `events.wire.encode_body`)
    append     `SqliteBuffer.append` of those records (synchronous = normal, a temporary
               file; CPU of the whole process, so the writer thread counts)

Beside them, for comparison (not in the total): asyncua's own decoding of the same responses
(`struct_from_binary(ua.PublishResponse, ...)`, what `UaSession.publish` does) and
`_readings` of the `ua.MonitoredItemNotification`s it makes.

Printed per stage: CPU µs per event (`time.process_time`, best of `--repeat` rounds), and the
cyclic collector's runs per 1,000 events (gen 0/1/2, from `gc.callbacks`) after `gc.freeze()`,
as the daemon does once started. `--profile` adds a cProfile of decode → encode (the top
functions by own time); `--cycles` lists the object types the collector had to free (objects
in reference cycles: what makes it run more than the allocation count alone would).

    .venv/bin/python -m bench.hot_path [--items 1000] [--events 200000] [--batch 1000]

Prints figures; never asserted in tests.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import gc
import pstats
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

STAGES = ("decode", "readings", "mapping", "encode", "append")
# asyncua's own decoding and the readings of its objects, measured beside the lean path.
GENERIC = ("decode_generic", "readings_generic")


class _GcCounter:
    """Collector runs per generation while installed (`gc.callbacks`)."""

    def __init__(self) -> None:
        self.runs = [0, 0, 0]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.runs[info["generation"]] += 1


def _responses(items: int, count: int, batch: int) -> list[Any]:
    """`count` data changes over `items` monitored items, cut into publish responses, each
    encoded by asyncua as a server sends it: asyncua `Buffer`s' bytes."""
    from asyncua import ua
    from asyncua.ua.ua_binary import struct_to_binary

    start = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    responses: list[bytes] = []
    for sequence, first in enumerate(range(0, count, batch), start=1):
        changes = []
        for number in range(first, min(first + batch, count)):
            moment = start + timedelta(microseconds=number * 137)
            value = ua.DataValue(
                ua.Variant(float(number) * 0.5, ua.VariantType.Double),
                SourceTimestamp=moment,  # type: ignore[arg-type]
                ServerTimestamp=moment,  # type: ignore[arg-type]
            )
            changes.append(
                ua.MonitoredItemNotification(ClientHandle=1_000_000 + number % items, Value=value)
            )
        message = ua.NotificationMessage(
            SequenceNumber=sequence,
            NotificationData=[ua.DataChangeNotification(MonitoredItems=changes)],
        )
        result = ua.PublishResult(SubscriptionId=1, NotificationMessage=message)
        responses.append(struct_to_binary(ua.PublishResponse(Parameters=result)))
    return responses


def _decode_lean(blob: bytes) -> list[Any]:
    """One response through the lean decoder: its notifications, as `_forward` gets them."""
    from asyncua.common.utils import Buffer

    from connectors.opcua.fast_publish import decode_publish_response

    response = decode_publish_response(Buffer(blob), _columns)
    return list(response.Parameters.NotificationMessage.NotificationData)


def _columns(subscription_id: int) -> bool:
    return True


def _decode_generic(blob: bytes) -> list[Any]:
    """One response through asyncua's decoder: its `MonitoredItemNotification`s."""
    from asyncua import ua
    from asyncua.common.utils import Buffer
    from asyncua.ua.ua_binary import struct_from_binary

    response = struct_from_binary(ua.PublishResponse, Buffer(blob))
    return [
        item
        for data in response.Parameters.NotificationMessage.NotificationData
        for item in data.MonitoredItems
    ]


async def run(
    items: int,
    events: int,
    batch: int,
    repeat: int,
    *,
    profile: bool,
    cycles: bool,
    append: bool = True,
) -> dict[str, Any]:
    from agent.flow.mapping import Mapper
    from agent.flow.pipeline import Pipeline
    from bench.opcua_subscription import _config
    from buffer.sqlite import SqliteBuffer
    from connectors.opcua import OpcUaConnector
    from connectors.opcua.connector import _Plan

    responses = _responses(items, events, batch)
    results: dict[str, Any] = {"items": items, "events": events, "batch": batch}
    best = dict.fromkeys(STAGES + GENERIC, float("inf"))
    gc_runs = {stage: [0, 0, 0] for stage in STAGES + GENERIC}
    with tempfile.TemporaryDirectory() as state:
        config = _config(items, 4840, Path(state))
        source = config.sources[0]
        connector = OpcUaConnector(source.name, source, source.signals)
        plan = _Plan(data={1_000_000 + n: signal for n, signal in enumerate(source.signals)})
        for round_ in range(repeat):
            mapper = Mapper.from_config(config)  # fresh history: every round maps the same
            async with contextlib.AsyncExitStack() as stack:
                buffer: Any = None
                if append:
                    try:
                        buffer = await stack.enter_async_context(
                            SqliteBuffer.open(
                                Path(state) / f"buffer-{round_}.sqlite", synchronous="normal"
                            )
                        )
                    except Exception as error:  # the buffer is not this benchmark's subject
                        results["append_skipped"] = f"{type(error).__name__}: {error}"
                pipeline = Pipeline(mapper, buffer, site="bench", agent="edge-01")
                spent, runs = await _round(connector, plan, mapper, pipeline, buffer, responses)
            for name in STAGES + GENERIC:
                if spent[name] < best[name]:
                    best[name], gc_runs[name] = spent[name], runs[name]
        if profile:
            results["profile"] = _profile(config, connector, plan, responses)
        if cycles:
            results["cycles"] = _cycles(config, connector, plan, responses)
    results["us_per_event"] = {name: best[name] / events * 1e6 for name in STAGES + GENERIC}
    results["gc_runs_per_1000_events"] = {
        name: [round(n * 1000 / events, 2) for n in gc_runs[name]] for name in STAGES + GENERIC
    }
    return results


async def _round(
    connector: Any,
    plan: Any,
    mapper: Any,
    pipeline: Any,
    buffer: Any,
    responses: list[bytes],
) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Every response through every stage once: CPU seconds and collector runs per stage
    (asyncua's decoding and the readings of its objects first, on their own)."""
    gc.collect()
    gc.freeze()  # what startup built, out of the collector's way (as the daemon does)
    counter = _GcCounter()
    gc.callbacks.append(counter)
    spent = dict.fromkeys(STAGES + GENERIC, 0.0)
    runs = {stage: [0, 0, 0] for stage in STAGES + GENERIC}

    def account(name: str, cpu: float, before: list[int]) -> None:
        spent[name] += time.process_time() - cpu
        runs[name] = [a + b - c for a, b, c in zip(runs[name], counter.runs, before, strict=True)]

    try:
        for blob in responses:
            before, cpu = list(counter.runs), time.process_time()
            notifications = _decode_generic(blob)
            account("decode_generic", cpu, before)
            before, cpu = list(counter.runs), time.process_time()
            connector._readings(notifications, plan)
            account("readings_generic", cpu, before)
            del notifications
        for blob in responses:
            before, cpu = list(counter.runs), time.process_time()
            notifications = _decode_lean(blob)
            account("decode", cpu, before)
            before, cpu = list(counter.runs), time.process_time()
            readings, _ = connector._readings(notifications, plan)
            account("readings", cpu, before)
            before, cpu = list(counter.runs), time.process_time()
            events, _ = mapper.map_all(readings)
            account("mapping", cpu, before)
            before, cpu = list(counter.runs), time.process_time()
            records = pipeline.records(events)
            account("encode", cpu, before)
            if buffer is not None:
                before, cpu = list(counter.runs), time.process_time()
                await buffer.append(records)
                account("append", cpu, before)
            del notifications, readings, events, records
    finally:
        gc.callbacks.remove(counter)
        gc.unfreeze()
    return spent, runs


def _profile(config: Any, connector: Any, plan: Any, responses: list[bytes]) -> str:
    """cProfile of decode → readings → mapping → encode, the top functions by own time."""
    import io

    from agent.flow.mapping import Mapper
    from agent.flow.pipeline import Pipeline

    mapper = Mapper.from_config(config)
    pipeline = Pipeline(mapper, None, site="bench", agent="edge-01")  # type: ignore[arg-type]
    profiler = cProfile.Profile()
    profiler.enable()
    for blob in responses:
        readings, _ = connector._readings(_decode_lean(blob), plan)
        events, _ = mapper.map_all(readings)
        pipeline.records(events)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(18)
    return text.getvalue()


def _cycles(config: Any, connector: Any, plan: Any, responses: list[bytes]) -> dict[str, int]:
    """The types of the objects the collector found in cycles along decode → encode."""
    from agent.flow.mapping import Mapper
    from agent.flow.pipeline import Pipeline

    mapper = Mapper.from_config(config)
    pipeline = Pipeline(mapper, None, site="bench", agent="edge-01")  # type: ignore[arg-type]
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for blob in responses:
            readings, _ = connector._readings(_decode_lean(blob), plan)
            events, _ = mapper.map_all(readings)
            pipeline.records(events)
        del readings, events
        gc.collect()
        found = collections.Counter(type(each).__qualname__ for each in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    return dict(found.most_common(12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="changes per publish response")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--cycles", action="store_true")
    parser.add_argument("--no-append", action="store_true", help="skip the buffer stage")
    arguments = parser.parse_args()
    results = asyncio.run(
        run(
            arguments.items,
            arguments.events,
            arguments.batch,
            arguments.repeat,
            profile=arguments.profile,
            cycles=arguments.cycles,
            append=not arguments.no_append,
        )
    )
    print(
        f"{results['events']} changes over {results['items']} items, "
        f"{results['batch']} per publish response (best of {arguments.repeat})"
    )
    print(f"{'stage':<10} {'µs/event':>9}  gc runs per 1,000 events (gen 0/1/2)")
    for name in STAGES:
        runs = "/".join(str(n) for n in results["gc_runs_per_1000_events"][name])
        print(f"{name:<10} {results['us_per_event'][name]:>9.2f}  {runs}")
    if "append_skipped" in results:
        print(f"append stage skipped (the buffer did not open): {results['append_skipped']}")
    total = sum(results["us_per_event"][name] for name in STAGES)
    print(f"{'total':<10} {total:>9.2f}")
    print("beside the lean path (not in the total): asyncua's own decoding, and the readings")
    print("of the objects it makes")
    for name in GENERIC:
        runs = "/".join(str(n) for n in results["gc_runs_per_1000_events"][name])
        print(f"{name:<17} {results['us_per_event'][name]:>9.2f}  {runs}")
    if "cycles" in results:
        print("objects freed only by the collector (in cycles):", results["cycles"] or "none")
    if "profile" in results:
        print(results["profile"])


if __name__ == "__main__":
    main()
