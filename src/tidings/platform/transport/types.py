"""What every transport shares: the ``Answer`` of one request and the
``Transport`` interface between the dispatcher (or the tryout) and the network."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from tidings import __version__
from tidings.platform.retry import ErrorKind

__all__ = ["EXCERPT_CHARACTERS", "USER_AGENT", "Answer", "Transport", "describe", "excerpt"]

EXCERPT_CHARACTERS = 1000  # of an answer's body, kept in the attempt's record
USER_AGENT = f"tidings-webhooks/{__version__}"


@dataclass(frozen=True, slots=True)
class Answer:
    """How one attempt went: an HTTP status, or an error without one."""

    started_at: float  # epoch seconds
    duration_ms: float
    status_code: int | None = None
    excerpt: str | None = None  # the start of the answer's body
    retry_after: str | None = None
    error_kind: ErrorKind | None = None
    error: str | None = None


class Transport(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """Send one request; every failure is reported in the ``Answer``, never raised."""

    async def close(self) -> None: ...


def excerpt(data: bytes) -> str | None:
    """The start of an answer's body as text, for the attempt's record."""
    if not data:
        return None
    return data.decode("utf-8", errors="replace")[:EXCERPT_CHARACTERS]


def describe(exc: BaseException) -> str:
    """An exception in one short line, for the attempt's record."""
    text = str(exc) or type(exc).__name__
    return text[:500]
