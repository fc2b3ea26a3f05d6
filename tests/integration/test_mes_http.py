"""The webhook connector in the real agent (in process), real HTTP calls and a real mosquitto:
202 only once committed, 400 with the field errors, 401, 413, retries with the same
idempotency key (also after a restart), 409 for a reused key, 503 while the buffer is full.
At the broker: exactly the valid records, once each after de-duplication by id."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp

from agent.link.status import sources_status
from buffer.sqlite import ID_TEXT_SQL
from testkit.broker import MosquittoBroker, Subscriber, free_loopback_port
from testkit.events import EVENTS_TOPIC, decode_events, unique_by_id
from testkit.mes_http import TOKEN, completion, mes_http_agent_config
from tests.integration.test_first_path import running_agent, until
from tests.unit.completion_v3 import V3_UNSET

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def write_config(tmp_path: Path, hub_url: str, **options: Any) -> tuple[Path, str]:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# the MES\n{TOKEN}\n")
    port = free_loopback_port()
    config = tmp_path / "agent.toml"
    config.write_text(
        mes_http_agent_config(
            hub_url=hub_url, state_dir=tmp_path / "state", port=port, tokens_file=tokens,
            **options,
        )
    )
    return config, f"http://127.0.0.1:{port}"


async def post(
    url: str, body: Any, *, headers: dict[str, str] | None = None, raw: bytes | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with aiohttp.ClientSession() as http:
        kwargs: dict[str, Any] = {"data": raw, "headers": {
            "Content-Type": "application/json", **AUTH, **(headers or {})
        }} if raw is not None else {"json": body, "headers": {**AUTH, **(headers or {})}}
        async with http.post(url, **kwargs) as response:
            return response.status, await response.json(), dict(response.headers)


def business_events(subscriber: Subscriber) -> list[dict[str, Any]]:
    return [e for e in decode_events(subscriber.messages) if e["type"] != "telemetry.v1"]


async def test_posts_become_events_once_each(tmp_path: Path, broker: MosquittoBroker) -> None:
    config, base = write_config(tmp_path, broker.url)
    completions = f"{base}/mes/completions"
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config) as agent:
            # A batch with an idempotency key: 202 once committed, with the event ids.
            batch = [completion("WO-1"), completion("WO-2", good=7.5, minute=1)]
            status, body, _ = await post(completions, batch, headers={"Idempotency-Key": "b-1"})
            assert (status, body["accepted"], body["replayed"]) == (202, 2, False)
            first_ids = body["ids"]
            await until(lambda: len(business_events(subscriber)) >= 2, "2 events at the hub")
            event = unique_by_id(business_events(subscriber))[first_ids[1]]
            assert event["type"] == "workorder.completed.v3"
            assert event["data"] == {"signal": "/mes/completions", "order": "WO-2",
                                     "product": "MAT-1", "good": 7.5, "scrap": 1.0, "unit": "kg",
                                     **V3_UNSET, "posting_date": "2026-11-26"}
            assert event["time"] == "2026-11-26T07:01:00.000000Z"
            assert event["subject"] == "line1"

            # The same post again (the MES did not see the answer): the same ids, nothing new.
            status, body, _ = await post(completions, batch, headers={"Idempotency-Key": "b-1"})
            assert (status, body["ids"], body["replayed"]) == (202, first_ids, True)
            # The same key with another body: refused.
            status, body, _ = await post(
                completions, [completion("WO-9")], headers={"Idempotency-Key": "b-1"}
            )
            assert status == 409 and "b-1" in body["error"]

            # The key from the payload field; a resend without any key dedupes by body digest.
            single = {**completion("WO-3", minute=2), "messageId": "m-3"}
            status, keyed, _ = await post(completions, single)
            assert status == 202
            status, again, _ = await post(completions, single)
            assert (status, again["ids"], again["replayed"]) == (202, keyed["ids"], True)
            unkeyed = [completion("WO-4", minute=3)]
            _, one, _ = await post(completions, unkeyed)
            _, two, _ = await post(completions, unkeyed)
            assert one["ids"] == two["ids"] and not two["replayed"]

            # Inventory: local time in Berlin, a constant reason, the unit from a field.
            inventory = f"{base}/mes/inventory"
            status, body, _ = await post(inventory, {
                "material": "MAT-7", "lot": "L-1", "bin": "WH-1/A3", "delta": -4,
                "uom": "kg", "at": "26.11.2026 09:30",
            })
            assert status == 202
            await until(lambda: len(unique_by_id(business_events(subscriber))) >= 5,
                        "5 distinct events at the hub")
            adjusted = unique_by_id(business_events(subscriber))[body["ids"][0]]
            assert adjusted["type"] == "inventory.adjusted.v1"
            assert adjusted["time"] == "2026-11-26T08:30:00.000000Z"
            assert adjusted["data"]["reason"] == "MES-ADJ"
            assert adjusted["data"]["delta"] == -4
            await asyncio.sleep(0.5)  # anything extra would have arrived by now
            # What the operator sees in status: every post counted by its outcome.
            assert sources_status(agent)["mes-webhook"]["counters"] == {
                "posts_accepted_total": 5, "posts_replayed_total": 2,
                "posts_rejected_total": 1, "posts_busy_total": 0,
                "posts_unauthorized_total": 0, "posts_refused_total": 0,
                "records_rejected_total": 0, "rejections_unreported_total": 0,
            }
    orders = sorted(
        e["data"]["order"] for e in unique_by_id(business_events(subscriber)).values()
        if e["type"] == "workorder.completed.v3"
    )
    assert orders == ["WO-1", "WO-2", "WO-3", "WO-4"]


async def test_bad_posts_are_refused_and_nothing_of_them_is_taken(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    config, base = write_config(tmp_path, broker.url)
    completions, inventory = f"{base}/mes/completions", f"{base}/mes/inventory"
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config) as agent:
            # One bad object refuses the whole post: the good one is not taken either.
            bad = {"orderId": "WO-8", "qty": {"good": "lots"}, "finishedAt": "2026-11-26T08:00Z"}
            status, body, _ = await post(completions, [completion("WO-7"), bad])
            assert status == 400
            assert body["errors"] == [
                {"index": 1, "field": "qty.good",
                 "message": "column 'qty.good': 'lots' is not a number"},
            ]
            # A value the event model refuses: the field and the model's reason.
            status, body, _ = await post(inventory, {
                "material": "M", "bin": "B", "delta": 0, "uom": "kg", "at": "26.11.2026 09:30",
            })
            assert status == 400
            assert body["errors"] == [{"index": 0, "field": "record",
                                       "message": "Value error, delta: an adjustment of 0 "
                                                  "changes nothing"}]
            status, body, _ = await post(completions, None, raw=b'[{"orderId": "WO-1",}]')
            assert status == 400 and "line 1 column" in body["error"]
            status, _, headers = await post(completions, [completion("WO-1")],
                                            headers={"Authorization": "Bearer wrong"})
            assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
            status, body, _ = await post(completions, [completion(f"WO-{n}") for n in range(60)])
            assert status == 413 and "4096" in body["error"]
            # The two refused objects reach the hub as record.rejected (issue 16), nothing else.
            assert agent.pipeline.counters.readings_total == 2
            counters = sources_status(agent)["mes-webhook"]["counters"]
            assert counters == {
                "posts_accepted_total": 0, "posts_replayed_total": 0,
                "posts_rejected_total": 2, "posts_busy_total": 0,
                "posts_unauthorized_total": 1, "posts_refused_total": 2,
                "records_rejected_total": 2, "rejections_unreported_total": 0,
            }
            await until(lambda: len(unique_by_id(business_events(subscriber))) >= 2,
                        "the two rejections at the hub")
    rejected = unique_by_id(business_events(subscriber)).values()
    assert sorted((e["type"], e["data"]["location"]) for e in rejected) == [
        ("record.rejected.v1", "POST /mes/completions item 1"),
        ("record.rejected.v1", "POST /mes/inventory item 0"),
    ]
    assert agent.pipeline.counters.events_accepted_total == 2  # WO-7 was not taken


async def test_a_full_buffer_answers_503_and_an_answered_key_survives_a_restart(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    """The hub is unreachable (a closed port) and the buffer holds at most 4 KiB: posts are
    taken until it is full, then answered 503 with Retry-After. After a restart, a resend of
    an answered key is a replay (the answer was committed with its records)."""
    dead_hub = f"mqtt://127.0.0.1:{free_loopback_port()}"
    config, base = write_config(tmp_path, dead_hub, max_bytes="4KiB", commit_timeout_s=1.0)
    completions = f"{base}/mes/completions"
    taken: dict[str, list[str]] = {}
    async with running_agent(config):
        busy: dict[str, str] | None = None
        for n in range(40):
            key = f"k-{n}"
            status, body, headers = await post(
                completions, [completion(f"WO-{n}", minute=n % 60)],
                headers={"Idempotency-Key": key},
            )
            if status == 503:
                busy = headers
                break
            assert status == 202, body
            taken[key] = body["ids"]
        assert busy is not None and int(busy["Retry-After"]) >= 1, "never answered 503"
        assert taken, "nothing was taken before the buffer was full"
    buffer_file = tmp_path / "state" / "buffer.sqlite"
    with sqlite3.connect(f"file:{buffer_file}?mode=ro", uri=True) as db:
        held = {str(row[0]) for row in db.execute(f"SELECT {ID_TEXT_SQL} FROM events")}
    db.close()
    assert {i for ids in taken.values() for i in ids} <= held  # every 202 is in the buffer

    # The hub is back: restart against the broker; a resend of an answered key is a replay.
    config.write_text(config.read_text().replace(dead_hub, broker.url).replace("4KiB", "64MiB"))
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config):
            first = next(iter(taken))
            status, body, _ = await post(
                completions, [completion("WO-0", minute=0)], headers={"Idempotency-Key": first}
            )
            assert (status, body["ids"], body["replayed"]) == (202, taken[first], True)
            expected = {i for ids in taken.values() for i in ids}
            await until(
                lambda: expected <= set(unique_by_id(business_events(subscriber))),
                "every accepted post at the hub",
            )
