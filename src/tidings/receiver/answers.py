"""What the receiver answers a sender: a status, a small JSON body, a few headers."""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


def _answer(status: int, document: dict, headers: tuple[tuple[str, str], ...] = ()) -> Answer:
    return Answer(status, orjson.dumps(document), headers)


STORED = _answer(200, {"status": "stored"})
QUARANTINED = _answer(200, {"status": "quarantined"})
# The sender retries a 5xx; Retry-After tells it not to hammer a store that is behind.
BUSY = _answer(503, {"error": "the store is behind; retry later"}, (("retry-after", "1"),))


def unauthorized(reason: str) -> Answer:
    return _answer(401, {"error": reason})


def not_an_event(reason: str) -> Answer:
    return _answer(400, {"error": f"not an event under the contract: {reason}"})


def foreign_org(org_id: int | None) -> Answer:
    """An authentic event of an organization this receiver does not serve (``tenancy``)."""
    if org_id is None:
        return _answer(403, {"error": "the event names no organization this receiver can read; it serves pinned ones"})
    return _answer(403, {"error": f"this receiver does not serve organization {org_id}"})
