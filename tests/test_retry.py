"""The retry decision: every status class, the budget, the backoff and Retry-After."""

from __future__ import annotations

import dataclasses
from email.utils import format_datetime
from datetime import UTC, datetime

import pytest

from tidings.platform.retry import (
    AttemptResult,
    ErrorKind,
    Outcome,
    RetryPolicy,
    backoff_seconds,
    decide,
    instant_waits,
    parse_retry_after,
)
from tidings.platform.settings import DeliverySettings

POLICY = RetryPolicy(max_retries=5, base=30.0, factor=4.0, jitter=0.1)
NOW = 1_700_000_000.0


def status(code: int, retry_after: str | None = None) -> AttemptResult:
    return AttemptResult(status_code=code, retry_after=retry_after)


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
def test_any_2xx_is_delivered(code):
    assert decide(status(code), 1, POLICY, NOW).outcome is Outcome.DELIVERED


@pytest.mark.parametrize("code", [500, 502, 503, 504, 599, 408, 429])
def test_5xx_408_and_429_are_retried(code):
    decision = decide(status(code), 1, POLICY, NOW, draw=0.5)
    assert decision.outcome is Outcome.RETRY and decision.retry_at == NOW + 30.0


@pytest.mark.parametrize("code", [400, 401, 403, 404, 405, 409, 413, 422, 451])
def test_other_4xx_are_final(code):
    decision = decide(status(code), 1, POLICY, NOW)
    assert decision.outcome is Outcome.FAILED and not decision.pause_configuration


def test_410_is_final_and_pauses_the_configuration():
    decision = decide(status(410), 1, POLICY, NOW)
    assert decision.outcome is Outcome.FAILED and decision.pause_configuration


@pytest.mark.parametrize("code", [100, 301, 302, 304, 307])
def test_redirects_and_other_statuses_are_final(code):
    assert decide(status(code), 1, POLICY, NOW).outcome is Outcome.FAILED


@pytest.mark.parametrize("kind", [ErrorKind.TIMEOUT, ErrorKind.CONNECTION, ErrorKind.CIRCUIT_OPEN])
def test_no_answer_is_retried_like_a_5xx(kind):
    assert decide(AttemptResult(error_kind=kind), 2, POLICY, NOW).outcome is Outcome.RETRY


def test_a_refused_target_is_final():
    assert decide(AttemptResult(error_kind=ErrorKind.REFUSED_TARGET), 1, POLICY, NOW).outcome is Outcome.FAILED


@pytest.mark.parametrize("max_retries", [0, 1, 5])
def test_the_budget_is_one_attempt_plus_max_retries(max_retries):
    policy = RetryPolicy(max_retries=max_retries, base=1.0, factor=2.0)
    outcomes = [decide(status(500), number, policy, NOW).outcome for number in range(1, max_retries + 2)]
    assert outcomes == [Outcome.RETRY] * max_retries + [Outcome.FAILED]


def test_backoff_grows_by_the_factor_within_the_jitter_band():
    assert [backoff_seconds(n, POLICY, draw=0.5) for n in range(1, 6)] == [30, 120, 480, 1920, 7680]
    assert backoff_seconds(1, POLICY, draw=0.0) == pytest.approx(27.0)
    assert backoff_seconds(1, POLICY, draw=0.999999) == pytest.approx(33.0, abs=1e-3)
    assert backoff_seconds(10_000, POLICY) == pytest.approx(POLICY.max_wait)  # no overflow


def test_retry_after_in_seconds_or_as_a_date_pushes_the_retry_later_never_earlier():
    later = decide(status(429, "100"), 1, POLICY, NOW, draw=0.5)
    assert later.retry_at == NOW + 100
    sooner = decide(status(429, "1"), 1, POLICY, NOW, draw=0.5)
    assert sooner.retry_at == NOW + 30  # the backoff is longer than what was asked
    date = format_datetime(datetime.fromtimestamp(NOW + 600, UTC), usegmt=True)
    assert decide(status(503, date), 1, POLICY, NOW, draw=0.5).retry_at == pytest.approx(NOW + 600)
    capped = decide(status(429, str(10**9)), 1, POLICY, NOW, draw=0.5)
    assert capped.retry_at == NOW + POLICY.max_retry_after


@pytest.mark.parametrize("value,expected", [("5", 5.0), (" 7 ", 7.0), ("soon", None), ("", None), (None, None),
                                            ("-3", None)])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, NOW) == expected


def test_instant_waits_makes_every_wait_zero_and_is_undone():
    with instant_waits():
        assert decide(status(429, "100"), 1, POLICY, NOW).retry_at == NOW
        assert backoff_seconds(3, POLICY) == 0.0
    assert backoff_seconds(1, POLICY, draw=0.5) == 30.0


def test_policy_from_settings():
    settings = DeliverySettings(max_retries=2, retry_base=1.5, retry_factor=3.0, retry_jitter=0.0)
    assert RetryPolicy.from_settings(settings) == RetryPolicy(max_retries=2, base=1.5, factor=3.0, jitter=0.0)


# ---------------------------------------------------------------- reasons, bounds and defaults


@pytest.mark.parametrize("code,reason", [
    (400, "answered 400: a client error is final"), (404, "answered 404: a client error is final"),
    (499, "answered 499: a client error is final"),
    (300, "answered 300: redirects are not followed"), (302, "answered 302: redirects are not followed"),
    (399, "answered 399: redirects are not followed"),
    (100, "answered 100, which is not a final answer"), (199, "answered 199, which is not a final answer"),
])
def test_each_final_answer_says_why(code, reason):
    decision = decide(status(code), 1, POLICY, NOW)
    assert decision.outcome is Outcome.FAILED and decision.reason == reason


@pytest.mark.parametrize("result,why", [
    (AttemptResult(error_kind=ErrorKind.TIMEOUT), "timeout"), (AttemptResult(), "connection"),
    (AttemptResult(error_kind=ErrorKind.CIRCUIT_OPEN), "circuit_open"), (status(503), "answered 503"),
])
def test_a_retry_says_what_went_wrong_and_when_it_comes(result, why):
    decision = decide(result, 2, POLICY, NOW, draw=0.5)
    assert decision.reason == f"{why}; retry 2 in 120 s" and decision.retry_at == NOW + 120


def test_a_wait_is_never_negative_nor_raised_to_a_floor():
    assert backoff_seconds(1, RetryPolicy(base=10.0, jitter=1.5), draw=0.0) == 0.0  # jitter wider than the wait
    assert backoff_seconds(1, RetryPolicy(base=0.25, jitter=0.0)) == 0.25


def test_the_longest_computed_wait_is_a_week_and_retry_after_is_capped_at_a_day():
    assert backoff_seconds(40, RetryPolicy(base=30.0, factor=4.0, jitter=0.0)) == 7 * 24 * 3600.0
    asked_two_days = decide(status(503, str(2 * 24 * 3600)), 1, RetryPolicy(), NOW, draw=0.5)
    assert asked_two_days.retry_at == NOW + 24 * 3600.0


def test_the_default_policy_is_the_contracts():
    assert RetryPolicy() == RetryPolicy(max_retries=5, base=30.0, factor=4.0, jitter=0.1,
                                        max_retry_after=24 * 3600.0, max_wait=7 * 24 * 3600.0)


def test_a_date_in_the_past_means_now_and_a_date_without_a_zone_is_unreadable():
    past = format_datetime(datetime.fromtimestamp(NOW - 100, UTC), usegmt=True)
    assert parse_retry_after(past, NOW) == 0.0
    future = format_datetime(datetime.fromtimestamp(NOW + 600, UTC), usegmt=True)
    assert parse_retry_after(future, NOW) == pytest.approx(600.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 -0000", NOW) is None  # -0000: no known zone


@pytest.mark.parametrize("value", [POLICY, AttemptResult(status_code=500), decide(status(200), 1, POLICY, NOW)])
def test_policies_results_and_decisions_cannot_change(value):
    """Decisions are shared (the dispatcher keeps one per 2xx status), so none may change under another's feet."""
    field_name = next(iter(dataclasses.fields(value))).name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(value, field_name, None)


def test_an_attempt_beyond_a_budget_lowered_meanwhile_is_final():
    """A delivery on its 5th attempt when the operator lowered max_retries to 2 stops now, not never."""
    decision = decide(status(500), 5, RetryPolicy(max_retries=2, base=1.0), NOW)
    assert decision.outcome is Outcome.FAILED and decision.reason == "answered 500; gave up after 5 attempts"
