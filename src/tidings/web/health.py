"""A webhook configuration's health, from its recent attempts: pure functions, no I/O.

The dashboard reads the attempts of a recent window (``deliveries.reads``)
and these functions turn them into the figures it shows: the share of
attempts that succeeded, the median and 99th percentile of their duration,
the last error, and whether the endpoint's circuit is open.

The circuit state is derived here, from the newest attempts, unless the
dispatcher reports its own: by the dispatcher's rule
(``tidings.platform.circuit``), only the absence of an answer (a timeout, a
connection error) counts, so an endpoint whose last ``CIRCUIT_FAILURE_RUN``
attempts all went unanswered is shown as open; one that answers 500 is alive
and its circuit closed. The page says which of the two it shows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

CIRCUIT_FAILURE_RUN = 5
CLOSED = "closed"
OPEN = "open"


@dataclass(frozen=True)
class AttemptOutcome:
    """What the health figures need of one attempt."""

    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None = None

    @property
    def succeeded(self) -> bool:
        return attempt_succeeded(self.status_code, self.error)

    @property
    def answered(self) -> bool:
        """The endpoint answered with some HTTP status: it is alive, whatever it said."""
        return self.status_code is not None


@dataclass(frozen=True)
class LastError:
    at: datetime
    text: str


@dataclass(frozen=True)
class Health:
    attempts: int
    succeeded: int
    p50_ms: float | None
    p99_ms: float | None
    last_error: LastError | None
    circuit: str
    circuit_derived: bool  # True: from the attempts here, not the dispatcher's own state

    @property
    def success_rate(self) -> float | None:
        return None if self.attempts == 0 else self.succeeded / self.attempts


def attempt_succeeded(status_code: int | None, error: str | None) -> bool:
    """Any 2xx answer without a transport error counts as delivered (CONTRACT.md section 2)."""
    return error is None and status_code is not None and 200 <= status_code < 300


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The ``fraction`` percentile (0..1) by the nearest-rank method; ``None`` for no values.

    >>> percentile([10, 20, 30, 40], 0.5)
    20
    >>> percentile([10, 20, 30, 40], 0.99)
    40
    """
    if not values:
        return None
    if not 0 <= fraction <= 1:
        raise ValueError("a percentile fraction is between 0 and 1")
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Latency:
    """How long deliveries took, from their event's creation to their delivery."""

    deliveries: int
    p50_ms: float | None
    p99_ms: float | None


def latency_of(created_and_delivered: Sequence[tuple[datetime, datetime]]) -> Latency:
    """The latency figures of delivered deliveries, each ``(created_at, finished_at)``.

    >>> from datetime import timedelta
    >>> start = datetime(2026, 1, 1)
    >>> latency_of([(start, start + timedelta(milliseconds=ms)) for ms in (4, 8, 100)])
    Latency(deliveries=3, p50_ms=8.0, p99_ms=100.0)
    """
    durations = [(delivered - created).total_seconds() * 1000.0 for created, delivered in created_and_delivered]
    return Latency(len(durations), percentile(durations, 0.50), percentile(durations, 0.99))


def error_text(outcome: AttemptOutcome) -> str:
    """One line that says how an attempt failed."""
    if outcome.error:
        return outcome.error
    excerpt = (outcome.response_excerpt or "").strip().replace("\n", " ")
    if len(excerpt) > 120:
        excerpt = excerpt[:119] + "…"
    return f"HTTP {outcome.status_code}" + (f": {excerpt}" if excerpt else "")


def derived_circuit(newest_first: Sequence[AttemptOutcome], failure_run: int = CIRCUIT_FAILURE_RUN) -> str:
    """Open when none of the newest ``failure_run`` attempts got an answer; closed
    when one of them did, or when there were no attempts at all."""
    recent = newest_first[:failure_run]
    if len(recent) < failure_run or any(outcome.answered for outcome in recent):
        return CLOSED
    return OPEN


def health_of(newest_first: Sequence[AttemptOutcome], dispatcher_circuit: str | None = None) -> Health:
    """The health figures of one configuration's attempts, newest first."""
    durations = [outcome.duration_ms for outcome in newest_first]
    failed = next((outcome for outcome in newest_first if not outcome.succeeded), None)
    return Health(
        attempts=len(newest_first),
        succeeded=sum(1 for outcome in newest_first if outcome.succeeded),
        p50_ms=percentile(durations, 0.50),
        p99_ms=percentile(durations, 0.99),
        last_error=None if failed is None else LastError(failed.started_at, error_text(failed)),
        circuit=dispatcher_circuit or derived_circuit(newest_first),
        circuit_derived=dispatcher_circuit is None,
    )
