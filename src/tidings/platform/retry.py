"""What happens after an attempt: delivered, tried again at some time, or
given up. Pure functions, no I/O (CONTRACT.md section 2).

- 2xx: delivered.
- 5xx, a timeout, a connection error, and 408 / 429: tried again, up to
  ``max_retries`` times after the first attempt, after ``base * factor**(n-1)``
  seconds (+/- ``jitter``), or later if the answer's ``Retry-After`` says so.
- Any other 4xx: given up at once. ``410 Gone`` also pauses the
  configuration, so that nothing more is sent until its owner resumes it.
- A redirect (3xx) or another unexpected status: given up; redirects are not
  followed, since the target was checked and a redirect could lead anywhere.
- A target refused by the address policy: given up.
- An endpoint whose circuit is open: tried again later, like a connection
  error, without a request.

``instant_waits()`` is the one switch that makes every wait zero in tests.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum

__all__ = [
    "AttemptResult",
    "Decision",
    "ErrorKind",
    "Outcome",
    "RetryPolicy",
    "backoff_seconds",
    "decide",
    "instant_waits",
    "parse_retry_after",
]

GONE = 410
RETRIED_CLIENT_ERRORS = frozenset({408, 429})


class ErrorKind(StrEnum):
    """Why an attempt got no HTTP answer."""

    TIMEOUT = "timeout"  # no complete answer within the attempt timeout
    CONNECTION = "connection"  # refused, reset, DNS failure, broken answer
    REFUSED_TARGET = "refused_target"  # the address policy refused the target
    CIRCUIT_OPEN = "circuit_open"  # the endpoint failed recently; no request was made


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 5  # attempts after the first
    base: float = 30.0  # seconds before the first retry
    factor: float = 4.0  # each later wait is this many times longer
    jitter: float = 0.1  # +/- this fraction of each wait
    max_retry_after: float = 24 * 3600.0  # an endpoint may not push a retry further than this
    max_wait: float = 7 * 24 * 3600.0  # no computed wait is longer

    @classmethod
    def from_settings(cls, settings) -> RetryPolicy:
        """From a ``DeliverySettings``."""
        return cls(max_retries=settings.max_retries, base=settings.retry_base,
                   factor=settings.retry_factor, jitter=settings.retry_jitter)


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt came to: an HTTP status, or an error without one."""

    status_code: int | None = None
    error_kind: ErrorKind | None = None
    retry_after: str | None = None  # the answer's Retry-After header, as sent


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    retry_at: float | None = None  # epoch seconds, for RETRY
    pause_configuration: bool = False
    reason: str = ""


_instant = False


@contextlib.contextmanager
def instant_waits(enabled: bool = True) -> Iterator[None]:
    """Within this block every wait is zero (tests of the logic around retries)."""
    global _instant
    previous, _instant = _instant, enabled
    try:
        yield
    finally:
        _instant = previous


def backoff_seconds(retry_number: int, policy: RetryPolicy, draw: float = 0.5) -> float:
    """The wait before retry ``retry_number`` (1 for the first retry).

    ``draw`` in [0, 1) places the wait within the jitter band: 0.5 is its middle.
    """
    if _instant:
        return 0.0
    try:
        wait = min(policy.base * policy.factor ** (retry_number - 1), policy.max_wait)
    except OverflowError:
        wait = policy.max_wait
    return max(0.0, wait * (1.0 + policy.jitter * (2.0 * draw - 1.0)))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (seconds or an HTTP date); ``None`` if unreadable."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def decide(result: AttemptResult, attempt_number: int, policy: RetryPolicy, now: float,
           draw: float | None = None) -> Decision:
    """What to do after attempt ``attempt_number`` (1 for the first) ended in ``result``.

    ``draw`` in [0, 1) sets the jitter; random when ``None``.
    """
    code = result.status_code
    if code is not None:
        if 200 <= code < 300:
            return Decision(Outcome.DELIVERED, reason=f"answered {code}")
        if code == GONE:
            return Decision(Outcome.FAILED, pause_configuration=True,
                            reason="answered 410 Gone: the configuration is paused until its owner resumes it")
        if 400 <= code < 500 and code not in RETRIED_CLIENT_ERRORS:
            return Decision(Outcome.FAILED, reason=f"answered {code}: a client error is final")
        if 300 <= code < 400:
            return Decision(Outcome.FAILED, reason=f"answered {code}: redirects are not followed")
        if not (code >= 500 or code in RETRIED_CLIENT_ERRORS):
            return Decision(Outcome.FAILED, reason=f"answered {code}, which is not a final answer")
        why = f"answered {code}"
    elif result.error_kind is ErrorKind.REFUSED_TARGET:
        return Decision(Outcome.FAILED, reason="the target address is not allowed")
    else:
        why = str(result.error_kind or ErrorKind.CONNECTION)

    if attempt_number >= 1 + policy.max_retries:
        return Decision(Outcome.FAILED, reason=f"{why}; gave up after {attempt_number} attempts")
    wait = backoff_seconds(attempt_number, policy, random.random() if draw is None else draw)
    asked = parse_retry_after(result.retry_after, now)
    if asked is not None and not _instant:
        wait = max(wait, min(asked, policy.max_retry_after))
    return Decision(Outcome.RETRY, retry_at=now + wait, reason=f"{why}; retry {attempt_number} in {wait:.3g} s")
