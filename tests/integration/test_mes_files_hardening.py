"""The file drop against hostile and broken entries (issue 13, items 7 and 8), in the real agent
(in process) with a real mosquitto: real symbolic links, a FIFO and a folder in the drop are
never read; a file holding a secret is never quoted; files the kernel refuses to read (root
included) are set aside while the good files behind them flow; a really full file system while
the reject report is written pauses the source, which resumes by itself.

The root-only cases mount things (a tmpfs, bind mounts of /proc files); they are skipped, with
the reason, when not root or when mounting is not allowed here."""

from __future__ import annotations

import csv
import errno
import logging
import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.link.status import sources_status
from agent.runtime import Agent
from connectors.base import SourceHealth
from testkit.broker import MosquittoBroker, Subscriber
from testkit.events import EVENTS_TOPIC
from testkit.mes_files import HEADER, rows, write_mes_files_config
from tests.integration.test_first_path import running_agent, until
from tests.integration.test_mes_files import orders_at_hub

# A shadow-like line: what must never show up in a log, a reason or a report.
SECRET = "$6$Zq8sM3xB$S3CR3Tha5hN0tT0B3L0gg3d"
SHADOW = f"root:{SECRET}:19700:0:99999:7:::\ndaemon:*:19700:0:99999:7:::\n"
CONNECTOR_LOG = "connectors.mes_files"
COMPACT_MEMORY = "/proc/sys/vm/compact_memory"  # mode 0200: root cannot open it for reading


def counters(agent: Agent) -> dict[str, int]:
    return dict(sources_status(agent)["mes-drop"]["counters"])


def health(agent: Agent) -> SourceHealth:
    return agent.sources[0].connector.health


def lines_naming(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.name.startswith(CONNECTOR_LOG) and all(w in r.getMessage() for w in words)
    ]


def mount(*args: str) -> None:
    """`mount ARGS` as root; skip the test (with the reason) where that is not possible."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts a tmpfs or bind-mounts /proc files")
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({' '.join(args)}): {done.stderr.strip()}")


@contextmanager
def mounted(*args: str) -> Iterator[None]:
    mount(*args)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", args[-1]], capture_output=True, check=False)


async def test_links_fifos_and_folders_in_the_drop_are_never_read(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """A link to a CSV elsewhere and a link to a shadow-like file, a FIFO and a folder, all
    matching the pattern and named ahead of a good file: none is opened; the links and the FIFO
    move to rejected/ (as themselves) with a note, the folder stays; the good file flows."""
    caplog.set_level(logging.INFO)
    config, drop = write_mes_files_config(tmp_path, broker.url, stable_s=0.2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other, shadow = elsewhere / "other.csv", elsewhere / "shadow"
    other.write_text(HEADER + rows(3, start=900))
    shadow.write_text(SHADOW)
    os.symlink(other, drop / "a-link.csv")
    os.symlink(shadow, drop / "b-shadow.csv")
    os.mkfifo(drop / "c-pipe.csv")
    (drop / "d-folder.csv").mkdir()
    (drop / "z-good.csv").write_text(HEADER + rows(3))
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config) as agent:
            await until(lambda: (drop / "processed" / "z-good.csv").exists(), "z-good processed")
            await until(lambda: len(orders_at_hub(subscriber)) == 3, "3 orders at the hub")
            await until(lambda: counters(agent)["entries_refused_total"] == 4, "4 refused")
            assert counters(agent) == {
                "files_processed_total": 1, "files_rejected_total": 0, "rows_rejected_total": 0,
                "files_unreadable_total": 0, "entries_refused_total": 4,
                "files_skipped_total": 1,  # the folder: left alone, reported once
                "disk_pauses_total": 0, "rejections_not_sent_total": 0,
            }
    assert set(orders_at_hub(subscriber)) == {"WO-0", "WO-1", "WO-2"}  # never WO-900..902
    rejected = drop / "rejected"
    assert os.readlink(rejected / "a-link.csv") == str(other)  # the link moved, not its target
    assert os.readlink(rejected / "b-shadow.csv") == str(shadow)
    assert stat.S_ISFIFO(os.lstat(rejected / "c-pipe.csv").st_mode)
    assert (drop / "d-folder.csv").is_dir()
    assert other.read_text() == HEADER + rows(3, start=900) and shadow.read_text() == SHADOW
    assert (rejected / "a-link.csv.reject.txt").read_text() == (
        "not a regular file (symbolic link): not read\n"
    )
    assert (rejected / "c-pipe.csv.reject.txt").read_text() == (
        "not a regular file (FIFO): not read\n"
    )
    for name in ("a-link.csv", "b-shadow.csv", "c-pipe.csv", "d-folder.csv"):
        assert len(lines_naming(caplog, repr(name))) == 1, name  # named once, by name
    assert SECRET not in caplog.text
    for path in drop.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert SECRET not in path.read_text(errors="replace"), path


async def test_file_contents_are_never_quoted_in_reasons_or_logs(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """A regular file whose first line is a password hash is rejected without quoting it;
    rows whose cells hold it are reported by line, column and what was expected."""
    caplog.set_level(logging.INFO)
    config, drop = write_mes_files_config(tmp_path, broker.url, stable_s=0.2)
    (drop / "copy.csv").write_text(SHADOW)
    (drop / "rows.csv").write_text(
        HEADER
        + f"WO-1;M;{SECRET};0;26.11.2026 08:00:00\n"
        + f"WO-2;M;1;0;{SECRET}\n"
        + "WO-3;M;1;0;26.11.2026 08:02:00\n"
    )
    with Subscriber(broker, EVENTS_TOPIC) as subscriber:
        async with running_agent(config):
            await until(lambda: (drop / "processed" / "rows.csv").exists(), "rows.csv processed")
            await until(lambda: (drop / "rejected" / "copy.csv.reject.txt").exists(),
                        "copy.csv rejected")
            await until(lambda: len(orders_at_hub(subscriber)) == 1, "WO-3 at the hub")
    note = (drop / "rejected" / "copy.csv.reject.txt").read_text()
    assert note == (
        "column(s) 'FINISHED', 'WO', 'MATERIAL', 'GOOD_QTY', 'SCRAP_QTY' not in the header "
        "(line 1, 1 column(s))\n"
    )
    with (drop / "rejected" / "rows.csv.rejects.csv").open(newline="") as file:
        report = list(csv.DictReader(file))
    assert [(r["line"], r["reason"]) for r in report] == [
        ("2", "column 'GOOD_QTY': expected a whole number"),
        ("3", "time column 'FINISHED': expected a time in '%d.%m.%Y %H:%M:%S'"),
    ]
    assert SECRET not in caplog.text


@pytest.mark.skipif(
    not Path(COMPACT_MEMORY).exists(), reason=f"no {COMPACT_MEMORY} (a kernel without compaction)"
)
async def test_unreadable_files_ahead_of_good_files_do_not_block_the_folder(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Two regular files the kernel refuses to read, root included, named ahead of the good
    ones: a bind mount of this process's /proc/PID/mem (reading offset 0 fails with EIO) and
    of /proc/sys/vm/compact_memory (write-only: opening it for reading fails with EACCES even
    for root). Neither can be moved either (a mount point: EBUSY), so both are skipped and
    remembered for this run; the good files flow, also one dropped later."""
    caplog.set_level(logging.INFO)
    config, drop = write_mes_files_config(tmp_path, broker.url, stable_s=0.2)
    eio, denied = drop / "a-eio.csv", drop / "b-denied.csv"
    eio.touch()
    denied.touch()
    with mounted("--bind", f"/proc/{os.getpid()}/mem", str(eio)), \
            mounted("--bind", COMPACT_MEMORY, str(denied)):
        with pytest.raises(OSError) as failed:  # the precondition: really unreadable
            eio.read_bytes()
        assert failed.value.errno == errno.EIO
        with pytest.raises(PermissionError):
            denied.read_bytes()
        (drop / "c-good.csv").write_text(HEADER + rows(3))
        with Subscriber(broker, EVENTS_TOPIC) as subscriber:
            async with running_agent(config) as agent:
                await until(lambda: (drop / "processed" / "c-good.csv").exists(), "c-good")
                (drop / "d-later.csv").write_text(HEADER + rows(2, start=10))
                await until(lambda: (drop / "processed" / "d-later.csv").exists(), "d-later")
                await until(lambda: len(orders_at_hub(subscriber)) == 5, "5 orders at the hub")
                assert counters(agent) == {
                    "files_processed_total": 2, "files_rejected_total": 0,
                    "rows_rejected_total": 0, "files_unreadable_total": 2,
                    "entries_refused_total": 0, "files_skipped_total": 2, "disk_pauses_total": 0,
                    "rejections_not_sent_total": 0,
                }
                assert "skipped" in health(agent).notices
                assert agent.sources[0].connector.health.connected
        assert eio.exists() and denied.exists()  # left in place
    assert set(orders_at_hub(subscriber)) == {"WO-0", "WO-1", "WO-2", "WO-10", "WO-11"}
    assert len(lines_naming(caplog, "'a-eio.csv'", "Input/output error")) == 1
    assert len(lines_naming(caplog, "'b-denied.csv'", "Permission denied")) == 1
    assert len(lines_naming(caplog, "'a-eio.csv'", "skipped")) == 1  # once, not every scan
    assert "failed unexpectedly" not in caplog.text


def fill(path: Path) -> None:
    """Write `path` until its file system has not one byte left (ENOSPC)."""
    block = b"\0" * 65536
    with path.open("wb", buffering=0) as file:
        for _ in range(1 << 16):  # bounded: 4 GiB at most; the tmpfs is far smaller
            try:
                file.write(block)
            except OSError as error:
                assert error.errno == errno.ENOSPC
                block = block[: len(block) // 2]
                if not block:
                    return
    raise AssertionError(f"{path} never filled its file system")


async def test_a_full_disk_while_writing_the_reject_report_pauses_and_resumes(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """The drop folder is a real 256 KiB tmpfs, filled to the last byte just as a file with a
    bad row arrives: writing its reject report fails with ENOSPC. The source pauses (said
    once, a `disk` notice), stays up, and once the space is back it writes the report, sends
    the rows and moves the file, by itself."""
    caplog.set_level(logging.INFO)
    config, drop = write_mes_files_config(tmp_path, broker.url)
    text = config.read_text().replace('complete = "stable"', 'complete = "rename"')
    config.write_text(text.replace("poll_s = 0.1", "poll_s = 0.1\nreconnect_min_s = 0.1\n"
                                   "reconnect_max_s = 0.5"))
    with mounted("-t", "tmpfs", "-o", "size=256k", "tmpfs", str(drop)):
        with Subscriber(broker, EVENTS_TOPIC) as subscriber:
            async with running_agent(config) as agent:
                await until(lambda: (drop / "rejected").is_dir(), "the folders made")
                staged = drop / "orders.staged"  # not matched by the pattern
                staged.write_text(HEADER + rows(3) + "WO-9;M;-;0;26.11.2026 09:00:00\n")
                fill(drop / "filler")
                os.replace(staged, drop / "orders.csv")
                await until(lambda: counters(agent)["disk_pauses_total"] == 1, "paused")
                assert "disk" in health(agent).notices
                assert health(agent).connected and agent.sources[0].state == "running"
                assert (drop / "orders.csv").exists()
                assert not (drop / "processed" / "orders.csv").exists()
                (drop / "filler").unlink()
                await until(lambda: (drop / "processed" / "orders.csv").exists(), "processed")
                await until(lambda: len(orders_at_hub(subscriber)) == 3, "3 orders at the hub")
                assert "disk" not in health(agent).notices
                assert counters(agent)["disk_pauses_total"] == 1
                assert counters(agent)["rows_rejected_total"] == 1
            with (drop / "rejected" / "orders.csv.rejects.csv").open(newline="") as file:
                report = list(csv.DictReader(file))
    assert [(r["line"], r["reason"], r["row"]) for r in report] == [
        ("5", "column 'GOOD_QTY': expected a whole number", "WO-9;M;-;0;26.11.2026 09:00:00"),
    ]
    assert len(lines_naming(caplog, "paused", "No space left on device")) == 1
    assert len(lines_naming(caplog, "resumed")) == 1
    assert "failed unexpectedly" not in caplog.text
