"""Micro-benchmark of the hot path, in process: notification → reading → event → stored body.

N synthetic OPC UA data changes (`ua.MonitoredItemNotification`s, as asyncua decodes them from
a publish response; one telemetry signal per item, values and source timestamps distinct)
go through the real code of each stage, one publish response (`--batch` changes) at a time:

    readings   `OpcUaConnector._readings` (what `_forward` does per publish response)
    mapping    `Mapper.map_all` (coercion, units, context, event ids)
    encode     `Pipeline.records` (delivery class and `events.wire.encode_body`)
    append     `SqliteBuffer.append` of those records (synchronous = normal, a temporary
               file; CPU of the whole process, so the writer thread counts)

Printed per stage: CPU µs per event (`time.process_time`, best of `--repeat` rounds), and the
cyclic collector's runs per 1,000 events (gen 0/1/2, from `gc.callbacks`) after `gc.freeze()`,
as the daemon does once started. `--profile` adds a cProfile of the first three stages (the
top functions by own time); `--cycles` lists the object types the collector had to free
(objects in reference cycles: what makes it run more than the allocation count alone would).

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

STAGES = ("readings", "mapping", "encode", "append")


class _GcCounter:
    """Collector runs per generation while installed (`gc.callbacks`)."""

    def __init__(self) -> None:
        self.runs = [0, 0, 0]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.runs[info["generation"]] += 1


def _notifications(items: int, count: int, batch: int) -> list[list[Any]]:
    """`count` data changes over `items` monitored items, cut into publish responses: each
    encoded and decoded again by asyncua, so they are the objects its client hands over."""
    from asyncua import ua
    from asyncua.common.utils import Buffer
    from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

    start = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
    responses: list[list[Any]] = []
    for first in range(0, count, batch):
        response = []
        for number in range(first, min(first + batch, count)):
            moment = start + timedelta(microseconds=number * 137)
            value = ua.DataValue(
                ua.Variant(float(number) * 0.5, ua.VariantType.Double),
                SourceTimestamp=moment,  # type: ignore[arg-type]
                ServerTimestamp=moment,  # type: ignore[arg-type]
            )
            change = ua.MonitoredItemNotification(
                ClientHandle=1_000_000 + number % items, Value=value
            )
            response.append(
                struct_from_binary(ua.MonitoredItemNotification, Buffer(struct_to_binary(change)))
            )
        responses.append(response)
    return responses


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

    responses = _notifications(items, events, batch)
    results: dict[str, Any] = {"items": items, "events": events, "batch": batch}
    best = dict.fromkeys(STAGES, float("inf"))
    gc_runs = {stage: [0, 0, 0] for stage in STAGES}
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
            for name in STAGES:
                if spent[name] < best[name]:
                    best[name], gc_runs[name] = spent[name], runs[name]
        if profile:
            results["profile"] = _profile(config, connector, plan, responses)
        if cycles:
            results["cycles"] = _cycles(config, connector, plan, responses)
    results["us_per_event"] = {name: best[name] / events * 1e6 for name in STAGES}
    results["gc_runs_per_1000_events"] = {
        name: [round(n * 1000 / events, 2) for n in gc_runs[name]] for name in STAGES
    }
    return results


async def _round(
    connector: Any,
    plan: Any,
    mapper: Any,
    pipeline: Any,
    buffer: Any,
    responses: list[list[Any]],
) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Every response through every stage once: CPU seconds and collector runs per stage."""
    gc.collect()
    gc.freeze()  # what startup built, out of the collector's way (as the daemon does)
    counter = _GcCounter()
    gc.callbacks.append(counter)
    spent = dict.fromkeys(STAGES, 0.0)
    runs = {stage: [0, 0, 0] for stage in STAGES}

    def account(name: str, cpu: float, before: list[int]) -> None:
        spent[name] += time.process_time() - cpu
        runs[name] = [a + b - c for a, b, c in zip(runs[name], counter.runs, before, strict=True)]

    try:
        for response in responses:
            before, cpu = list(counter.runs), time.process_time()
            readings, _ = connector._readings(response, plan)
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
            del readings, events, records
    finally:
        gc.callbacks.remove(counter)
        gc.unfreeze()
    return spent, runs


def _profile(config: Any, connector: Any, plan: Any, responses: list[list[Any]]) -> str:
    """cProfile of readings → mapping → encode, the top functions by own time."""
    import io

    from agent.flow.mapping import Mapper
    from agent.flow.pipeline import Pipeline

    mapper = Mapper.from_config(config)
    pipeline = Pipeline(mapper, None, site="bench", agent="edge-01")  # type: ignore[arg-type]
    profiler = cProfile.Profile()
    profiler.enable()
    for response in responses:
        readings, _ = connector._readings(response, plan)
        events, _ = mapper.map_all(readings)
        pipeline.records(events)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(18)
    return text.getvalue()


def _cycles(config: Any, connector: Any, plan: Any, responses: list[list[Any]]) -> dict[str, int]:
    """The types of the objects the collector found in cycles along readings → encode."""
    from agent.flow.mapping import Mapper
    from agent.flow.pipeline import Pipeline

    mapper = Mapper.from_config(config)
    pipeline = Pipeline(mapper, None, site="bench", agent="edge-01")  # type: ignore[arg-type]
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for response in responses:
            readings, _ = connector._readings(response, plan)
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
    print(f"{'total':<10} {sum(results['us_per_event'].values()):>9.2f}")
    if "cycles" in results:
        print("objects freed only by the collector (in cycles):", results["cycles"] or "none")
    if "profile" in results:
        print(results["profile"])


if __name__ == "__main__":
    main()
