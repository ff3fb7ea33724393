"""How events merge into the inbox: pure functions, no I/O.

Events can arrive out of order (a sender retries one delivery while the next
one goes through), so the state of a message must not depend on arrival
order. Each rule below picks a winner by a total order, which makes merging
commutative, associative and idempotent: any permutation of a message's
events gives the same final state.

Message status, lowest to highest::

    Sending  <  any unknown status  <  Failed  <  Success

- ``Sending`` is where every message a user sends starts.
- An unknown status (the publisher adds values without notice) is kept and
  shown as it is; it beats ``Sending``, which it can only follow, but never a
  final status. Between two unknown values the greater string wins, an
  arbitrary but stable choice.
- ``Failed`` and ``Success`` are final: nothing earlier moves a message back.
  A failed message that is retried (``POST /v2/messages/{id}/retry``) may still
  succeed, and nothing that succeeded fails afterwards, so ``Success`` wins.

The winning snapshot (all the message's fields, unknown ones included) is the
one with the highest status; among equal statuses a deleted snapshot, then a
``message_updated`` over a ``message_created``, then the greater canonical
JSON. ``is_deleted`` sticks: once any event says deleted, the message is
deleted, whatever the winning snapshot says.

A conversation shows the snapshot whose ``last_message`` is the newest (the
conversation's own clock); among equal ones, the event applied last (log order,
or sequence order where events carry one: ``sequencing``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from tidings.contract.dates import format_date, parse_date

SENDING = "Sending"
FAILED = "Failed"
SUCCESS = "Success"
FINAL_STATUSES = frozenset({FAILED, SUCCESS})

_KNOWN_RANKS = {SENDING: 0, FAILED: 2, SUCCESS: 3}
_UNKNOWN_RANK = 1
MESSAGE_UPDATED = "message_updated"


def status_rank(status: str) -> tuple[int, str]:
    """Where a status stands in the order above; unknown values rank among themselves by value."""
    rank = _KNOWN_RANKS.get(status)
    if rank is None:
        return (_UNKNOWN_RANK, status)
    return (rank, "")


def merged_status(current: str, incoming: str) -> str:
    """The status a message shows after ``incoming`` meets ``current``."""
    return max(current, incoming, key=status_rank)


@dataclass(frozen=True)
class MessageState:
    """A message as the inbox holds it: the winning snapshot and the sticky deletion."""

    snapshot: dict[str, Any]  # the message's fields as one event carried them
    event_type: str  # the type of the event that carried the snapshot
    is_deleted: bool

    @classmethod
    def from_event(cls, event_type: str, message: dict[str, Any]) -> MessageState:
        return cls(snapshot=message, event_type=event_type, is_deleted=message.get("is_deleted") is True)

    @property
    def status(self) -> str:
        return str(self.snapshot.get("status", ""))


def snapshot_precedence(snapshot: dict[str, Any], event_type: str) -> tuple[Any, ...]:
    """The total order in which message snapshots win (see the module's docstring)."""
    return (
        status_rank(str(snapshot.get("status", ""))),
        snapshot.get("is_deleted") is True,
        event_type == MESSAGE_UPDATED,
        orjson.dumps(snapshot, option=orjson.OPT_SORT_KEYS),
        event_type,  # the same snapshot from two event types: still a total order
    )


def merge_message(current: MessageState | None, incoming: MessageState) -> MessageState:
    """The message's state once ``incoming`` is applied to ``current`` (``None``: first seen)."""
    if current is None:
        return incoming
    if snapshot_precedence(incoming.snapshot, incoming.event_type) > snapshot_precedence(
        current.snapshot, current.event_type
    ):
        winner = incoming
    else:
        winner = current
    return MessageState(winner.snapshot, winner.event_type, current.is_deleted or incoming.is_deleted)


def sortable_date(value: Any) -> str:
    """A date as the contract spells it in UTC, which sorts as time; unreadable ones as they are."""
    try:
        return format_date(parse_date(value))
    except (ValueError, TypeError):
        return str(value or "")


def conversation_precedence(snapshot: dict[str, Any], event_id: int) -> tuple[Any, ...]:
    """The order in which conversation snapshots win: newest last message, then last received.

    A snapshot without a last message loses to one with.
    """
    last = snapshot.get("last_message")
    if not isinstance(last, dict):
        last = {}
    last_id = last.get("id")
    return (sortable_date(last.get("date")) if last else "", last_id if isinstance(last_id, int) else 0, event_id)


def conversation_wins(
    current_snapshot: dict[str, Any] | None, current_event_id: int, incoming: dict[str, Any], incoming_event_id: int
) -> bool:
    """Whether ``incoming`` replaces the conversation snapshot the inbox holds."""
    if current_snapshot is None:
        return True
    return conversation_precedence(incoming, incoming_event_id) > conversation_precedence(
        current_snapshot, current_event_id
    )
