"""The three worked example plants (config/examples/plants/, issue 16, item 6) end to end: the
shipped configs as they are (only the broker URL, the state dirs, the folders, the webhook's
port and token file pointed at the test's), three real `edge-agent run` processes, a real
mosquitto, a real `edge-agent hub run` landing in a real PostgreSQL.

The webhook plant's sample is posted, the batch plant's file dropped with its `.done` marker,
the spreadsheet's export saved into its folder. The hub then holds, from each plant, the same
canonical events: the same types, the same normalised material code and unit, the same
business keys, quantities, times and posting dates; only what names the plant and its source
differs (site, source, id, seq, the record's `signal`, the trace).
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from testkit.agent_process import REPO, AgentProcess
from testkit.broker import MosquittoBroker, free_loopback_port
from testkit.mes_http import TOKEN
from tests.hub.harness import HubProcess, fetch, hub_config, wait_until

PLANTS = REPO / "config" / "examples" / "plants"
SITES = {"plant-north": "webhook-plant", "plant-south": "batch-file-plant",
         "plant-east": "spreadsheet-plant"}
# What names the plant, its source and the delivery, not the business fact.
PLANT_SPECIFIC = ("id", "seq", "site", "agent", "source", "partitionkey", "traceparent",
                  "tracestate")


def shipped(name: str, replacements: dict[str, str]) -> str:
    """The shipped config `name`.toml with each line's value replaced (each line must exist:
    the test runs the config as shipped, nothing else changed)."""
    text = (PLANTS / f"{name}.toml").read_text()
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{name}.toml: {old!r} not found once"
        text = text.replace(old, new)
    return text


@contextmanager
def stopped_at_exit(*processes: AgentProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            process.ensure_stopped()


def post_sample(port: int) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/mes/confirmations",
        data=(PLANTS / "webhook-plant.sample.json").read_bytes(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        assert response.status == 202, answer
        return answer


def canonical(envelope: dict[str, Any]) -> dict[str, Any]:
    """The business fact of an event: everything but what names its plant and delivery."""
    fact = {key: value for key, value in envelope.items() if key not in PLANT_SPECIFIC}
    fact["data"] = {key: value for key, value in envelope["data"].items() if key != "signal"}
    return fact


async def test_three_plants_send_the_hub_the_same_canonical_events(
    tmp_path: Path, broker: MosquittoBroker, postgres_url: str
) -> None:
    port = free_loopback_port()
    tokens = tmp_path / "mes-tokens"
    tokens.write_text(TOKEN + "\n")
    folders = {"drop-south": tmp_path / "drop-south", "share-east": tmp_path / "share-east"}
    for folder in folders.values():
        folder.mkdir()
    common = {'url = "mqtt://127.0.0.1:1883"': f'url = "{broker.url}"'}
    configs = {
        "webhook-plant": shipped("webhook-plant", {
            **common, 'state_dir = "./state-north"': f'state_dir = "{tmp_path / "north"}"',
            'listen = "127.0.0.1:8091"': f'listen = "127.0.0.1:{port}"',
            'tokens_file = "mes-tokens"': f'tokens_file = "{tokens}"',
        }),
        "batch-file-plant": shipped("batch-file-plant", {
            **common, 'state_dir = "./state-south"': f'state_dir = "{tmp_path / "south"}"',
            'folder = "drop-south"': f'folder = "{folders["drop-south"]}"',
            "poll_s = 30": "poll_s = 0.2",  # the shipped half minute would only slow the test
        }),
        "spreadsheet-plant": shipped("spreadsheet-plant", {
            **common, 'state_dir = "./state-east"': f'state_dir = "{tmp_path / "east"}"',
            'folder = "share-east"': f'folder = "{folders["share-east"]}"',
            "stable_s = 5": "stable_s = 0.5",
        }),
    }
    agents = []
    for name, text in configs.items():
        path = tmp_path / f"{name}.toml"
        path.write_text(text)
        agents.append(AgentProcess(path, tmp_path / f"{name}.log"))
    hub = HubProcess(hub_config(tmp_path / "hub.toml", broker, postgres_url),
                     tmp_path / "hub.log")

    async def landed() -> list[Any] | None:
        rows = await fetch(
            postgres_url, "SELECT site, type, envelope FROM events "
            "WHERE type LIKE 'workorder.completed.%' ORDER BY site, seq")
        by_site = {site: [r for r in rows if r["site"] == site] for site in SITES}
        return rows if all(len(found) >= 2 for found in by_site.values()) else None

    with stopped_at_exit(hub, *agents):
        hub.start()
        hub.wait_log("hub ready", timeout=30)
        for agent in agents:
            agent.start()
        for agent in agents:
            agent.wait_log("running: 1 source(s)", timeout=30)
        answer = post_sample(port)
        batch = folders["drop-south"] / "confirmations-2026-11-27-0000.csv"
        shutil.copy(PLANTS / "batch-file-plant.sample.csv", batch)
        batch.with_name(batch.name + ".done").touch()
        shutil.copy(PLANTS / "spreadsheet-plant.sample.csv",
                    folders["share-east"] / "rueckmeldungen.csv")
        rows = await wait_until(landed, "two completions from each plant at the hub", 60)
        rejected = await fetch(postgres_url, "SELECT site FROM events WHERE type <> ALL($1)",
                               ["workorder.completed.v3"])

    assert answer["accepted"] == 2
    assert rejected == []  # nothing else: no record.rejected, no unmapped code
    envelopes: dict[str, list[dict[str, Any]]] = {site: [] for site in SITES}
    for row in rows:
        envelope = row["envelope"] if isinstance(row["envelope"], dict) else json.loads(
            row["envelope"])
        assert row["type"] == "workorder.completed.v3"
        envelopes[row["site"]].append(envelope)
    facts = {site: sorted((canonical(e) for e in found), key=lambda f: f["data"]["operation"])
             for site, found in envelopes.items()}
    north, south, east = (facts[site] for site in SITES)
    assert north == south == east, json.dumps(facts, indent=1)
    # What is the same, said explicitly: the keys, the enterprise code, the UCUM unit, the
    # plant's calendar (the second confirmation is after midnight in Berlin, before in UTC).
    first, second = north
    assert [(f["data"]["order"], f["data"]["operation"], f["data"]["confirmation"])
            for f in north] == [("WO-5001", "0010", "000481"), ("WO-5001", "0020", "000482")]
    assert {f["data"]["product"] for f in north} == {"MAT-000117"}
    assert {f["data"]["unit"] for f in north} == {"kg"}
    assert (first["data"]["final"], second["data"]["final"]) == (False, True)
    assert (first["data"]["good"], second["data"]["good"]) == (480.0, 1180.5)
    assert second["time"] == "2026-11-26T23:20:00.000000Z"
    assert second["data"]["posting_date"] == "2026-11-27"
    assert first["data"]["started_at"] == "2026-11-26T05:00:00Z"
    assert all(f["correlationid"] == "order:WO-5001" for f in north)
    assert all("unmapped" not in f for f in north)
    # The three plants' events are three facts each, never one another's ids.
    ids = [e["id"] for found in envelopes.values() for e in found]
    assert len(set(ids)) == 6
