"""`GET /`: the status page, server-rendered HTML with inline SVG plots, no JavaScript.

What it shows, all from the running agent (`agent.link.status`'s own readings of it, and
`agent.web.history`): the hub link (connected, format, last PUBACK, rate, in flight, paused
lanes), the buffer per class (pending, oldest pending age, evictions), dead letters and
rejected records, buffer depth and delivery rate over the ring's span as two plots, every
source with its signals' last value, quality and time, and the recent state changes. It
reloads itself (`<meta http-equiv=refresh>`, `[web] refresh_s`).

Every string that comes from the config, a source or the network (names, values, errors,
topics) goes through `_e` (HTML escaping, quotes included); nothing is trusted as markup.
Each plot is an `<svg id=...>` whose series are `<polyline class='series' data-series=NAME
data-values='v1 v2 ...'>`: the values drawn are in the DOM, for a reader and for tests.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.web.history import CLASSES, LastValue, LastValues, Sample, StateChange

if TYPE_CHECKING:
    from agent.view import AgentView

__all__ = ["render_page", "svg_plot"]

_COLORS = {"total": "#111827", "telemetry": "#2563eb", "business": "#d97706",
           "critical": "#dc2626", "delivered": "#059669"}
_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#111827;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;background:#fff;margin-bottom:8px}
td,th{border:1px solid #d1d5db;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6}.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#047857;font-weight:600}.bad{color:#b91c1c;font-weight:600}
.warn{color:#b45309;font-weight:600}.muted{color:#6b7280}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots svg{background:#fff;border:1px solid #d1d5db}
.grid{display:flex;flex-wrap:wrap;gap:24px}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _ts(epoch: float | None) -> str:
    if epoch is None:
        return "—"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso_ts(moment: str | None) -> str:
    """An ISO time of the status document, as `_ts` shows times."""
    if not moment:
        return "—"
    try:
        return _ts(datetime.fromisoformat(moment).timestamp())
    except ValueError:
        return moment


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _badge(good: bool, yes: str, no: str) -> str:
    return f"<span class='ok'>{_e(yes)}</span>" if good else f"<span class='bad'>{_e(no)}</span>"


def render_page(
    agent: AgentView, *, buffer: dict[str, Any], sources: dict[str, dict[str, Any]],
    samples: Sequence[Sample], interval_s: float, span_s: float,
    values: LastValues, changes: Sequence[StateChange], refresh_s: float,
    now: float | None = None,
) -> str:
    """The whole page; `buffer` and `sources` are `agent.link.status.buffer_status` and
    `sources_status` of the agent, read for this request."""
    now = time.time() if now is None else now
    config = agent.config
    title = f"{config.agent.site}/{config.agent.id}"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='refresh' content='{refresh_s:g}'>",
        f"<title>{_e(title)} · edge agent</title><style>{_CSS}</style></head><body>",
        f"<h1>Edge agent {_e(title)}</h1>",
        f"<p class='muted'>version {_e(__version__)} · up {_e(_age(now - agent.started_at))}"
        f" · page of {_e(_ts(now))} · reloads every {refresh_s:g} s</p>",
        "<div class='grid'>", _hub(agent), _buffer(agent, buffer), "</div>",
        _plots(samples, interval_s, span_s, now),
        _sources(agent, sources, values),
        _changes(changes),
        "</body></html>",
    ]
    return "".join(parts)


def _hub(agent: AgentView) -> str:
    forwarder, session = agent.forwarder, agent.session
    counters = forwarder.counters
    lanes = forwarder.paused_lanes()
    rows = [
        ("link", _badge(session.connected, "connected", "disconnected")),
        ("hub", _e(agent.config.hub.url)),
        ("format", _e(forwarder.wire_format.name)),
        ("last PUBACK", _e(_ts(counters.last_puback_at))),
        ("events/s (last minute)", _e(f"{agent.status.rate.per_second():g}")),
        ("in flight", _e(forwarder.inflight)),
        ("events delivered", _e(counters.events_forwarded_total)),
        ("connections", _e(session.connection_epoch)),
        ("backpressure", _badge(not agent.pipeline.counters.backpressure, "no",
                                "yes: sources paused")),
    ]
    html_rows = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    lane_rows = "".join(
        f"<tr><td>{_e(lane.get('topic'))}</td><td>{_e(lane.get('reason_code'))} "
        f"{_e(lane.get('reason'))}</td><td>{_e(lane.get('since'))}</td></tr>"
        for lane in lanes
    )
    lanes_html = (
        "<table id='paused-lanes'><tr><th>paused topic</th><th>refused with</th>"
        f"<th>since</th></tr>{lane_rows}</table>" if lanes else ""
    )
    return f"<div><h2>Hub link</h2><table id='hub'>{html_rows}</table>{lanes_html}</div>"


def _buffer(agent: AgentView, buffer: dict[str, Any]) -> str:
    classes: dict[str, dict[str, Any]] = buffer.get("classes", {})
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td class='num'>{_e(entry.get('pending', 0))}</td>"
        f"<td class='num'>{_e(_age(entry.get('oldest_pending_age_s')))}</td>"
        f"<td class='num'>{_e(entry.get('evictions', 0))}</td></tr>"
        for name, entry in classes.items()
    )
    counters = agent.pipeline.counters
    dead = int(buffer.get("dead_letters") or 0)
    rejected = counters.records_rejected_total
    return (
        "<div><h2>Buffer</h2><table id='buffer'><tr><th>class</th><th>pending</th>"
        f"<th>oldest pending</th><th>evicted</th></tr>{rows}"
        f"<tr><th>all</th><td class='num'>{_e(buffer.get('pending', 0))}</td>"
        f"<td class='num'>{_e(_age(buffer.get('oldest_pending_age_s')))}</td><td></td></tr>"
        "</table></div>"
        "<div><h2>Not delivered</h2><table id='problems'>"
        f"<tr><th>dead letters</th><td class='num {'bad' if dead else ''}' id='dead-letters'>"
        f"{_e(dead)}</td></tr>"
        f"<tr><th>records rejected (since start)</th><td class='num {'warn' if rejected else ''}'"
        f" id='records-rejected'>{_e(rejected)}</td></tr>"
        f"<tr><th>readings unmappable (since start)</th><td class='num'>"
        f"{_e(counters.readings_unmappable_total)}</td></tr>"
        f"<tr><th>events dead-lettered (since start)</th><td class='num'>"
        f"{_e(agent.forwarder.counters.events_dead_lettered_total)}</td></tr>"
        "</table><p class='muted'>Inspect them with <code>edge-agent buffer "
        "dead-letters</code>.</p></div>"
    )


def _plots(samples: Sequence[Sample], interval_s: float, span_s: float, now: float) -> str:
    start = max(now - span_s, samples[0].at if samples else now - span_s)
    backlog = [("total", [(s.at, float(s.pending_total)) for s in samples])]
    backlog += [(name, [(s.at, float(s.pending.get(name, 0))) for s in samples])
                for name in CLASSES]
    delivered = [("delivered", [(s.at, s.delivered / interval_s) for s in samples])]
    covered = _age(now - start)
    return (
        f"<h2>Last {_e(covered)} (up to {_e(_age(span_s))}, one sample every "
        f"{interval_s:g} s)</h2><div class='plots'>"
        + svg_plot("backlog", "Buffer depth (pending events)", start, now, backlog)
        + svg_plot("delivered", "Delivery rate (events/s)", start, now, delivered)
        + "</div>"
    )


def svg_plot(
    plot_id: str, title: str, start: float, end: float,
    series: list[tuple[str, list[tuple[float, float]]]], *, width: int = 660, height: int = 240,
) -> str:
    """A time plot as inline SVG, one polyline per series (see the module docstring)."""
    left, right, top, bottom = 60, 12, 28, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    span = max(end - start, 1.0)
    top_value = max([1.0, *(v for _, points in series for _, v in points)])

    def x(at: float) -> float:
        return left + plot_w * min(max((at - start) / span, 0.0), 1.0)

    def y(value: float) -> float:
        return top + plot_h * (1 - value / top_value)

    parts = [
        f"<svg id='{_e(plot_id)}' xmlns='http://www.w3.org/2000/svg' width='{width}' "
        f"height='{height}' viewBox='0 0 {width} {height}' role='img' "
        f"aria-label='{_e(title)}'>",
        f"<text x='{left}' y='17' font-size='13' font-weight='600'>{_e(title)}</text>",
        f"<line x1='{left}' y1='{top + plot_h}' x2='{left + plot_w}' y2='{top + plot_h}' "
        "stroke='#9ca3af'/>",
        f"<line x1='{left}' y1='{top}' x2='{left}' y2='{top + plot_h}' stroke='#9ca3af'/>",
        f"<text x='{left - 6}' y='{top + 4}' font-size='11' text-anchor='end'>"
        f"{_e(f'{top_value:g}')}</text>",
        f"<text x='{left - 6}' y='{top + plot_h}' font-size='11' text-anchor='end'>0</text>",
    ]
    for fraction, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        moment = datetime.fromtimestamp(start + span * fraction, UTC)
        label = moment.strftime("%H:%M:%S UTC" if span < 900 else "%H:%M UTC")
        parts.append(f"<text x='{left + plot_w * fraction:.1f}' y='{height - 8}' "
                     f"font-size='11' text-anchor='{anchor}'>{_e(label)}</text>")
    for index, (name, points) in enumerate(series):
        color = _COLORS.get(name, "#6b7280")
        coords = " ".join(f"{x(at):.1f},{y(v):.1f}" for at, v in points)
        values = " ".join(f"{v:g}" for _, v in points)
        parts.append(
            f"<polyline class='series' data-series='{_e(name)}' data-points='{len(points)}' "
            f"data-values='{values}' fill='none' stroke='{color}' "
            f"stroke-width='{2.5 if index == 0 else 1.5}' points='{coords}'/>"
        )
        parts.append(f"<text x='{left + plot_w - 70 * index}' y='17' font-size='12' "
                     f"text-anchor='end' fill='{color}'>{_e(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _sources(
    agent: AgentView, sources: dict[str, dict[str, Any]], values: LastValues
) -> str:
    configured = {source.name: source for source in agent.config.sources}
    parts = ["<h2>Sources</h2>"]
    for name, status in sources.items():
        healthy = status.get("state") == "running" and bool(status.get("connected"))
        error = status.get("last_error")
        link = "connected" if status.get("connected") else "not connected"
        shown = f"{status.get('state')}, {link}"
        parts.append(
            f"<h3 id='source-{_e(name)}'>{_e(name)} "
            f"{_badge(healthy, 'running, connected', shown)}"
            f" <span class='muted'>· {_e(status.get('readings_total', 0))} readings · last "
            f"value {_e(_iso_ts(status.get('last_value_at')))}</span></h3>"
        )
        if error:
            parts.append(f"<p class='bad'>last error: {_e(error)}</p>")
        seen = values.by_source.get(name, {})
        rows: list[str] = []
        source = configured.get(name)
        listed: set[str] = set()
        signal_errors: dict[str, str] = status.get("signal_errors", {})
        for signal in (source.signals if source is not None else []):
            listed.add(signal.node)
            label = signal.name or signal.node
            rows.append(_signal_row(label, signal.node, seen.get(signal.node),
                                    signal_errors.get(signal.node)))
        for address in sorted(seen.keys() - listed):
            rows.append(_signal_row(address, address, seen[address], None))
        if rows:
            parts.append(
                f"<table class='signals' data-source='{_e(name)}'><tr><th>signal</th>"
                "<th>address</th><th>last value</th><th>quality</th><th>time</th></tr>"
                + "".join(rows) + "</table>"
            )
        more = values.not_kept.get(name, 0)
        if more:
            parts.append(f"<p class='muted'>{_e(more)} readings of further signals not "
                         "listed (the page keeps a bounded number per source).</p>")
    return "".join(parts)


def _signal_row(label: str, address: str, last: LastValue | None, error: str | None) -> str:
    if last is None:
        value, quality, at = "—", _e(error) if error else "no value yet", "—"
        cls = "bad" if error else "muted"
    else:
        value = _e(last.value)
        quality = _e(last.quality + (f" ({last.status})" if last.status else ""))
        at = _e(_ts(last.at))
        cls = {"good": "ok", "uncertain": "warn"}.get(last.quality, "bad")
    return (f"<tr data-signal='{_e(address)}'><td>{_e(label)}</td><td class='muted'>"
            f"{_e(address)}</td><td class='num value'>{value}</td>"
            f"<td class='{cls} quality'>{quality}</td><td>{at}</td></tr>")


def _changes(changes: Sequence[StateChange]) -> str:
    rows = "".join(
        f"<tr><td>{_e(_ts(change.at))}</td><td>{_e(change.subject)}</td>"
        f"<td>{_e(change.change)}</td></tr>"
        for change in reversed(changes)
    )
    return ("<h2>Recent state changes</h2><table id='changes'><tr><th>when</th><th>what</th>"
            f"<th>change</th></tr>{rows}</table>")
