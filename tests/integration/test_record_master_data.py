"""Master data and units on MES records (issue 16), as on OPC UA signals: a file-drop source
whose `product` is looked up in `[lookups.materials]` (A-17 -> MAT-117) and whose unit comes as
SAP sends it (UN/ECE Rec 20: KGM, EA, LTR), with `[units] mass = "g"`. The real agent (in
process), a real folder and a real mosquitto: the hub receives enterprise codes and UCUM units
(converted to the enterprise unit of their kind), an unknown code flagged in `unmapped`, an
unknown unit rejected as the source's policy says, each counted per source in status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.link.status import snapshot
from testkit.broker import MosquittoBroker, Subscriber
from testkit.durability import agent_header
from testkit.events import EVENTS_TOPIC, decode_events, unique_by_id
from tests.integration.test_first_path import running_agent, until


def config_text(tmp_path: Path, hub_url: str, drop: Path) -> str:
    return agent_header(hub_url=hub_url, state_dir=tmp_path / "state") + f"""
[units]
mass = "g"

[lookups.materials]
entries = {{ "A-17" = "MAT-117" }}

[[sources]]
name = "erp-drop"
type = "mes-files"
folder = "{drop}"
pattern = "*.csv"
delimiter = ";"
complete = "rename"
poll_s = 0.1
event = "workorder.completed"
asset = "line1"
time_column = "AT"
unknown_units = "reject"
lookups = {{ product = "materials" }}
  [sources.columns]
  order = {{ column = "WO" }}
  product = {{ column = "MAT" }}
  good = {{ column = "QTY", type = "float" }}
  unit = {{ column = "UOM" }}
"""


def by_order(subscriber: Subscriber, type_name: str) -> dict[str, dict[str, Any]]:
    events = unique_by_id(decode_events(subscriber.messages)).values()
    return {e["data"]["order"]: e for e in events if e["type"] == type_name}


async def test_codes_and_units_of_records_are_normalised_and_counted_per_source(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    config = tmp_path / "agent.toml"
    config.write_text(config_text(tmp_path, broker.url, drop))
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config) as agent:
            part = drop / "erp.part"
            part.write_text(
                "WO;MAT;QTY;UOM;AT\n"
                "WO-1;A-17;2.5;KGM;2026-11-26T08:00:00Z\n"
                "WO-2;A-17;3;EA;2026-11-26T08:01:00Z\n"
                "WO-3;B-99;1.5;LTR;2026-11-26T08:02:00Z\n"
                "WO-4;A-17;1;XYZ;2026-11-26T08:03:00Z\n"
                "WO-5;A-17;4;kg;2026-11-26T08:04:00Z\n"
            )
            part.rename(drop / "erp.csv")
            await until(lambda: len(by_order(subscriber, "workorder.completed.v3")) == 4
                        and "WO-4" in by_order(subscriber, "record.rejected.v1"),
                        "four completions and one rejection")
            status = await snapshot(agent)
    done = by_order(subscriber, "workorder.completed.v3")
    assert {order: (e["data"]["product"], e["data"]["good"], e["data"]["unit"])
            for order, e in done.items()} == {
        "WO-1": ("MAT-117", 2500.0, "g"),  # KGM is kg, in the enterprise unit of mass
        "WO-2": ("MAT-117", 3.0, "1"),  # EA: pieces
        "WO-3": ("B-99", 1.5, "L"),  # an unknown code passed on, flagged
        "WO-5": ("MAT-117", 4000.0, "g"),
    }
    assert done["WO-3"]["unmapped"] == "materials:B-99"
    assert "unmapped" not in done["WO-1"]
    rejected = by_order(subscriber, "record.rejected.v1")["WO-4"]["data"]
    assert (rejected["column"], rejected["stage"], rejected["unit"]) == ("unit", "validate", "XYZ")
    assert "neither a UCUM nor a UN/ECE Rec 20 code" in rejected["reason"]
    mapping = status["mapping"]
    assert mapping["record_codes_unmapped_total"] == {"erp-drop": 1}
    assert mapping["record_units_unknown_total"] == {"erp-drop": 1}
    assert mapping["record_units_normalised_total"] == {"erp-drop": 3}  # KGM, EA, LTR
    assert mapping["codes_unmapped_total"] == {"materials": 1}
