"""The ERP-facing business events (issue 16): `shipment.confirmed`, `asn.received`,
`invoice.posted` and `material.produced`, each from a file drop, a webhook and an interface
table. The same record, as a legacy ERP exports it (the same columns, CSV text in a file, JSON
in a post, typed values in an SQLite row), must come out as the same event data whatever the
interface (only `signal` differs: `record`, or the webhook's route), with the same time and
`correlationid`: the real agent (in process), a real folder, a real HTTP post, a real SQLite
file and a real mosquitto subscriber."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from testkit.broker import MosquittoBroker, Subscriber, free_loopback_port
from testkit.durability import agent_header
from testkit.events import EVENTS_TOPIC, decode_events, unique_by_id
from tests.integration.test_first_path import running_agent, until


@dataclass(frozen=True)
class Case:
    event: str
    columns: str  # the [sources.columns] lines
    row: dict[str, object]  # column -> value (None: empty)
    data: dict[str, object]  # the event's data, less `signal`
    correlationid: str
    time: str = "2026-11-26T14:05:00.000000Z"  # AT below, in UTC


CASES = [
    Case(
        "shipment.confirmed",
        '''
delivery = { column = "VBELN" }
item = { column = "POSNR" }
order = { column = "AUBEL" }
customer = { column = "KUNNR" }
material = { column = "MATNR" }
lot = { column = "CHARG", required = false }
quantity = { column = "LFIMG", type = "float", unit = "1" }
carrier = { column = "CARRIER", required = false }
tracking = { column = "TRACK", required = false }
shipped_at = { column = "AT", type = "time" }
''',
        {"VBELN": "80017345", "POSNR": "10", "AUBEL": "SO-88012", "KUNNR": "C-2044",
         "MATNR": "SKU-4711", "CHARG": None, "LFIMG": 480.0, "CARRIER": "DHL",
         "TRACK": "JJD000390007", "AT": "2026-11-26T15:05:00+01:00"},
        {"delivery": "80017345", "item": "10", "order": "SO-88012", "customer": "C-2044",
         "material": "SKU-4711", "lot": None, "quantity": 480.0, "unit": "1",
         "carrier": "DHL", "tracking": "JJD000390007", "shipped_at": "2026-11-26T14:05:00Z"},
        "order:SO-88012",
    ),
    Case(
        "asn.received",
        '''
asn = { column = "ASN" }
item = { column = "LINE" }
supplier = { column = "LIFNR" }
purchase_order = { column = "EBELN" }
material = { column = "MATNR" }
lot = { column = "LOT", required = false }
quantity = { column = "QTY", type = "float", unit = "kg" }
expected_at = { column = "ETA", type = "time" }
''',
        {"ASN": "ASN-77120", "LINE": "1", "LIFNR": "V-1009", "EBELN": "4500012877",
         "MATNR": "MAT-100200", "LOT": "S-LOT-55A", "QTY": 1000.5,
         "ETA": "2026-11-28T07:00:00+01:00", "AT": "2026-11-26T15:05:00+01:00"},
        {"asn": "ASN-77120", "item": "1", "supplier": "V-1009", "purchase_order": "4500012877",
         "material": "MAT-100200", "lot": "S-LOT-55A", "quantity": 1000.5, "unit": "kg",
         "expected_at": "2026-11-28T06:00:00Z"},
        "purchase_order:4500012877",
    ),
    Case(
        "invoice.posted",
        '''
invoice = { column = "BELNR" }
kind = { column = "KIND" }
order = { column = "AUBEL", required = false }
purchase_order = { column = "EBELN", required = false }
partner = { column = "PARTNER" }
amount = { column = "AMOUNT", type = "float" }
currency = { column = "WAERS" }
tax = { column = "TAX", type = "float", required = false }
posting_date = { column = "BUDAT" }
''',
        {"BELNR": "90031877", "KIND": "customer", "AUBEL": "SO-88012", "EBELN": None,
         "PARTNER": "C-2044", "AMOUNT": 11424.0, "WAERS": "EUR", "TAX": 1824.0,
         "BUDAT": "2026-11-26", "AT": "2026-11-26T15:05:00+01:00"},
        {"invoice": "90031877", "kind": "customer", "order": "SO-88012",
         "purchase_order": None, "partner": "C-2044", "amount": 11424.0, "currency": "EUR",
         "tax": 1824.0, "posting_date": "2026-11-26"},
        "order:SO-88012",
    ),
    Case(
        "material.produced",
        '''
order = { column = "AUFNR" }
material = { column = "MATNR" }
lot = { column = "CHARG" }
quantity = { column = "MENGE", type = "float", unit = "kg" }
location = { column = "LGORT" }
posting_date = { column = "BUDAT" }
''',
        {"AUFNR": "WO-10427", "MATNR": "SKU-4711", "CHARG": "L-2026-1126-07",
         "MENGE": 1180.25, "LGORT": "FG01", "BUDAT": "2026-11-26",
         "AT": "2026-11-26T15:05:00+01:00"},
        {"order": "WO-10427", "material": "SKU-4711", "lot": "L-2026-1126-07",
         "quantity": 1180.25, "unit": "kg", "location": "FG01", "posting_date": "2026-11-26"},
        "order:WO-10427",
    ),
]


def three_sources_config(tmp_path: Path, hub_url: str, case: Case) -> tuple[Path, int, Path]:
    """One agent with the case's event from a file drop, a webhook and an SQLite table, all
    with the same columns: (config, webhook port, drop folder)."""
    drop = tmp_path / "drop"
    drop.mkdir()
    port = free_loopback_port()
    columns = case.columns.strip()
    text = agent_header(hub_url=hub_url, state_dir=tmp_path / "state") + f"""
[[sources]]
name = "erp-drop"
type = "mes-files"
folder = "{drop}"
pattern = "*.csv"
delimiter = ";"
complete = "rename"
poll_s = 0.1
event = "{case.event}"
asset = "erp"
time_column = "AT"
  [sources.columns]
{columns}

[[sources]]
name = "erp-hook"
type = "mes-http"
listen = "127.0.0.1:{port}"
auth = "none"
  [[sources.routes]]
  path = "/erp/in"
  event = "{case.event}"
  asset = "erp"
  time_column = "AT"
    [sources.routes.columns]
{columns}

[[sources]]
name = "erp-table"
type = "mes-sql"
url = "sqlite:///{tmp_path / 'erp.db'}"
table = "erp"
cursor = ["id"]
poll_s = 0.1
reconnect_min_s = 0.2
reconnect_max_s = 1
event = "{case.event}"
asset = "erp"
time_column = "AT"
  [sources.columns]
{columns}
"""
    config = tmp_path / "agent.toml"
    config.write_text(text)
    return config, port, drop


def write_table(path: Path, row: dict[str, object]) -> None:
    names = list(row)
    declared = ", ".join(
        f"{name} {'REAL' if isinstance(row[name], float) else 'TEXT'}" for name in names
    )
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE erp (id INTEGER PRIMARY KEY, {declared})")
        db.execute(
            f"INSERT INTO erp ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
            [row[name] for name in names],
        )
    db.close()


def csv_text(row: dict[str, object]) -> str:
    cells = ["" if value is None else str(value) for value in row.values()]
    return ";".join(row) + "\n" + ";".join(cells) + "\n"


def of_type(subscriber: Subscriber, type_name: str) -> dict[str, dict[str, Any]]:
    """The events of a type that arrived, by the source they came from."""
    events = unique_by_id(decode_events(subscriber.messages)).values()
    return {e["source"].rsplit("/", 1)[1]: e for e in events if e["type"] == type_name}


@pytest.mark.parametrize("case", CASES, ids=[case.event for case in CASES])
async def test_the_same_record_from_a_file_a_webhook_and_a_table_is_the_same_event(
    tmp_path: Path, broker: MosquittoBroker, case: Case
) -> None:
    config, port, drop = three_sources_config(tmp_path, broker.url, case)
    write_table(tmp_path / "erp.db", case.row)
    type_name = f"{case.event}.v1"
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config) as agent:
            await until(lambda: all(s.connector.health.connected for s in agent.sources),
                        "every source connected")
            part = drop / "erp.part"
            part.write_text(csv_text(case.row))
            part.rename(drop / "erp.csv")
            async with aiohttp.ClientSession() as http, http.post(
                f"http://127.0.0.1:{port}/erp/in", data=json.dumps(case.row),
                headers={"Content-Type": "application/json"},
            ) as response:
                assert response.status == 202, await response.text()
            await until(lambda: len(of_type(subscriber, type_name)) == 3,
                        f"{type_name} from all three sources")
    events = of_type(subscriber, type_name)
    assert set(events) == {"erp-drop", "erp-hook", "erp-table"}
    assert {"erp-drop": "record", "erp-hook": "/erp/in", "erp-table": "record"} == {
        source: event["data"]["signal"] for source, event in events.items()
    }
    for source, event in events.items():
        data = {key: value for key, value in event["data"].items() if key != "signal"}
        assert data == case.data, source
        assert event["time"] == case.time, source
        assert event["correlationid"] == case.correlationid, source
        assert event["subject"] == "erp"
    assert not [e for e in decode_events(subscriber.messages) if e["type"] == "record.rejected.v1"]
