"""A circuit breaker per endpoint: after a run of timeouts and connection
errors, requests to that endpoint stop for a while, so that a dead endpoint
costs no connections, no waiting and no attempt timeouts.

closed --(``failure_threshold`` failures in a row)--> open
open --(``cooldown`` elapsed)--> half-open: one trial request at a time
half-open --(the trial is answered)--> closed
half-open --(the trial fails)--> open again, for twice as long (up to ``max_cooldown``)

Only the absence of an answer counts as a failure: an endpoint that answers
500 quickly is alive and slows nobody; its deliveries follow the retry
schedule. A pure state machine: callers pass the time.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["CircuitBreaker", "CircuitPolicy", "CircuitState"]


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    failure_threshold: int = 5  # failures in a row that open the circuit
    cooldown: float = 5.0  # seconds the circuit stays open the first time
    max_cooldown: float = 300.0


class CircuitBreaker:
    __slots__ = ("policy", "state", "failures", "opened_until", "_cooldown", "_trial_in_flight")

    def __init__(self, policy: CircuitPolicy | None = None) -> None:
        self.policy = policy or CircuitPolicy()
        self.state = CircuitState.CLOSED
        self.failures = 0  # in a row
        self.opened_until = 0.0
        self._cooldown = self.policy.cooldown
        self._trial_in_flight = False

    def allows(self, now: float) -> bool:
        """May a request be sent now? In half-open state, ``True`` reserves the one trial."""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if now < self.opened_until:
                return False
            self.state = CircuitState.HALF_OPEN
            self._trial_in_flight = False
        if self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_answer(self) -> None:
        """The endpoint answered (any HTTP status): it is alive."""
        self.state = CircuitState.CLOSED
        self.failures = 0
        self._cooldown = self.policy.cooldown
        self._trial_in_flight = False

    def record_failure(self, now: float) -> None:
        """A timeout or a connection error."""
        self.failures += 1
        if self.state is CircuitState.HALF_OPEN:
            self._open(now, self._cooldown * 2)
        elif self.state is CircuitState.CLOSED and self.failures >= self.policy.failure_threshold:
            self._open(now, self.policy.cooldown)
        # Failures of requests sent before the circuit opened change nothing more.

    def release_trial(self) -> None:
        """The trial request was not made after all (cancelled); let another one go."""
        self._trial_in_flight = False

    def _open(self, now: float, cooldown: float) -> None:
        self._cooldown = min(cooldown, self.policy.max_cooldown)
        self.state = CircuitState.OPEN
        self.opened_until = now + self._cooldown
        self._trial_in_flight = False
