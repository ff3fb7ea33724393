"""The circuit breaker's states, with the time given by the test."""

from __future__ import annotations

import dataclasses

import pytest

from tidings.platform.circuit import CircuitBreaker, CircuitPolicy, CircuitState

POLICY = CircuitPolicy(failure_threshold=3, cooldown=10.0, max_cooldown=25.0)


def opened(now: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker(POLICY)
    for _ in range(3):
        breaker.record_failure(now)
    return breaker


def test_it_opens_after_the_threshold_of_failures_in_a_row():
    breaker = CircuitBreaker(POLICY)
    breaker.record_failure(0)
    breaker.record_failure(0)
    breaker.record_answer()  # an answer resets the run
    breaker.record_failure(0)
    breaker.record_failure(0)
    assert breaker.state is CircuitState.CLOSED and breaker.allows(0)
    breaker.record_failure(0)
    assert breaker.state is CircuitState.OPEN and not breaker.allows(9.9)


def test_after_the_cooldown_one_trial_at_a_time_and_an_answer_closes_it():
    breaker = opened()
    assert breaker.allows(10.0) and breaker.state is CircuitState.HALF_OPEN
    assert not breaker.allows(10.0)  # the trial is in flight
    breaker.record_answer()
    assert breaker.state is CircuitState.CLOSED and breaker.allows(10.1) and breaker.allows(10.1)


def test_a_failed_trial_reopens_for_longer_up_to_the_maximum():
    breaker = opened()
    assert breaker.allows(10.0)
    breaker.record_failure(10.0)
    assert breaker.state is CircuitState.OPEN and breaker.opened_until == 30.0
    assert not breaker.allows(29.0) and breaker.allows(30.0)
    breaker.record_failure(30.0)
    assert breaker.opened_until == 55.0  # 40 capped at 25


def test_a_released_trial_lets_another_request_try():
    breaker = opened()
    assert breaker.allows(10.0)
    breaker.release_trial()
    assert breaker.allows(10.0)


def test_failures_while_open_change_nothing():
    breaker = opened()
    for _ in range(10):
        breaker.record_failure(5.0)
    assert breaker.opened_until == 10.0


def test_a_new_breaker_stays_closed_until_the_threshold():
    breaker = CircuitBreaker(POLICY)
    breaker.record_failure(0)
    breaker.record_failure(0)
    assert breaker.state is CircuitState.CLOSED and breaker.failures == 2 and breaker.allows(0)
    breaker.record_failure(0)
    assert breaker.state is CircuitState.OPEN


def test_a_request_after_the_cooldown_not_only_at_its_end_gets_the_trial():
    breaker = opened()
    assert not breaker.allows(9.99)
    assert breaker.allows(17.5) and breaker.state is CircuitState.HALF_OPEN


def test_a_threshold_beyond_small_numbers_opens_the_circuit_too():
    breaker = CircuitBreaker(CircuitPolicy(failure_threshold=300, cooldown=1.0))
    for _ in range(299):
        breaker.record_failure(0)
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure(0)
    assert breaker.state is CircuitState.OPEN


def test_the_default_policy_opens_after_5_failures_for_5_seconds_up_to_300():
    assert (CircuitPolicy().failure_threshold, CircuitPolicy().cooldown, CircuitPolicy().max_cooldown) == (5, 5.0, 300.0)


def test_a_policy_shared_by_breakers_cannot_be_changed_through_one_of_them():
    breaker = CircuitBreaker(POLICY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        breaker.policy.failure_threshold = 1
