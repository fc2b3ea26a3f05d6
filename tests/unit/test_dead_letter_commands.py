"""The remote `dead-letters` and `retry` commands' arguments and the shortened pages that make
an answer fit the broker (`agent.link.commands`); the running agent: tests/e2e."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.link.commands import (
    MAX_DEAD_LETTER_SCAN,
    DeadLettersArgs,
    RetryArgs,
    _answers_smallest_last,
    _parse_args,
    dead_letter_entry,
)
from agent.link.signing import Refused
from buffer.base import DeadLetter


def test_retry_takes_exactly_one_form() -> None:
    assert _parse_args(RetryArgs, {"seqs": [3, 4]}).seqs == [3, 4]
    assert _parse_args(RetryArgs, {"all": True}).limit == 1000
    bads: list[dict[str, Any]] = [
        {}, {"seqs": [1], "all": True}, {"ids": ["a"], "seqs": [1]}, {"seqs": []},
        {"seqs": [0]}, {"all": "yes"}, {"seqs": list(range(1, 1002))},
    ]
    for bad in bads:
        with pytest.raises(Refused) as refused:
            _parse_args(RetryArgs, bad)
        assert refused.value.reason == "bad_args", bad


def test_a_page_stays_within_the_scan_bound() -> None:
    assert _parse_args(DeadLettersArgs, {}).limit == 50
    with pytest.raises(Refused, match="offset \\+ limit may be at most"):
        _parse_args(DeadLettersArgs, {"offset": MAX_DEAD_LETTER_SCAN, "limit": 1})
    with pytest.raises(Refused, match=r"args\.limit"):
        _parse_args(DeadLettersArgs, {"limit": 201})


def letter(seq: int | None, reason: str = "broker rejected the message") -> DeadLetter:
    return DeadLetter(seq, f"id-{seq}", "quality.hold.v1", 1, 5000, None, reason, 1.8e9)


def test_an_entry_says_what_and_why_in_bounded_size() -> None:
    entry = dead_letter_entry(letter(None, "x" * 5000))
    assert entry["retryable"] is False and entry["class"] == "business"
    assert len(entry["reason"]) == 240 and entry["reason"].endswith("...")
    assert entry["accepted_at"] is None and entry["dead_at"].startswith("2027-01-15T08:00:00")


def test_a_page_too_large_for_the_broker_is_shortened_with_the_next_offset() -> None:
    letters = [dead_letter_entry(letter(seq)) for seq in range(11, 21)]
    document: dict[str, Any] = {"ok": True, "command": "dead-letters", "agent": "a/b",
                                "at": "now", "result": {"total": 30, "offset": 10,
                                                        "letters": letters, "next_offset": 20}}
    answers = list(_answers_smallest_last(document, "mfg/a/b"))
    sizes = [len(answer["result"]["letters"]) for answer in answers[:-1]]
    assert sizes == [10, 5, 2, 1]
    assert [answer["result"]["next_offset"] for answer in answers[:-1]] == [20, 15, 12, 11]
    assert all(answer["result"]["shortened"] for answer in answers[1:-1])
    lengths = [len(json.dumps(answer)) for answer in answers]
    assert lengths == sorted(lengths, reverse=True)
    assert answers[-1]["ok"] is False and answers[-1]["error"]["reason"] == "too_large"
