"""The hub's web server (aiohttp): the dashboard, `/api/fleet` and `/metrics`.

::

    GET /                       the fleet: one row per agent, flagged rows first (stale,
                                behind, gapped, offline: `hub.health`), reloading itself
    GET /agents/{site}/{agent}  one agent: backlog per class over time and events landed per
                                minute (inline SVG drawn here), gaps, losses, replays, rejects
    GET /api/fleet              the fleet's rows as JSON (`edge-agent fleet --from-hub URL`)
    GET /metrics                Prometheus text (or OpenMetrics, by the Accept header)

Every request reads `hub.health` afresh (one snapshot per page or scrape, nothing cached), so
every hub process serves the same figures: they come from the database, not from the process.
Metric names follow the Prometheus conventions (base units, `_total` counters); their labels
are bounded: site, agent, class (3), reason (`seq_lost` reasons), outcome (a handful), flag
(4); never an event, a seq or a time.

Server-rendered HTML, no JS: the pages reload themselves with `<meta http-equiv=refresh>`.
Every string from the network or the database (site and agent names, sources, types, reasons)
is escaped (`_e`) or URL-quoted. Loopback by default; with `username` and `password_file` every
path asks for HTTP basic auth. A database failure is a 503 page saying so, not a stack trace.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no types
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from hub.config import DashboardSection
from hub.health import (
    FLAGS,
    AgentDetail,
    AgentHealth,
    FleetHealth,
    Thresholds,
    age_text,
    fleet_json,
    read_agent,
    read_fleet,
)
from hub.status import CLASSES

__all__ = ["HealthCollector", "render_agent", "render_fleet", "serve_dashboard", "svg_chart"]

_log = logging.getLogger(__name__)
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
_COLORS = {"telemetry": "#2563eb", "business": "#d97706", "critical": "#dc2626"}
Clock = Callable[[], datetime]


# -- the server --------------------------------------------------------------------------------


@asynccontextmanager
async def serve_dashboard(
    pool: asyncpg.Pool, section: DashboardSection, topic_prefix: str, *,
    password: str | None = None, clock: Clock | None = None,
) -> AsyncIterator[str]:
    """Listen on the section's host and port; yields the base URL (the real port when 0)."""
    app = make_app(pool, section, topic_prefix, password=password, clock=clock)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, section.host, section.port)
        await site.start()
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in str(host) else host
        yield f"http://{shown}:{port}/"
    finally:
        await runner.cleanup()


def make_app(
    pool: asyncpg.Pool, section: DashboardSection, topic_prefix: str, *,
    password: str | None = None, clock: Clock | None = None,
) -> web.Application:
    now = clock or (lambda: datetime.now(UTC))
    thresholds = Thresholds(
        stale_after_s=section.stale_after_s, behind_s=section.behind_s,
        history_hours=section.history_hours,
    )
    refresh = section.refresh_s

    async def fleet_page(_request: web.Request) -> web.Response:
        fleet = await read_fleet(pool, now(), thresholds, topic_prefix)
        return _html(render_fleet(fleet, refresh))

    async def agent_page(request: web.Request) -> web.Response:
        site, agent = request.match_info["site"], request.match_info["agent"]
        detail = await read_agent(pool, site, agent, now(), thresholds, topic_prefix)
        if detail is None:
            return _html(_page("unknown agent", f"<p>The hub knows no agent {_e(site)}/"
                               f"{_e(agent)}.</p><p><a href='/'>fleet</a></p>", refresh), 404)
        return _html(render_agent(detail, refresh))

    async def api_fleet(_request: web.Request) -> web.Response:
        fleet = await read_fleet(pool, now(), thresholds, topic_prefix)
        body = {
            "now": fleet.now.isoformat(), "stale_after_s": thresholds.stale_after_s,
            "behind_s": thresholds.behind_s, "agents": fleet_json(fleet),
            "rejected_messages_total": fleet.rejected_messages_total,
        }
        return web.json_response(body, dumps=lambda v: json.dumps(v, default=str))

    async def metrics(request: web.Request) -> web.Response:
        fleet = await read_fleet(pool, now(), thresholds, topic_prefix)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(HealthCollector(fleet))
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(body=encoder(registry))
        response.headers["Content-Type"] = content_type
        return response

    app = web.Application(middlewares=[_errors, *_auth(section.username, password)])
    app.router.add_get("/", fleet_page)
    app.router.add_get("/agents/{site}/{agent}", agent_page)
    app.router.add_get("/api/fleet", api_fleet)
    app.router.add_get("/metrics", metrics)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _DB_ERRORS as error:
        _log.warning("dashboard %s: database unavailable: %s", request.path, error)
        return _html(_page("database unavailable", f"<p>The hub's database did not answer: "
                           f"{_e(error)}. This page reloads itself.</p>", 10), 503)


def _auth(username: str | None, password: str | None) -> list[Any]:
    if username is None or password is None:
        return []
    expected = f"{username}:{password}".encode()

    @web.middleware
    async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        given = b""
        if header.startswith("Basic "):
            try:
                given = base64.b64decode(header[6:].strip(), validate=True)
            except (binascii.Error, ValueError):
                given = b""
        if not hmac.compare_digest(given, expected):
            return web.Response(status=401, text="authentication required\n",
                                headers={"WWW-Authenticate": 'Basic realm="hub"'})
        return await handler(request)

    return [basic_auth]


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


# -- /metrics ----------------------------------------------------------------------------------


class HealthCollector(Collector):
    """One `hub.health` snapshot as metric families (a registry is made per scrape)."""

    def __init__(self, fleet: FleetHealth) -> None:
        self._fleet = fleet

    def collect(self) -> Iterable[Metric]:
        agents = self._fleet.agents
        ids = ["site", "agent"]

        def gauge(name: str, doc: str, extra: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=ids + (extra or []))

        def counter(name: str, doc: str, extra: list[str] | None = None) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=ids + (extra or []))

        landed = counter("hub_events_landed", "Events landed in the database (seqs held).")
        duplicates = counter("hub_events_duplicate", "Events received again (no-ops).")
        last_age = gauge("hub_agent_last_event_age_seconds", "Since the last event landed.")
        last_ts = gauge("hub_agent_last_event_timestamp_seconds",
                        "Receive time of the last event landed (Unix time).")
        business_ts = gauge("hub_agent_last_event_time_seconds",
                            "Business time (`time`) of the newest event landed (Unix time).")
        per_min = gauge("hub_agent_events_landed_per_minute",
                        "Events landed per minute over the last few minutes.")
        max_seq = gauge("hub_agent_max_seq", "Highest seq landed.")
        backlog = gauge("hub_agent_backlog_events", "Pending at the agent (status).", ["class"])
        oldest = gauge("hub_agent_oldest_pending_age_seconds",
                       "Age of the oldest pending event at the agent (status).", ["class"])
        dead = gauge("hub_agent_dead_letters", "Dead letters in the agent's buffer (status).")
        gaps = gauge("hub_agent_open_gaps", "Open gaps (seq ranges missing).")
        missing = gauge("hub_agent_missing_seqs", "Seqs inside open gaps.")
        gap_age = gauge("hub_agent_oldest_gap_age_seconds", "Age of the oldest open gap.")
        lost = counter("hub_seq_lost", "Seqs declared lost, per reason.", ["reason"])
        replays = counter("hub_replay_requests", "Replay requests, per outcome.", ["outcome"])
        rejected_records = counter("hub_rejected_records",
                                   "Business records the agent reported rejected.")
        agent_rejected = counter("hub_agent_rejected_messages",
                                 "Messages on the agent's topics no event could be read from.")
        up = gauge("hub_agent_up", "1: the agent's status is online and current.")
        flagged = gauge("hub_agent_flag", "1: the agent has the flag.", ["flag"])
        status_age = gauge("hub_agent_status_age_seconds", "Since the agent's last status.")
        for a in agents:
            key = [a.site, a.agent]
            landed.add_metric(key, a.landed_total)
            duplicates.add_metric(key, a.duplicates_total)
            max_seq.add_metric(key, a.max_seq)
            per_min.add_metric(key, a.landed_per_min)
            if a.last_received_at is not None:
                last_age.add_metric(key, a.last_event_age_s or 0.0)
                last_ts.add_metric(key, a.last_received_at.timestamp())
            if a.last_event_time is not None:
                business_ts.add_metric(key, a.last_event_time.timestamp())
            for name in CLASSES:
                if a.backlog.get(name) is not None:
                    backlog.add_metric([*key, name], float(a.backlog[name] or 0))
                if a.oldest_pending_s.get(name) is not None:
                    oldest.add_metric([*key, name], float(a.oldest_pending_s[name] or 0.0))
            if a.dead_letters is not None:
                dead.add_metric(key, a.dead_letters)
            gaps.add_metric(key, a.open_gaps)
            missing.add_metric(key, a.missing_seqs)
            if a.oldest_gap_age_s is not None:
                gap_age.add_metric(key, a.oldest_gap_age_s)
            for reason, count in sorted(a.lost.items()):
                lost.add_metric([*key, reason], count)
            for outcome, count in sorted(a.replays.items()):
                replays.add_metric([*key, outcome], count)
            rejected_records.add_metric(key, a.rejected_records)
            agent_rejected.add_metric(key, a.rejected_messages)
            up.add_metric(key, 0.0 if "offline" in a.flags else 1.0)
            for flag in FLAGS:
                flagged.add_metric([*key, flag], 1.0 if flag in a.flags else 0.0)
            if a.status_received_at is not None:
                status_age.add_metric(key, a.age_s(a.status_received_at) or 0.0)
        yield from (landed, duplicates, last_age, last_ts, business_ts, per_min, max_seq,
                    backlog, oldest, dead, gaps, missing, gap_age, lost, replays,
                    rejected_records, agent_rejected, up, flagged, status_age)
        yield GaugeMetricFamily("hub_agents", "Agents the hub knows.", value=len(agents))
        yield CounterMetricFamily("hub_rejected_messages", "Messages no event could be read "
                                  "from, on any topic.",
                                  value=self._fleet.rejected_messages_total)


# -- pages (pure) ------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _agent_href(site: str, agent: str) -> str:
    return f"/agents/{quote(site, safe='')}/{quote(agent, safe='')}"


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.2em 2em;color:#111;background:#fafafa}
h1{font-size:20px;margin:0 0 .2em}h2{font-size:16px;margin:1.4em 0 .4em}
.meta{color:#555;margin-bottom:1em}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002}
th,td{padding:4px 8px;border-bottom:1px solid #e5e5e5;text-align:left;white-space:nowrap;
vertical-align:top}th{background:#f0f0f0;font-weight:600;white-space:normal;font-size:13px}
small{color:#555}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.flagged td{background:#fff1f1}tr.flagged td:first-child{border-left:4px solid #dc2626}
tr.ok td:first-child{border-left:4px solid #16a34a}
.flag{display:inline-block;padding:0 6px;margin-right:3px;border-radius:8px;color:#fff;
font-size:12px;font-weight:600}
.flag-stale{background:#7c3aed}.flag-behind{background:#d97706}.flag-gapped{background:#dc2626}
.flag-offline{background:#374151}.ok-badge{color:#16a34a;font-weight:600}
svg{background:#fff;box-shadow:0 1px 2px #0002}a{color:#1d4ed8}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px}dt{color:#555}dd{margin:0}
"""


def _page(title: str, body: str, refresh_s: float) -> str:
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='{int(refresh_s)}'>"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _flags_html(flags: tuple[str, ...]) -> str:
    if not flags:
        return "<span class='ok-badge'>ok</span>"
    return "".join(f"<span class='flag flag-{_e(f)}'>{_e(f)}</span>" for f in flags)


def _ago(agent: AgentHealth, moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return f"<span title='{_e(moment.isoformat())}'>{_e(age_text(agent.age_s(moment)))} ago</span>"


def _per_class(values: dict[str, Any], fmt: Callable[[Any], str]) -> str:
    return " / ".join(_e(fmt(values.get(name))) for name in CLASSES)


def _counts(values: dict[str, int]) -> str:
    return ", ".join(f"{_e(k)}: {v}" for k, v in sorted(values.items())) or "-"


def _fleet_row(a: AgentHealth) -> str:
    state = a.state + (f" ({a.status_reason})" if a.status_reason else "")
    gaps = "-"
    if a.open_gaps:
        ranges = ", ".join(f"{f}-{t}" for f, t in a.gap_ranges)
        more = " ..." if a.open_gaps > len(a.gap_ranges) else ""
        gaps = (f"{a.open_gaps} ({a.missing_seqs} seqs, {_e(age_text(a.oldest_gap_age_s))}): "
                f"{_e(ranges)}{more}")
    business = (f"<br><small>time {_e(a.last_event_time.strftime('%H:%M:%S'))}</small>"
                if a.last_event_time else "")
    cells = [
        f"<a href='{_e(_agent_href(a.site, a.agent))}'>{_e(a.key)}</a>", _flags_html(a.flags),
        _e(state), _ago(a, a.last_received_at) + business,
        f"<td class='n'>{a.landed_total}", f"<td class='n'>{a.landed_per_min:g}",
        _per_class(a.backlog, lambda v: "-" if v is None else str(v)),
        _per_class(a.oldest_pending_s, age_text), gaps, _counts(a.lost),
        "-" if a.dead_letters is None else str(a.dead_letters),
        f"{a.rejected_messages} / {a.rejected_records}", _counts(a.replays),
        f"<td class='n'>{a.duplicates_total}",
    ]
    tds = "".join(c if c.startswith("<td") else f"<td>{c}" for c in cells)
    return (f"<tr class='{'flagged' if a.flags else 'ok'}' data-agent='{_e(a.key)}' "
            f"data-flags='{_e(' '.join(a.flags))}'>{tds}</tr>")


def render_fleet(fleet: FleetHealth, refresh_s: float) -> str:
    flagged = sum(1 for a in fleet.agents if a.flags)
    head = "".join(f"<th>{h}</th>" for h in (
        "site/agent", "flags", "status", "last event", "landed", "per min",
        "backlog<br>tel/bus/crit", "oldest pending<br>tel/bus/crit", "open gaps", "lost seqs",
        "dead<br>letters", "rejected<br>msgs/records", "replays", "dupli&shy;cates",
    ))
    rows = "".join(_fleet_row(a) for a in fleet.agents) or (
        "<tr><td colspan='14'>no agent has sent an event or a status yet</td></tr>"
    )
    t = fleet.thresholds
    body = (
        f"<h1>Synchronization health</h1><div class='meta'>{len(fleet.agents)} agent(s), "
        f"<b>{flagged} flagged</b> &middot; stale after {age_text(t.stale_after_s)}, behind "
        f"after {age_text(t.behind_s)} &middot; {fleet.rejected_messages_total} rejected "
        f"message(s) in all &middot; {_e(fleet.now.strftime('%Y-%m-%d %H:%M:%S UTC'))} "
        f"&middot; <a href='/metrics'>metrics</a> &middot; <a href='/api/fleet'>json</a></div>"
        f"<table id='fleet'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    )
    return _page("hub: fleet", body, refresh_s)


def _table(table_id: str, columns: list[str], rows: Iterable[list[object]], empty: str) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(_cell(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    if not body:
        body = f"<tr><td colspan='{len(columns)}'>{_e(empty)}</td></tr>"
    return f"<table id='{table_id}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def render_agent(detail: AgentDetail, refresh_s: float) -> str:
    a = detail.health
    now = a.now
    series: list[tuple[str, str, list[tuple[datetime, float | int | None]]]] = [
        (name, _COLORS[name], [(s.at, s.pending[name]) for s in detail.backlog])
        for name in CLASSES
    ]
    # The plots start at the first data point (a minute before), within the window: an agent
    # seen for ten minutes gets ten minutes across, not a sliver at the right edge.
    moments = [t for _, _, points in series for t, v in points if v is not None]
    moments += [m for m, _ in detail.delivered]
    start = max(detail.since, min(moments, default=detail.since) - timedelta(minutes=1))
    backlog_svg = svg_chart("backlog", "pending events per class (agent status)",
                            start, now, series)
    delivered_svg = svg_chart(
        "delivered", "events landed per minute", start, now,
        [("landed", "#16a34a", [(m, float(n)) for m, n in detail.delivered])], bars=True,
    )
    summary = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in (
        ("flags", _flags_html(a.flags)),
        ("status", _e(a.state + (f" ({a.status_reason})" if a.status_reason else ""))
         + f" &middot; received {_ago(a, a.status_received_at)}"),
        ("last event", f"received {_ago(a, a.last_received_at)}, business time "
         f"{_e(_cell(a.last_event_time))}"),
        ("landed", f"{a.landed_total} (max seq {a.max_seq}), {a.landed_per_min:g}/min now, "
         f"{a.duplicates_total} duplicates"),
        ("backlog tel/bus/crit", _per_class(a.backlog, lambda v: "-" if v is None else str(v))
         + " &middot; oldest " + _per_class(a.oldest_pending_s, age_text)),
        ("dead letters", _e("-" if a.dead_letters is None else a.dead_letters)),
        ("open gaps", f"{a.open_gaps} ({a.missing_seqs} seqs)"),
        ("lost seqs", _counts(a.lost)), ("replays", _counts(a.replays)),
        ("rejected", f"{a.rejected_messages} message(s), {a.rejected_records} record(s)"),
    ))
    hours = age_text((now - detail.since).total_seconds())
    body = (
        f"<p><a href='/'>&larr; fleet</a></p><h1>{_e(a.key)}</h1>"
        f"<div class='meta'>window {_e(hours)}, plotted from "
        f"{_e(start.strftime('%H:%M:%S UTC'))} &middot; "
        f"{_e(now.strftime('%Y-%m-%d %H:%M:%S UTC'))}</div><dl>{summary}</dl>"
        f"<h2>Backlog over time</h2>{backlog_svg}<h2>Delivery over time</h2>{delivered_svg}"
        "<h2>Last event per source and type</h2>"
        + _table("streams", ["source", "type", "events in window", "last received",
                             "last business time"],
                 ([s.source, s.type, s.events, s.last_received_at, s.last_time]
                  for s in detail.streams), "no event in the window")
        + "<h2>Open gaps</h2>"
        + _table("gaps", ["first seq", "last seq", "opened", "requests", "next request",
                          "state", "last outcome"],
                 ([g["first_seq"], g["last_seq"], g["opened_at"], g["requests"],
                   g["next_request_at"], g["state"], g["last_outcome"]] for g in detail.gaps),
                 "none")
        + "<h2>Declared losses</h2>"
        + _table("losses", ["first seq", "last seq", "reason", "detail", "recorded"],
                 ([r["first_seq"], r["last_seq"], r["reason"], r["detail"], r["recorded_at"]]
                  for r in detail.losses), "none")
        + "<h2>Replay requests</h2>"
        + _table("replays", ["requested", "first seq", "last seq", "outcome", "replayed",
                             "answered"],
                 ([r["requested_at"], r["first_seq"], r["last_seq"], r["outcome"],
                   r["replayed"], r["answered_at"]] for r in detail.replays), "none")
        + "<h2>Rejected business records</h2>"
        + _table("rejected-records", ["received", "seq", "order", "record type", "where",
                                      "reason"],
                 ([r["received_at"], r["seq"], r["order_number"], r["record_type"],
                   r["location"], r["reason"]] for r in detail.rejected_records), "none")
        + "<h2>Rejected messages</h2>"
        + _table("rejected-messages", ["received", "topic", "reason", "bytes"],
                 ([r["received_at"], r["topic"], r["reason"], r["bytes"]]
                  for r in detail.rejected_messages), "none")
    )
    return _page(f"hub: {a.key}", body, refresh_s)


def svg_chart(
    chart_id: str, title: str, start: datetime, end: datetime,
    series: list[tuple[str, str, list[tuple[datetime, float | int | None]]]], *,
    bars: bool = False, width: int = 900, height: int = 220,
) -> str:
    """A time chart drawn as SVG: lines (a None value breaks the line) or bars (one per
    point, a minute wide). Each series is a `<g class='series' data-series=NAME
    data-points=N>`."""
    left, right, top, bottom = 56, 12, 26, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    span = max((end - start).total_seconds(), 1.0)
    values = [v for _, _, points in series for _, v in points if v is not None]
    top_value = max([*values, 1.0])

    def x(moment: datetime) -> float:
        return left + plot_w * min(max((moment - start).total_seconds() / span, 0.0), 1.0)

    def y(value: float) -> float:
        return top + plot_h * (1 - value / top_value)

    parts = [
        f"<svg id='{_e(chart_id)}' xmlns='http://www.w3.org/2000/svg' width='{width}' "
        f"height='{height}' viewBox='0 0 {width} {height}' role='img'>",
        f"<text x='{left}' y='16' font-size='13' font-weight='600'>{_e(title)}</text>",
        f"<line x1='{left}' y1='{top + plot_h}' x2='{left + plot_w}' y2='{top + plot_h}' "
        "stroke='#999'/>",
        f"<line x1='{left}' y1='{top}' x2='{left}' y2='{top + plot_h}' stroke='#999'/>",
        f"<text x='{left - 6}' y='{top + 4}' font-size='11' text-anchor='end'>"
        f"{_e(f'{top_value:g}')}</text>",
        f"<text x='{left - 6}' y='{top + plot_h}' font-size='11' text-anchor='end'>0</text>",
    ]
    for fraction in (0.0, 0.5, 1.0):
        moment = start + timedelta(seconds=span * fraction)
        anchor = {0.0: "start", 0.5: "middle", 1.0: "end"}[fraction]
        label = moment.strftime("%H:%M:%S UTC" if span < 900 else "%H:%M UTC")
        parts.append(f"<text x='{left + plot_w * fraction:.1f}' y='{height - 8}' font-size='11' "
                     f"text-anchor='{anchor}'>{_e(label)}</text>")
    bar_w = max(plot_w * 60.0 / span, 1.0)
    for index, (name, color, points) in enumerate(series):
        drawn = [(t, float(v)) for t, v in points if v is not None]
        parts.append(f"<g class='series' data-series='{_e(name)}' data-points='{len(drawn)}'>")
        if bars:
            parts.extend(
                f"<rect class='bar' x='{x(t):.1f}' y='{y(v):.1f}' "
                f"width='{max(min(bar_w - 1, left + plot_w - x(t)), 1.0):.1f}' "
                f"height='{top + plot_h - y(v):.1f}' fill='{color}'><title>"
                f"{_e(t.strftime('%H:%M'))}: {v:g}</title></rect>"
                for t, v in drawn
            )
        else:
            for segment in _segments(points):
                coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in segment)
                if len(segment) == 1:
                    t, v = segment[0]
                    parts.append(f"<circle cx='{x(t):.1f}' cy='{y(v):.1f}' r='2.5' "
                                 f"fill='{color}'/>")
                else:
                    parts.append(f"<polyline fill='none' stroke='{color}' stroke-width='2' "
                                 f"points='{coords}'/>")
        parts.append(f"<text x='{left + plot_w - 8 - 90 * index}' y='16' font-size='12' "
                     f"text-anchor='end' fill='{color}'>{_e(name)}</text></g>")
    if not values:
        parts.append(f"<text x='{left + plot_w / 2}' y='{top + plot_h / 2}' font-size='13' "
                     "text-anchor='middle' fill='#777'>no data in the window</text>")
    parts.append("</svg>")
    return "".join(parts)


def _segments(
    points: list[tuple[datetime, float | int | None]],
) -> list[list[tuple[datetime, float]]]:
    out: list[list[tuple[datetime, float]]] = [[]]
    for moment, value in points:
        if value is None:
            if out[-1]:
                out.append([])
            continue
        out[-1].append((moment, float(value)))
    return [segment for segment in out if segment]
