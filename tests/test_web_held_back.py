"""Why a conversation is held back by ordered delivery: the dashboard's pure decision."""

from __future__ import annotations

import doctest
from dataclasses import dataclass

import pytest

from tidings.web import held_back
from tidings.web.held_back import PAUSED, RETRYING, SENDING, STUCK, WAITING, hold_reason, last_answer, spoken_duration

NOW = 1_700_000_000.0


@dataclass
class Head:
    status: str = "pending"
    attempt_count: int = 0
    next_attempt_at: float = NOW
    last_status_code: int | None = None
    last_error: str | None = None


def test_the_examples_in_the_docstrings_hold():
    result = doctest.testmod(held_back)
    assert result.attempted > 0 and result.failed == 0, result


def test_a_failing_head_is_retrying_with_its_last_answer_and_the_time_to_its_next_try():
    head = Head(attempt_count=4, last_status_code=500, last_error="answered 500; retry 4 in 12 s",
                next_attempt_at=NOW + 12)
    assert hold_reason(head, paused=False, paused_reason=None, now=NOW) == held_back.HoldReason(
        RETRYING, "retrying: 4 attempts failed, last answer HTTP 500, next try in 12 s")


def test_a_head_without_an_answer_names_the_cause_not_the_stale_retry_plan():
    head = Head(attempt_count=1, last_error="timeout; retry 1 in 29.7 s", next_attempt_at=NOW + 90)
    reason = hold_reason(head, paused=False, paused_reason=None, now=NOW)
    assert reason.text == "retrying: 1 attempt failed, no answer (timeout), next try in 1 min 30 s"
    assert "29.7" not in reason.text


@pytest.mark.parametrize(("next_at", "said"), [
    (NOW + 0.3, "next try in 1 s"),
    (NOW - 0.5, "next try due now"),
    (NOW - 180, "next try due 3 min ago"),  # overdue: no worker has taken it
])
def test_the_next_try_is_in_the_future_due_or_overdue(next_at, said):
    head = Head(attempt_count=2, last_status_code=503, next_attempt_at=next_at)
    assert hold_reason(head, paused=False, paused_reason=None, now=NOW).text.endswith(said)


def test_a_head_not_tried_yet_is_waiting_for_its_first_try():
    assert hold_reason(Head(), paused=False, paused_reason=None, now=NOW) == held_back.HoldReason(
        WAITING, "first try due now")
    assert hold_reason(Head(next_attempt_at=NOW + 7200), paused=False, paused_reason=None,
                       now=NOW).text == "first try in 2 h"


def test_a_head_being_sent():
    assert hold_reason(Head(status="delivering"), paused=False, paused_reason=None, now=NOW) == held_back.HoldReason(
        SENDING, "being sent")
    again = Head(status="delivering", attempt_count=2, last_status_code=500)
    assert hold_reason(again, paused=False, paused_reason=None, now=NOW).text == "being sent (attempt 3)"
    # Pausing lets a delivery being sent finish: it is still being sent.
    assert hold_reason(again, paused=True, paused_reason="maintenance", now=NOW).kind == SENDING


def test_a_paused_configuration_holds_the_head_and_says_why_and_what_happened_before():
    assert hold_reason(Head(status="held"), paused=True, paused_reason="maintenance", now=NOW) == held_back.HoldReason(
        PAUSED, "paused configuration (maintenance)")
    assert hold_reason(Head(status="held"), paused=True, paused_reason=None, now=NOW).text == "paused configuration"
    failed_before = Head(status="held", attempt_count=3, last_status_code=502)
    assert hold_reason(failed_before, paused=True, paused_reason="", now=NOW).text == (
        "paused configuration; before: 3 attempts failed, last answer HTTP 502")


def test_queued_deliveries_without_a_head_are_stuck():
    reason = hold_reason(None, paused=False, paused_reason=None, now=NOW)
    assert reason.kind == STUCK and "nothing ahead" in reason.text


@pytest.mark.parametrize(("seconds", "said"), [
    (0, "1 s"), (1, "1 s"), (59.2, "1 min"), (60, "1 min"), (61, "1 min 1 s"), (3599, "59 min 59 s"),
    (3600, "1 h"), (3660, "1 h 1 min"), (3601, "1 h"), (86400, "1 d"), (90061, "1 d 1 h"),
])
def test_spoken_durations_keep_the_two_largest_units(seconds, said):
    assert spoken_duration(seconds) == said


def test_last_answer():
    assert last_answer(429, None) == "last answer HTTP 429"
    assert last_answer(None, "connection: refused") == "no answer (connection: refused)"
    assert last_answer(None, None) == "no answer"
