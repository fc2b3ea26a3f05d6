"""`agent.cli.tables.ago`: the one way the CLI (`status`, `remote`, `fleet`) says when
something happened, with the clock as a parameter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.cli.tables import ago

NOW = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)


def before_now(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).isoformat()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s ago"),
        (42, "42 s ago"),
        (3599, "3599 s ago"),
        (-30, "0 s ago"),  # the other clock a little fast: now
    ],
)
def test_a_moment_within_the_hour_is_how_long_ago(seconds: float, text: str) -> None:
    assert ago(before_now(seconds), NOW.timestamp()) == text


@pytest.mark.parametrize("seconds", [3601, 86400, -120])
def test_an_older_or_far_ahead_moment_is_the_moment_itself(seconds: float) -> None:
    moment = before_now(seconds)
    assert ago(moment, NOW.timestamp()) == f"at {moment}"


def test_no_moment_or_no_time() -> None:
    assert ago(None) == "-"
    assert ago("") == "-"
    assert ago(1234) == "-"
    assert ago(None, unknown="at an unknown time") == "at an unknown time"
    assert ago("yesterday") == "at yesterday"
