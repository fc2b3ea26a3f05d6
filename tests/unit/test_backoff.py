"""The one backoff schedule (`connectors.backoff`): its bounds, its doubling, its jitter."""

from __future__ import annotations

import random

import pytest

from connectors.backoff import Backoff


def test_without_jitter_it_doubles_from_the_minimum_up_to_the_cap() -> None:
    backoff = Backoff(0.5, 5.0, jitter=False)
    assert [backoff.next_s() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_a_reset_starts_over_from_the_minimum() -> None:
    backoff = Backoff(1.0, 30.0, jitter=False)
    for _ in range(4):
        backoff.next_s()
    backoff.reset()
    assert backoff.next_s() == 1.0


def test_jittered_waits_stay_within_the_minimum_and_twice_the_step_capped() -> None:
    backoff = Backoff(0.5, 30.0, rng=random.Random(7))
    for attempt in range(40):
        wait = backoff.next_s()
        assert 0.5 <= wait <= min(30.0, 2 * backoff.step_s(attempt))
        assert wait <= 30.0


def test_jitter_spreads_the_first_retry_already() -> None:
    waits = [Backoff(1.0, 60.0, rng=random.Random(seed)).next_s() for seed in range(200)]
    assert min(waits) >= 1.0 and max(waits) <= 2.0
    assert max(waits) - min(waits) > 0.8  # spread over the window, not one value
    assert len(set(waits)) == len(waits)


def test_jittered_waits_reach_the_cap_and_not_beyond() -> None:
    backoff = Backoff(0.1, 0.5, rng=random.Random(1))
    waits = [backoff.next_s() for _ in range(500)]
    assert max(waits) <= 0.5 and min(waits) >= 0.1
    assert max(waits[10:]) > 0.45  # at the cap the window is the whole [min, max]


def test_two_backoffs_without_a_seed_draw_differently() -> None:
    first, second = Backoff(1.0, 60.0), Backoff(1.0, 60.0)
    assert [first.next_s() for _ in range(5)] != [second.next_s() for _ in range(5)]


def test_a_huge_number_of_attempts_stays_at_the_cap() -> None:
    backoff = Backoff(0.5, 30.0, jitter=False)
    assert backoff.step_s(10_000) == 30.0


@pytest.mark.parametrize(("min_s", "max_s"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_bounds_that_make_no_schedule_are_refused(min_s: float, max_s: float) -> None:
    with pytest.raises(ValueError, match="need 0 < min_s <= max_s"):
        Backoff(min_s, max_s)
