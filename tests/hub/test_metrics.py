"""`/metrics` of a running `edge-agent hub run` with a running agent, parsed by the official
parser (`prometheus_client.parser`, and the OpenMetrics one): the landed total is the table's
event count, the per-agent gauges carry the right labels, and no label is unbounded."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from testkit.agent_process import AgentProcess
from testkit.broker import MosquittoBroker
from tests.hub.dashboard_harness import dashboard_hub_config, dashboard_url, get
from tests.hub.harness import (
    AGENT,
    SITE,
    HubProcess,
    agent_config,
    fetch,
    hub_keys,
    pause_source,
    wait_complete,
    wait_until,
)

CLASSES = {"telemetry", "business", "critical"}
BOUNDED = {"class": CLASSES, "flag": {"stale", "behind", "gapped", "offline"},
           "reason": {"evicted", "gone", "dead_letter"},
           "outcome": {"sent", "answered", "no_answer", "refused"}}


def samples_of(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


async def test_metrics_match_the_table_with_bounded_labels(
    tmp_path: Path, broker: MosquittoBroker, postgres_url: str
) -> None:
    private, public = hub_keys(tmp_path / "keys")
    hub = HubProcess(dashboard_hub_config(tmp_path / "hub.toml", broker, postgres_url),
                     tmp_path / "hub.log")
    agent = AgentProcess(agent_config(tmp_path / "agent", broker, public), tmp_path / "agent.log")
    try:
        hub.start()
        base = dashboard_url(hub)
        hub.wait_log("hub ready")
        agent.start()

        async def landed() -> int:
            rows = await fetch(postgres_url, "SELECT count(*) AS n FROM events")
            return int(rows[0]["n"])

        async def many_landed() -> bool:
            return await landed() >= 150

        await wait_until(many_landed, "150 events landed")
        await pause_source(broker, private)
        last_seq = await wait_complete(postgres_url, agent.config)

        async def status_recorded() -> bool:
            rows = await fetch(postgres_url, "SELECT state FROM agent_status")
            return [r["state"] for r in rows] == ["online"]

        await wait_until(status_recorded, "the agent's status recorded")

        status, content_type, text = await get(f"{base}metrics")
        assert status == 200 and content_type.startswith("text/plain"), (status, content_type)
        (tmp_path / "metrics.txt").write_text(text)  # for a look after a failure
        found = samples_of(text)
        ids = {"site": SITE, "agent": AGENT}
        assert found["hub_events_landed_total"] == [(ids, float(await landed()))]
        assert await landed() == last_seq
        assert found["hub_agent_max_seq"] == [(ids, float(last_seq))]
        assert found["hub_agent_open_gaps"] == [(ids, 0.0)]
        assert found["hub_agents"] == [({}, 1.0)]
        assert found["hub_rejected_messages_total"] == [({}, 0.0)]
        (age,) = found["hub_agent_last_event_age_seconds"]
        assert age[0] == ids and age[1] >= 0
        backlog = found["hub_agent_backlog_events"]
        assert {labels["class"] for labels, _ in backlog} == CLASSES
        assert all({k: v for k, v in labels.items() if k != "class"} == ids
                   for labels, _ in backlog)
        flags = {labels["flag"]: value for labels, value in found["hub_agent_flag"]}
        assert flags["offline"] == 0.0 and flags["gapped"] == 0.0
        assert found["hub_agent_up"] == [(ids, 1.0)]
        # Bounded labels: only these names; the open ones are the agent's identity, the others
        # come from small fixed sets. Nothing grows with the events (hundreds landed).
        total = 0
        for name, entries in found.items():
            for labels, _value in entries:
                total += 1
                assert set(labels) <= {"site", "agent", *BOUNDED}, (name, labels)
                assert labels.get("site", SITE) == SITE and labels.get("agent", AGENT) == AGENT
                for label, allowed in BOUNDED.items():
                    assert labels.get(label, next(iter(allowed))) in allowed, (name, labels)
        assert total < 60 and last_seq >= 150, (total, last_seq)

        # The OpenMetrics form, by the Accept header, read by its own parser: the same count.
        status, content_type, text = await get(
            f"{base}metrics", accept="application/openmetrics-text; version=1.0.0"
        )
        assert status == 200 and content_type.startswith("application/openmetrics-text")
        families = {
            family.name: family
            for family in openmetrics_families(text)  # type: ignore[no-untyped-call]
        }
        assert families["hub_events_landed"].type == "counter"
        (landed_sample,) = [s for s in families["hub_events_landed"].samples
                            if s.name == "hub_events_landed_total"]
        assert landed_sample.value == float(last_seq)
    finally:
        agent.ensure_stopped()
        hub.ensure_stopped()

