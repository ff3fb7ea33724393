"""The circuit breaker's states, with the time given by the test."""

from __future__ import annotations

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
