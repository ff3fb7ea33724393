"""Why a conversation's deliveries are held back (pure: no I/O).

With ordered delivery, a conversation's deliveries go one at a time: the
head (``pending``, ``delivering`` or ``held``) goes first, the later ones
wait ``queued`` (but for the head's follower, claimed with it by the same
worker and sent after it: ``tidings.platform.deliveries``).
The dashboard shows each conversation that has queued deliveries and says,
from its head alone, what the rest wait for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

# Kinds of reasons; the dashboard colours them.
RETRYING = "retrying"  # the head failed and waits for its next try
WAITING = "waiting"  # the head has not been tried yet
SENDING = "sending"  # a worker is sending the head now
PAUSED = "paused"  # the configuration is paused: the head is held
STUCK = "stuck"  # no head at all: nothing moves until a delivery is re-sent or recovered


class HeadDelivery(Protocol):
    """What the reason reads of a head delivery (a row of ``deliveries.reads.conversation_heads``)."""

    status: str
    attempt_count: int
    next_attempt_at: float
    last_status_code: int | None
    last_error: str | None


@dataclass(frozen=True)
class HoldReason:
    kind: str
    text: str


def spoken_duration(seconds: float) -> str:
    """A length of time as people say it, to the largest two units.

    >>> [spoken_duration(s) for s in (0.2, 12, 75, 3600 * 5 + 120, 86400 * 3 + 3600 * 2)]
    ['1 s', '12 s', '1 min 15 s', '5 h 2 min', '3 d 2 h']
    """
    whole = max(1, math.ceil(seconds - 1e-9))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    units = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    first = next(index for index, (value, _) in enumerate(units) if value)
    shown = [f"{value} {unit}" for value, unit in units[first:first + 2] if value]
    return " ".join(shown)


def last_answer(status_code: int | None, error: str | None) -> str:
    """What the head's last attempt got, in a few words.

    The dispatcher's error text begins with the cause and may go on with the
    retry it planned then (``"timeout; retry 2 in 3.1 s"``): only the cause is
    kept, the plan is stale by the time anyone reads it.

    >>> last_answer(500, "answered 500; retry 4 in 12 s")
    'last answer HTTP 500'
    >>> last_answer(None, "timeout; retry 2 in 3.1 s")
    'no answer (timeout)'
    """
    if status_code is not None:
        return f"last answer HTTP {status_code}"
    cause = (error or "").split(";", 1)[0].strip()
    return f"no answer ({cause})" if cause else "no answer"


def _next_try(next_attempt_at: float, now: float, *, first: bool) -> str:
    what = "first try" if first else "next try"
    wait = next_attempt_at - now
    if wait > 0:
        return f"{what} in {spoken_duration(wait)}"
    if wait > -1:
        return f"{what} due now"
    return f"{what} due {spoken_duration(-wait)} ago"


def hold_reason(head: HeadDelivery | None, *, paused: bool, paused_reason: str | None, now: float) -> HoldReason:
    """Why the queued deliveries behind ``head`` wait, at Unix time ``now``.

    ``head`` is ``None`` when the conversation has queued deliveries and none
    ahead of them: they wait for a re-send, a recover or a change of ordering.
    """
    if head is None:
        return HoldReason(STUCK, "nothing ahead of them is due or being sent")
    failed = head.attempt_count
    failures = f"{failed} attempt{'s' if failed != 1 else ''} failed"
    if head.status == "held" or (paused and head.status != "delivering"):
        text = "paused configuration"
        if paused_reason:
            text += f" ({paused_reason})"
        if failed:
            text += f"; before: {failures}, {last_answer(head.last_status_code, head.last_error)}"
        return HoldReason(PAUSED, text)
    if head.status == "delivering":
        return HoldReason(SENDING, "being sent" + (f" (attempt {failed + 1})" if failed else ""))
    if failed:
        answer = last_answer(head.last_status_code, head.last_error)
        next_try = _next_try(head.next_attempt_at, now, first=False)
        return HoldReason(RETRYING, f"retrying: {failures}, {answer}, {next_try}")
    return HoldReason(WAITING, _next_try(head.next_attempt_at, now, first=True))
