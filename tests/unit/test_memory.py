"""agent.service.memory caps glibc's malloc arenas: counted by glibc itself (`malloc_stats`, which
prints one "Arena N:" block per arena to stderr) in a real child process whose threads
allocate, with and without the cap."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's"
)

CHILD = textwrap.dedent(
    """
    import ctypes, sys, threading
    from agent.service.memory import limit_malloc_arenas
    print(limit_malloc_arenas() if sys.argv[1] == "cap" else "-", flush=True)
    start = threading.Barrier(8)
    def work():
        start.wait()
        blocks = [bytearray(100_000) for _ in range(20)]  # malloc, below the mmap threshold
        start.wait()
    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ctypes.CDLL(None).malloc_stats()
    """
)


def arenas(mode: str, **env: str) -> tuple[str, int]:
    child_env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, timeout=60,
        env=child_env, check=True,
    )
    return done.stdout.strip(), done.stderr.count("Arena ")


def test_eight_allocating_threads_share_two_arenas_with_the_cap() -> None:
    said, capped = arenas("cap")
    assert said == "True"
    assert 1 <= capped <= 2
    _, uncapped = arenas("none")
    assert uncapped > 2  # the control: without the cap, glibc gives them their own


def test_an_operators_malloc_arena_max_wins() -> None:
    said, count = arenas("cap", MALLOC_ARENA_MAX="4")
    assert said == "False"
    assert 1 <= count <= 4
