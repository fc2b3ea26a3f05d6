"""The performance tables of docs/performance.md, rendered from the benchmarks' results files.

Three benchmarks write every figure they measure to a JSON file (git ignores them):
`bench.run` to `bench/results.json` (and the agent beside the peer to
`bench/results.peer.json`), `bench.durability` to `bench/results.durability.json`,
`bench.wire_formats` to `bench/results.wire_formats.json`. The figures
the docs show come from their committed reference copies (`SECTIONS`: `RUN`, `DURABILITY`,
`WIRE_FORMATS`, and `SIDE_BY_SIDE`: the agent beside the peer, ThingsBoard IoT Gateway, from
the file `bench.run` writes beside its own, `bench/results.peer.json`), through this module,
never typed in by hand. Each section's tables sit in docs/performance.md
between its own `begin` and `end` marker lines; `tests/unit/test_docs.py` checks that what is
there equals `section.render(reference)`, so the docs and the reference files cannot drift
apart.

    .venv/bin/python -m bench.report [FILE] [--write]

prints the tables of FILE (its section is told by its `benchmark` field; none: `bench.run`), or
of every reference file; `--write` puts them into docs/performance.md instead. After a run
worth publishing: copy its results files over the references (`bench.run`'s two:
`results.json` and `results.peer.json`) and run `python -m bench.report --write`.

Rendering is a pure function of the results: the same file always gives the same text.
A figure a results file lacks (NaN in JSON) shows as an en dash.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PERFORMANCE_DOC = REPO / "docs" / "performance.md"
MIB_IN_MB = 2**20 / 1e6
_DASH = "\u2013"  # an en dash, between a range's ends

Results = Mapping[str, Any]


def render_run(results: Results) -> str:
    """The Markdown of `bench.run`'s tables, for one results file (ends with a newline)."""
    parts = [
        _measured_on(results, "bench.run", _repeated(results)),
        _ingest_table(results["ingest"]),
        *_cost_tables(results["ingest"]),
        _startup_table(results["ingest"]),
        _backlog_table(results["backlog"]),
    ]
    if "large_file" in results:
        parts.append(_large_file_table(results["large_file"]))
    parts.append(_targets_table(results["targets"], quick=results["mode"] == "quick"))
    return "\n\n".join(parts) + "\n"


def peer_runs(run: Results) -> list[Results]:
    """The peer runs of one ingest run of a `bench.run` results file (none when skipped)."""
    return [other for other in run.get("peer", []) if "phases" in other]


def render_side_by_side(results: Results) -> str:
    """The Markdown of the agent beside the peer (ThingsBoard IoT Gateway, once per storage),
    from one `bench.run` results file (ends with a newline)."""
    runs = results["ingest"]
    measured = [other for run in runs for other in peer_runs(run)]
    conditions = (
        f"the peer {measured[0]['name']} {measured[0]['version']}"
        if measured
        else "the peer not measured"
    )
    repeated = _repeated(results)
    parts = [
        _measured_on(results, "bench.run", f"{conditions}, {repeated}" if repeated else conditions)
    ]
    rows = []
    for run in runs:
        summary = _summary(run)
        for other in peer_runs(run):
            peer_phases = {phase["phase"]: phase for phase in other["phases"]}
            for agent in run["agent"]:
                them = peer_phases[agent["phase"]]
                entry = summary.get(agent["phase"], {})
                spread = entry.get("peer", {}).get(other["storage"], {})
                sides = ({**agent, **entry.get("agent", {})}, {**them, **spread})
                ratio = spread.get(
                    "agent_per_peer", agent["cpu_us_per_event"] / them["cpu_us_per_event"]
                )
                rows.append(
                    [
                        _items(run),
                        agent["phase"],
                        _storage(other, results),
                        _both(sides, "offered_per_s"),
                        _both(sides, "delivered_per_s"),
                        _both(sides, "missing"),
                        _both(sides, "cpu_us_per_event"),
                        _figure(ratio, 2, bold=True),
                        _both(sides, "write_bytes_per_event"),
                        _both(sides, "cpu_share", " %", 100),
                        _both(sides, "latency_p50_ms", " ms"),
                        _both(sides, "latency_p99_ms", " ms"),
                    ]
                )
    parts.append(
        _table(
            [
                "items",
                "phase",
                "peer storage",
                "offered/s, agent / peer",
                "delivered/s",
                "lost",
                "CPU µs per value",
                "agent \u00f7 peer",
                "disk bytes written per value",
                "CPU of a core",
                "latency p50",
                "latency p99",
            ],
            "-:|-|-|-:|-:|-:|-:|-:|-:|-:|-:|-:",
            rows,
        )
    )
    startup = [
        [
            _number(run["items"], 0),
            other["storage"],
            f"{_number(run['start_to_all_items_s'], 2)} s",
            f"{_number(other['start_to_all_items_s'], 2)} s",
            f"{_number(run['agent_peak_rss_mib'], 0)} MiB",
            f"{_number(other['peak_rss_mib'], 0)} MiB",
        ]
        for run in runs
        for other in peer_runs(run)
    ]
    parts.append(
        _table(
            [
                "items",
                "peer storage",
                "agent: start to every item's first value",
                "peer: the same",
                "agent peak RSS",
                "peer peak RSS",
            ],
            "-:|-|-:|-:|-:|-:",
            startup,
        )
    )
    skipped = [
        f"{_number(run['items'], 0)} items: the peer was skipped ({other['skipped']})"
        for run in runs
        for other in run.get("peer", [])
        if "skipped" in other
    ]
    if skipped:
        parts.append("; ".join(skipped) + ".")
    return "\n\n".join(parts) + "\n"


def _both(sides: Sequence[Results], key: str, unit: str = "", scale: float = 1.0) -> str:
    """`agent / peer` of one figure, whole numbers (medians with their min and max, where the
    results have repetitions)."""
    return " / ".join(f"{_figure(side[key], 0, scale)}{unit}" for side in sides)


def _figure(value: Any, decimals: int, scale: float = 1.0, *, bold: bool = False) -> str:
    """One number, or a median with its (min-max) range (a `bench.ingest.spread` dict); `bold`: the
    number (the median) in bold. A range whose ends read the same (one repetition) shows as
    the number alone."""
    if isinstance(value, Mapping):
        median = _number(value["median"] * scale, decimals)
        low, high = (_number(value[end] * scale, decimals) for end in ("min", "max"))
        if low != high:
            spread = f"({low}{_DASH}{high})"
            return f"**{median}** {spread}" if bold else f"{median} {spread}"
        value = value["median"]
    number = _number(value * scale, decimals)
    return f"**{number}**" if bold else number


def _summary(run: Results) -> dict[str, Results]:
    """An ingest run's `summary` (median, min, max over its repetitions) by phase; empty for
    a results file of one repetition without it."""
    return {entry["phase"]: entry for entry in run.get("summary", [])}


def _storage(other: Results, results: Results) -> str:
    """The peer storage cell, with how many repetitions the peer completed when it failed in
    some (those are left out of its medians)."""
    runs, count = other.get("runs"), results.get("repetitions")
    if runs is None or count is None or runs == count:
        return str(other["storage"])
    return f"{other['storage']} ({runs} of {count} runs)"


def _items(run: Results) -> str:
    """The items cell: how many, and over how many server processes when more than one."""
    servers = run.get("servers", 1)
    return _number(run["items"], 0) + (f" on {servers} servers" if servers > 1 else "")


def _repeated(results: Results) -> str:
    """The conditions' words for repetitions (none for a results file without them)."""
    count = results.get("repetitions")
    if count is None:
        return ""
    if count == 1:
        return "1 repetition"
    return f"{count} repetitions, who goes first rotated, medians (min{_DASH}max)"


def render_durability(results: Results) -> str:
    """The Markdown of `bench.durability`'s table, for one results file (ends with a newline)."""
    conditions = (
        f"{_number(results['seconds_per_scenario'], None)} s of faults per scenario at "
        f"{_number(results['rate_hz'], None)} ticks/s of the simulated source, "
        f"{results['events_per_tick']} events per tick"
    )
    parts = [
        _measured_on(results, "bench.durability", conditions),
        _durability_table(results["scenarios"]),
    ]
    return "\n\n".join(parts) + "\n"


def render_wire_formats(results: Results) -> str:
    """The Markdown of `bench.wire_formats`' table, for one results file (ends with a newline)."""
    conditions = (
        f"telemetry events, `batch_max_events = {results['batch_max_events']}`, "
        f"`max_inflight = {results['max_inflight']}`"
    )
    rows = [
        [
            f"`{row['format']}`",
            _number(row["events"], 0),
            _number(row["events_per_message"], 0),
            _number(row["bytes_per_event"], 0),
            _number(row["encode_us_per_event"], 1),
            _number(row["acked_per_s"], 0),
            _number(row["decoded_per_s"], 0),
            _number(row["sdk_read_us_per_event"], 1),
        ]
        for row in results["formats"]
    ]
    table = _table(
        [
            "format",
            "events",
            "events/message",
            "bytes/event",
            "encode µs/event",
            "PUBACK-acked events/s",
            "decoded at the hub events/s",
            "SDK read µs/event",
        ],
        "-|-:|-:|-:|-:|-:|-:|-:",
        rows,
    )
    return "\n\n".join([_measured_on(results, "bench.wire_formats", conditions), table]) + "\n"


@dataclass(frozen=True)
class Section:
    """One generated part of docs/performance.md: the benchmark whose results it shows, its
    committed reference results, its marker lines and how it is rendered."""

    benchmark: str
    reference: Path
    render: Callable[[Results], str]
    begin: str
    end: str

    def generated(self, text: str) -> str:
        """What stands between this section's markers in `text` (a docs page), without the
        marker lines."""
        begin, end = self._marker_lines(text)
        lines = text.splitlines(keepends=True)
        return "".join(lines[begin + 1 : end])

    def replaced(self, text: str, rendered: str) -> str:
        """`text` with the part between this section's markers replaced by `rendered`."""
        begin, end = self._marker_lines(text)
        lines = text.splitlines(keepends=True)
        return "".join([*lines[: begin + 1], rendered, *lines[end:]])

    def _marker_lines(self, text: str) -> tuple[int, int]:
        lines = text.splitlines()
        if lines.count(self.begin) != 1 or lines.count(self.end) != 1:
            raise ValueError(f"expected one {self.begin!r} line and one {self.end!r} line")
        begin, end = lines.index(self.begin), lines.index(self.end)
        if end < begin:
            raise ValueError(f"{self.end!r} comes before {self.begin!r}")
        return begin, end


_DO_NOT_EDIT = "(python -m bench.report --write; do not edit by hand)"
RUN = Section(
    "bench.run",
    REPO / "bench" / "results.reference.json",
    render_run,
    f"<!-- bench.report: BEGIN {_DO_NOT_EDIT} -->",
    "<!-- bench.report: END -->",
)
DURABILITY = Section(
    "bench.durability",
    REPO / "bench" / "results.durability.reference.json",
    render_durability,
    f"<!-- bench.report durability: BEGIN {_DO_NOT_EDIT} -->",
    "<!-- bench.report durability: END -->",
)
WIRE_FORMATS = Section(
    "bench.wire_formats",
    REPO / "bench" / "results.wire_formats.reference.json",
    render_wire_formats,
    f"<!-- bench.report wire formats: BEGIN {_DO_NOT_EDIT} -->",
    "<!-- bench.report wire formats: END -->",
)
SIDE_BY_SIDE = Section(
    "bench.run, side by side",
    REPO / "bench" / "results.peer.reference.json",
    render_side_by_side,
    f"<!-- bench.report side by side: BEGIN {_DO_NOT_EDIT} -->",
    "<!-- bench.report side by side: END -->",
)
SECTIONS = (RUN, DURABILITY, WIRE_FORMATS, SIDE_BY_SIDE)


def section_of(results: Results) -> Section:
    """The section a results file fills, by its `benchmark` field (`bench.run`'s files have
    none)."""
    benchmark = results.get("benchmark", RUN.benchmark)
    for section in SECTIONS:
        if section.benchmark == benchmark:
            return section
    raise ValueError(f"no docs section shows the results of {benchmark!r}")


def _measured_on(results: Results, benchmark: str, conditions: str = "") -> str:
    machine = results["machine"]
    load = ", ".join(f"{value:g}" for value in machine["load_average_at_start"])
    text = (
        f"Measured: `{benchmark}` {results['mode']} run of {results['started_at']}, "
        f"{machine['cpus']} CPUs, Python {machine['python']}, load average at start {load}, "
        f'`[buffer] synchronous = "{results["buffer_synchronous"]}"`, '
        + (f"{conditions}, " if conditions else "")
        + f"{_number(results['seconds'], 0)} s in all."
    )
    if results.get("note"):
        text += f"\n\n{results['note']}"
    return text


def _ingest_table(runs: Sequence[Results]) -> str:
    rows = []
    for run in runs:
        summary = _summary(run)
        for agent, bare in zip(run["agent"], run["bare_client"], strict=True):
            entry = summary.get(agent["phase"], {})
            mine = {**agent, **entry.get("agent", {})}
            theirs = {**bare, **entry.get("bare_client", {})}
            ratio = entry.get(
                "agent_per_bare", agent["agent_cpu_us_per_event"] / bare["cpu_us_per_notification"]
            )
            cpu = mine["cpu_us_per_event"] if entry else agent["agent_cpu_us_per_event"]
            rows.append(
                [
                    _items(run),
                    agent["phase"],
                    _number(agent["offered_per_s"], 0),
                    _figure(mine["delivered_per_s"], 0),
                    _number(agent["missing"], 0),
                    _figure(cpu, 0),
                    _figure(theirs["cpu_us_per_notification"], 1),
                    _figure(ratio, 1),
                    f"{_figure(mine['latency_p50_ms'], 0)} ms",
                    f"{_figure(mine['latency_p99_ms'], 0)} ms",
                ]
            )
    return _table(
        [
            "items",
            "phase",
            "offered/s",
            "delivered/s",
            "lost",
            "agent µs/event",
            "bare µs/notif.",
            "\u00d7 bare",
            "p50",
            "p99",
        ],
        "-:|-|-:|-:|-:|-:|-:|-:|-:|-:",
        rows,
    )


def _cost_tables(runs: Sequence[Results]) -> list[str]:
    """The agent's costs per event and phase, where the results have them (issue 18); none for
    older results files."""
    rows = [
        [
            _number(run["items"], 0),
            agent["phase"],
            _number(agent["cpu_us_per_event"], 0),
            _number(agent["main_thread_cpu_us_per_event"], 0),
            _number(agent["other_threads_cpu_us_per_event"], 0),
            _number(agent["write_bytes_per_event"], 0),
            f"{_number(agent['cpu_share'] * 100, 0)} %",
        ]
        for run in runs
        for agent in run["agent"]
        if "write_bytes_per_event" in agent
    ]
    if not rows:
        return []
    return [
        _table(
            [
                "items",
                "phase",
                "agent µs/event",
                "main thread (event loop)",
                "other threads (SQLite, paho)",
                "disk bytes written/event",
                "CPU of a core",
            ],
            "-:|-|-:|-:|-:|-:|-:",
            rows,
        )
    ]


def _startup_table(runs: Sequence[Results]) -> str:
    rows = [
        [
            _number(run["items"], 0),
            f"{_number(run['start_to_first_event_s'], 2)} s",
            f"{_number(run['start_to_all_items_s'], 2)} s",
            f"{_number(run['agent_peak_rss_mib'], 0)} MiB",
            f"{_number(run['bare_client_peak_rss_mib'], 0)} MiB",
        ]
        for run in runs
    ]
    return _table(
        [
            "items",
            "start to first forwarded event",
            "to every item's first value",
            "agent peak RSS",
            "bare client peak RSS",
        ],
        "-:|-:|-:|-:|-:",
        rows,
    )


def _backlog_table(backlog: Results) -> str:
    filled, held, drained = backlog["fill"], backlog["footprint"], backlog["drain"]
    rows = [
        [
            "fill (broker down)",
            f"{_number(filled['events'], 0)} events accepted at "
            f"{_number(filled['accepted_per_s'], 0)}/s; {_number(filled['bytes_per_event'], 0)} "
            f"bytes/event on disk ({_number(filled['buffer_bytes'] / 2**20, 0)} MiB)",
            f"{_number(filled['peak_rss_mib'], 0)} MiB",
        ],
        [
            "held (no hub)",
            f"{_number(held['items'], 0)} OPC UA items running, {_number(held['buffered'], 0)} "
            "events buffered",
            f"{_number(held['peak_rss_mib'], 0)} MiB "
            f"({_number(held['peak_rss_mib'] * MIB_IN_MB, 0)} MB)",
        ],
        [
            "drain (broker up)",
            f"{_number(drained['backlog_events'], 0)} events in {_number(drained['drain_s'], 1)} s"
            f" = {_number(drained['drained_per_s'], 0)}/s PUBACK-acked; live events beside it: "
            f"p50 {_number(drained['live_p50_s'], 2)} s, p99 {_number(drained['live_p99_s'], 2)} s",
            f"{_number(drained['peak_rss_mib'], 0)} MiB",
        ],
    ]
    return _table(["backlog", "measured", "agent peak RSS"], "-|-|-:", rows)


def _large_file_table(large: Results) -> str:
    rows = [
        [
            _number(large["rows"], 0),
            f"{_number(large['file_bytes'] / 2**20, 0)} MiB",
            f"{_number(large['seconds'], 1)} s",
            _number(large["rows_per_s"], 0),
            _number(large["accepted"], 0),
            f"{_number(large['peak_rss_mib'], 0)} MiB",
        ]
    ]
    return _table(
        ["MES CSV rows", "file", "committed in", "rows/s", "accepted", "agent peak RSS"],
        "-:|-:|-:|-:|-:|-:",
        rows,
    )


def _targets_table(targets: Sequence[Results], *, quick: bool) -> str:
    rows = []
    for row in targets:
        sign = "≥" if row["at_least"] else "≤"
        value = row["value"]
        whole = math.isfinite(value) and (abs(value) >= 100 or value == int(value))
        measured = _number(value, 0 if whole else 2)
        if "range" in row:
            low, high = (_number(end, 0 if whole else 2) for end in row["range"])
            measured += f" ({low}{_DASH}{high})"
        rows.append(
            [
                row["target"],
                f"{measured} {row['unit']}",
                f"{sign} {_number(row['limit'], None)} {row['unit']}",
                "met" if row["pass"] else "not met",
            ]
        )
    issues = "8, 13 and 18" if any("(issue 18)" in row["target"] for row in targets) else "8 and 13"
    title = f"target (issues {issues})"
    if quick:
        title += ", quick run: small counts, not the targets' conditions"
    return _table([title, "measured", "limit", ""], "-|-:|-:|-", rows)


def _durability_table(scenarios: Sequence[Results]) -> str:
    rows = []
    for row in scenarios:
        if "skipped" in row:
            rows.append([row["scenario"], f"skipped: {row['skipped']}", *["\u2013"] * 5])
            continue
        name = row["scenario"]
        if row["webhook_posts"]:
            name += (
                " (webhook posts meanwhile: "
                + ", ".join(
                    f"{'no answer' if status == '0' else status} x{count}"
                    for status, count in row["webhook_posts"].items()
                )
                + ")"
            )
        lost = _number(row["lost"], 0)
        if row["evicted_reported"]:
            lost += f" (+{_number(row['evicted_reported'], 0)} evicted, reported)"
        rows.append(
            [
                name,
                _number(row["produced"], 0),
                _number(row["accepted"], 0),
                _number(row["delivered"], 0),
                lost,
                _number(row["duplicated"], 0),
                f"{_number(row['max_delay_s'], 2)} s",
            ]
        )
    return _table(
        [
            "scenario",
            "produced",
            "accepted",
            "delivered",
            "lost",
            "duplicated",
            "max delivery delay",
        ],
        "-|-:|-:|-:|-:|-:|-:",
        rows,
    )


def _table(header: Sequence[str], alignment: str, rows: Iterable[Sequence[str]]) -> str:
    lines = [_row(header), f"|{alignment.replace('-', '---')}|"]
    lines.extend(_row(row) for row in rows)
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _number(value: float, decimals: int | None) -> str:
    """`1,234` with thousands separators; `decimals=None`: as few digits as the value needs."""
    if isinstance(value, float) and math.isnan(value):
        return "\u2013"  # an en dash
    if decimals is None:
        return f"{value:,g}"
    return f"{value:,.{decimals}f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "results",
        nargs="?",
        type=Path,
        help="a bench.run or bench.durability results file (default: every reference file)",
    )
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"put the tables into {PERFORMANCE_DOC.relative_to(REPO)}",
    )
    args = parser.parse_args(argv)
    files = [args.results] if args.results else [section.reference for section in SECTIONS]
    text = PERFORMANCE_DOC.read_text()
    printed = []
    for path in files:
        results = json.loads(path.read_text())
        section = section_of(results)
        rendered = section.render(results)
        if args.write:
            text = section.replaced(text, rendered)
        printed.append(rendered)
    if args.write:
        PERFORMANCE_DOC.write_text(text)
    else:
        print("\n".join(printed), end="")


if __name__ == "__main__":
    main()
