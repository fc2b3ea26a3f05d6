"""The one token bucket (`agent.link.token_bucket`), on a clock the test moves."""

from __future__ import annotations

import asyncio
import random

import pytest

from agent.link.token_bucket import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_grants_its_burst_then_nothing_until_it_refills() -> None:
    clock = Clock()
    bucket = TokenBucket(2.0, 5, clock=clock)
    assert bucket.take(10) == 5
    assert bucket.take(1) == 0
    assert bucket.wait_s() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take(3) == 1
    clock.now += 1.0
    assert bucket.take(3) == 2


def test_tokens_never_exceed_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(10.0, 3, initial=0, clock=clock)
    clock.now += 3600
    assert bucket.tokens == 3
    assert bucket.take(100) == 3


def test_nothing_accrues_before_the_start() -> None:
    clock = Clock()
    bucket = TokenBucket(100.0, 50, initial=0, start_at=clock.now + 2.0, clock=clock)
    assert bucket.take(1) == 0
    assert bucket.wait_s() == pytest.approx(2.0)
    clock.now += 1.0
    assert bucket.take(1) == 0
    assert bucket.wait_s() == pytest.approx(1.0)
    clock.now += 1.25
    assert bucket.take(50) == 25  # 0.25 s at 100 a second


def test_take_grants_at_most_what_was_asked_for() -> None:
    bucket = TokenBucket(1.0, 10, clock=Clock())
    assert bucket.take(3) == 3
    assert bucket.tokens == 7
    assert bucket.take(0) == 0


def test_a_jittered_rate_stays_within_its_fraction() -> None:
    clock = Clock()
    bucket = TokenBucket(
        1000.0, 1_000_000, initial=0, jitter=0.2, clock=clock, rng=random.Random(3)
    )
    granted = []
    for _ in range(200):
        clock.now += 1.0
        granted.append(bucket.take(1_000_000))
    assert all(800 <= count <= 1200 for count in granted)
    assert len(set(granted)) > 10  # it does vary
    assert sum(granted) / len(granted) == pytest.approx(1000, rel=0.05)


async def test_acquire_waits_for_the_next_token() -> None:
    bucket = TokenBucket(20.0, 1)  # the real clock
    await bucket.acquire()  # the one saved up
    loop = asyncio.get_running_loop()
    started = loop.time()
    await bucket.acquire()
    assert loop.time() - started >= 0.04


@pytest.mark.parametrize(
    ("rate", "burst", "jitter"), [(0.0, 1, 0.0), (1.0, 0, 0.0), (1.0, 1, 1.0), (1.0, 1, -0.1)]
)
def test_settings_that_make_no_bucket_are_refused(rate: float, burst: int, jitter: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, jitter=jitter)
