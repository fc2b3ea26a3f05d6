"""Each write of the agent's state dir on a really short disk (a small tmpfs, filled to the
last byte or remounted read-only), in process: the counter baselines' protocol around a real
SQLite buffer, the status file, and the buffer itself.

A full disk pauses the write (the batch is held, nothing accepted is lost), is said once, and
clears by itself when space comes back; it never stops the pipeline and never makes the buffer
look corrupt."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.flow.mapping import Mapper
from agent.flow.mapping_state import CounterBaselines
from agent.flow.pipeline import Pipeline
from agent.service.status_file import STATUS_FILE, StatusFile, read_status
from buffer.base import BufferUnavailable, Record
from buffer.sqlite import SqliteBuffer
from connectors.base import Reading, SourceUnavailable
from connectors.opcua.trust import TrustStore, UntrustedCertificate
from testkit.short_disk import Filler, free_bytes, remount, small_tmpfs
from testkit.tls import make_ca
from tests.unit.test_mapping_state import CONFIG, increments

LIMIT_S = 20.0
T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def reading(value: int, second: int) -> Reading:
    return Reading("line1", "ns=2;s=Good", value, T0 + timedelta(seconds=second))


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + LIMIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {LIMIT_S} s"
        await asyncio.sleep(0.02)


async def test_a_full_disk_under_the_counters_file_holds_the_batch_until_space_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The buffer has room (its own directory); counters.json is on a full tmpfs. The batch
    must not commit before its pending baselines are on disk, and goes in by itself after."""
    with small_tmpfs(tmp_path / "state") as state:
        counters = state / "counters.json"
        mapper = Mapper.from_config(CONFIG)
        baselines = CounterBaselines(counters, mapper)
        baselines.restore()
        async with SqliteBuffer.open(tmp_path / "buffer.sqlite") as buffer:
            pipeline = Pipeline(mapper, buffer, site="s", agent="a", baselines=baselines)
            runner = asyncio.create_task(pipeline.run())
            try:
                await (await pipeline.emit([reading(100, 0)]))
                filler = Filler(state)
                filler.top_up()
                assert free_bytes(state) == 0
                with caplog.at_level(logging.WARNING):
                    committed = await pipeline.emit([reading(130, 1)])
                    await wait_until(lambda: pipeline.counters.disk_short, "the pause")
                    for _ in range(20):  # held over several retries, never committed
                        filler.top_up()
                        await asyncio.sleep(0.05)
                    assert not runner.done()
                    assert not committed.done()
                    assert buffer.last_seq == 1
                    assert pipeline.backpressure()  # a webhook answers "busy" meanwhile
                    filler.remove()
                    await asyncio.wait_for(committed, LIMIT_S)
                assert buffer.last_seq == 2
                assert not pipeline.counters.disk_short
                assert pipeline.counters.disk_short_total == 1
                said = [r.getMessage() for r in caplog.records if "DISK SHORT" in r.getMessage()]
                assert len(said) == 1, said
                assert json.loads(counters.read_text())["committed"] == {
                    "line1/ns=2;s=Good": 130
                }
            finally:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)


async def test_a_failed_write_after_the_commit_leaves_pending_and_the_next_commit_rewrites_it(
    tmp_path: Path,
) -> None:
    with small_tmpfs(tmp_path / "state") as state:
        counters = state / "counters.json"
        mapper = Mapper.from_config(CONFIG)
        baselines = CounterBaselines(counters, mapper)
        baselines.restore()
        increments(mapper, "Good", 100)
        await baselines.before_commit()
        remount(state, "ro")  # between the buffer's commit and step 3
        try:
            await baselines.after_commit()  # must not raise: the batch is committed
            assert json.loads(counters.read_text())["pending"] == {"line1/ns=2;s=Good": 100}
        finally:
            remount(state, "rw")
        await baselines.before_commit()  # no count changed, but the file is stale
        assert json.loads(counters.read_text()) == {
            "version": 1, "committed": {"line1/ns=2;s=Good": 100}, "pending": None
        }
        restarted = Mapper.from_config(CONFIG)
        CounterBaselines(counters, restarted).restore()
        assert increments(restarted, "Good", 110) == [10]  # the baseline survived


async def test_the_status_file_on_a_full_disk_is_said_once_and_written_when_space_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with small_tmpfs(tmp_path / "state") as state:
        status = StatusFile(state)
        assert status.write({"state": "running", "n": 1})
        filler = Filler(state)
        filler.top_up()
        with caplog.at_level(logging.INFO, logger="agent.service.status_file"):
            assert not status.write({"state": "running", "n": 2})
            assert not status.write({"state": "running", "n": 3})
            assert read_status(state)["n"] == 1  # type: ignore[index]  # the previous one stays
            filler.remove()
            assert status.write({"state": "running", "n": 4})
        messages = [record.getMessage() for record in caplog.records]
        assert sum("cannot write the status file" in m for m in messages) == 1, messages
        assert sum("written again" in m for m in messages) == 1, messages
        assert read_status(state)["n"] == 4  # type: ignore[index]  # written above
        assert [p.name for p in state.iterdir() if p.name != "filler"] == [STATUS_FILE]


async def test_a_full_disk_never_makes_the_buffer_look_corrupt(tmp_path: Path) -> None:
    """Appends on a full disk are refused as unavailable (held and retried), never corrupt;
    opening the buffer again on the full disk with recovery on does not move it aside."""
    with small_tmpfs(tmp_path / "state") as state:
        path = state / "buffer.sqlite"
        body = b"x" * 2_000
        async with SqliteBuffer.open(path, recover_corrupt=True) as buffer:
            await buffer.append([Record("r-0", "k", 1, body)])
            filler = Filler(state)
            filler.top_up()
            refused = 0
            for number in range(1, 200):  # bounded: the WAL's spare frames run out far sooner
                try:
                    await buffer.append([Record(f"r-{number}", "k", 1, body)])
                except BufferUnavailable:  # BufferFull is one; BufferCorrupt would fail here
                    refused += 1
                    break
                filler.top_up()
            assert refused == 1
            accepted = buffer.last_seq
        async with SqliteBuffer.open(path, recover_corrupt=True) as reopened:
            assert reopened.recovered_from is None
            assert reopened.last_seq == accepted
        filler.remove()
        assert not list(state.glob("*.corrupt-*"))


def test_an_untrusted_server_certificate_on_a_full_pki_disk_is_refused_not_a_crash(
    tmp_path: Path,
) -> None:
    """Filing the refused certificate under pki/rejected fails with ENOSPC: the refusal still
    says what to do (and that it could not be saved); trust on first use trusts nothing it
    could not keep and reports a transient error (retried)."""
    certificate = make_ca("opcua-server").cert
    with small_tmpfs(tmp_path / "pki") as pki:
        (pki / "rejected").mkdir()
        (pki / "trusted").mkdir()
        filler = Filler(pki)
        filler.top_up()
        with pytest.raises(UntrustedCertificate, match="could not be saved"):
            TrustStore(pki).check(certificate, server="opc.tcp://127.0.0.1:4840")
        with pytest.raises(SourceUnavailable, match="cannot save"):
            TrustStore(pki, trust_on_first_use=True).check(
                certificate, server="opc.tcp://127.0.0.1:4840"
            )
        assert not list((pki / "trusted").iterdir())
        filler.remove()
        with pytest.raises(UntrustedCertificate, match="it was saved"):
            TrustStore(pki).check(certificate, server="opc.tcp://127.0.0.1:4840")
