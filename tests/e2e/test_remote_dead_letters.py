"""Remote dead letters on a running agent (issue 16, item 5): a real `edge-agent run` with an
MES webhook, a real mosquitto whose `max_packet_size` is too small for some events, and the
real `edge-agent remote dead-letters` / `remote retry` commands.

The poison: quality holds whose note makes the event larger than the broker takes. The
forwarder dead-letters each (PacketTooLarge) and keeps the rest flowing. The answer to
`dead-letters` must itself fit the same broker: the page is shortened and says where the next
one starts. Then the cause is fixed (the broker comes back, same port, without the limit; the
agent keeps running, same pid) and a signed `retry` puts the dead letters back in the queue:
the hub receives them, with the ids the listing named, and the list is empty.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from testkit.agent_process import REPO, AgentProcess
from testkit.broker import MosquittoBroker, Subscriber, free_loopback_port
from testkit.durability import agent_header
from testkit.events import EVENTS_TOPIC, decode_events
from testkit.mes_http import TOKEN

MAX_PACKET_SIZE = 3000
POISONS = 8
NOTE = "x" * 4000  # the event alone exceeds MAX_PACKET_SIZE


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )


def agent_config(broker: MosquittoBroker, home: Path, port: int, keys: Path) -> str:
    tokens = home / "tokens"
    tokens.write_text(TOKEN + "\n")
    return agent_header(hub_url=broker.url, state_dir=home / "state") + f"""
[commands.keys]
ops = "{keys / 'ops.pub.pem'}"
other = "{keys / 'other.pub.pem'}"

[commands.allow]
retry = ["ops"]
pause = ["other"]

[[sources]]
name = "qms"
type = "mes-http"
listen = "127.0.0.1:{port}"
tokens_file = "{tokens}"
max_body_bytes = 65536

  [[sources.routes]]
  path = "/qms/holds"
  event = "quality.hold"
  asset = "line1"
    [sources.routes.columns]
    lot = {{ column = "lot" }}
    phase = {{ value = "placed" }}
    reason = {{ column = "reason" }}
    note = {{ column = "note", required = false }}
"""


def post_holds(port: int, holds: list[dict[str, Any]], limit_s: float = 20.0) -> dict[str, Any]:
    """POST until the webhook answers (bounded: it opens once the agent runs)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/qms/holds", data=json.dumps(holds).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
    )
    deadline = time.monotonic() + limit_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                answer: dict[str, Any] = json.loads(response.read())
                assert response.status == 202, answer
                return answer
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_dead_letters_listed_and_retried_on_a_running_agent(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    for name in ("ops", "other"):
        created = cli("keys", "create", "--out", str(keys), "--name", name)
        assert created.returncode == 0, created.stderr
    home = tmp_path / "agent"
    home.mkdir()
    port = free_loopback_port()
    small = MosquittoBroker([f"max_packet_size {MAX_PACKET_SIZE}"])
    config = home / "agent.toml"
    config.write_text(agent_config(small, home, port, keys))
    agent = AgentProcess(config, home / "agent.log")
    target = ["--hub", small.url, "--site", "plant-a", "--agent", "edge-01", "--timeout", "10"]
    signed = [*target, "--key", str(keys / "ops.key.pem")]
    large: MosquittoBroker | None = None
    try:
        small.start()
        with Subscriber(small, EVENTS_TOPIC) as before:
            agent.start()
            pid = agent.pid
            poison = [{"lot": f"L-{n}", "reason": "QH-01", "note": NOTE} for n in range(POISONS)]
            answer = post_holds(port, [{"lot": "L-ok", "reason": "QH-01"}, *poison])
            ids = answer["ids"]
            assert len(ids) == POISONS + 1, answer

            def dead_lettered() -> bool:
                shown = cli("remote", "buffer", *target, "--json")
                return shown.returncode == 0 and json.loads(shown.stdout)["result"][
                    "dead_letters"] == POISONS

            await until(dead_lettered, f"{POISONS} dead letters")
            await before.wait_for_async(1, timeout=20)
            page = await asyncio.to_thread(
                cli, "remote", "dead-letters", *target, "--limit", "200", "--json"
            )
            table = await asyncio.to_thread(cli, "remote", "dead-letters", *target)
            pages = [json.loads(page.stdout)["result"]]
            while pages[-1]["next_offset"] is not None:
                more = await asyncio.to_thread(
                    cli, "remote", "dead-letters", *target, "--json",
                    "--offset", str(pages[-1]["next_offset"]),
                )
                assert more.returncode == 0, more.stderr
                pages.append(json.loads(more.stdout)["result"])
                assert len(pages) <= POISONS, pages
            not_allowed = await asyncio.to_thread(
                cli, "remote", "retry", "--all", *target, "--key", str(keys / "other.key.pem")
            )
            arrived_before = decode_events(before.messages)

        # The cause fixed: the broker back on the same port without the size limit. The agent
        # is not stopped; it reconnects by itself.
        small.stop()
        large = MosquittoBroker(port=small.port)
        large.start()
        with Subscriber(large, EVENTS_TOPIC) as after:
            await after.wait_subscribed_async()

            def connected() -> bool:
                return cli("remote", "ping", *target).returncode == 0

            await until(connected, "the agent reconnected")
            # One by its id first: it alone goes back and reaches the hub; then all the rest.
            one = await asyncio.to_thread(cli, "remote", "retry", "--id", ids[1], *signed)
            await after.wait_for_async(
                lambda _m: ids[1] in {e["id"] for e in decode_events(after.messages)},
                timeout=30,
            )
            after_one = {e["id"] for e in decode_events(after.messages)}
            retried = await asyncio.to_thread(cli, "remote", "retry", "--all", *signed)
            poisoned_ids = set(ids[1:])
            await after.wait_for_async(
                lambda _m: {e["id"] for e in decode_events(after.messages)} >= poisoned_ids,
                timeout=30,
            )
            arrived_after = decode_events(after.messages)
            empty = await asyncio.to_thread(cli, "remote", "dead-letters", *target, "--json")
            again = await asyncio.to_thread(cli, "remote", "retry", *signed, "1")
        assert agent.pid == pid and agent.exit_code() is None  # never stopped
    finally:
        agent.ensure_stopped()
        small.close()
        if large is not None:
            large.close()

    # Before the fix: the good hold went through, the poison did not.
    assert [e["data"]["lot"] for e in arrived_before] == ["L-ok"]
    # The listing: every dead letter, by id and seq, with the forwarder's reason; the answer
    # fitted the small broker because its pages were shortened.
    assert page.returncode == 0, page.stderr
    assert len(page.stdout) > 0 and pages[0].get("shortened") is True
    listed = [letter for each in pages for letter in each["letters"]]
    assert [letter["id"] for letter in listed] == ids[1:]
    assert all(letter["retryable"] and letter["type"] == "quality.hold.v1" for letter in listed)
    assert all("too large" in letter["reason"] for letter in listed), listed[0]
    assert all(each["total"] == POISONS for each in pages)
    assert table.returncode == 0 and "quality.hold.v1" in table.stdout, table.stderr
    assert "more: --offset" in table.stdout
    # A key that is not allowed for retry is refused.
    assert not_allowed.returncode == 1 and "key_not_allowed" in not_allowed.stderr
    # The retry by id: that dead letter only, the others still dead letters then.
    assert one.returncode == 0, one.stderr
    assert "1 dead letter(s) queued again" in one.stdout
    assert f"{POISONS - 1} dead letter(s) left" in one.stdout
    assert after_one & set(ids[2:]) == set()
    # The retry of all: the rest moved back and forwarded, same ids and seqs as listed.
    assert retried.returncode == 0, retried.stderr
    assert f"{POISONS - 1} dead letter(s) queued again" in retried.stdout
    assert "0 dead letter(s) left" in retried.stdout
    by_id = {e["id"]: e for e in arrived_after}
    for letter in listed:
        assert by_id[letter["id"]]["seq"] == letter["seq"]
        assert by_id[letter["id"]]["data"]["note"] == NOTE
    assert json.loads(empty.stdout)["result"] == {
        "total": 0, "offset": 0, "letters": [], "next_offset": None
    }
    assert again.returncode == 0 and "1 not found among the dead letters: 1" in again.stdout
