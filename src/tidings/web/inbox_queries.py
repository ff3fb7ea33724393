"""What the inbox pages read, in one place.

Conversations and messages come through the receiver's own read functions
(``tidings.receiver.inbox``), so the page and the JSON read API show the
same merged state. The few statements of its own here serve the live
updates and the counts in the navigation. The receiver's store is
synchronous: these functions take a connection of ``EventLog.engine`` and
run in a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from tidings.receiver import inbox as receiver_inbox
from tidings.receiver.handler_runner import FailureRow
from tidings.store.receiver_tables import (
    receiver_events,
    receiver_handler_failures,
    receiver_quarantine,
)

LIST_SIZE = 200
THREAD_SIZE = 500
TOUCHED_LIMIT = 200  # conversations or messages sent to one live page in one poll

Conversation = dict[str, Any]  # tidings.receiver.inbox.conversation_view
Message = dict[str, Any]  # tidings.receiver.inbox.message_view


def conversations(conn: Connection, limit: int = LIST_SIZE) -> list[Conversation]:
    return receiver_inbox.list_conversations(conn, limit)


def conversation(conn: Connection, conversation_id: int) -> Conversation | None:
    return receiver_inbox.get_conversation(conn, conversation_id)


def thread(conn: Connection, conversation_id: int, limit: int = THREAD_SIZE) -> list[Message]:
    return receiver_inbox.list_messages(conn, conversation_id, limit)


def conversations_by_id(conn: Connection, ids: Iterable[int]) -> list[Conversation]:
    found = (receiver_inbox.get_conversation(conn, conversation_id) for conversation_id in sorted(set(ids)))
    return [view for view in found if view is not None]


def messages_by_id(conn: Connection, ids: Iterable[int]) -> list[Message]:
    found = (receiver_inbox.get_message(conn, message_id) for message_id in sorted(set(ids)))
    return [view for view in found if view is not None]


def counts(conn: Connection) -> dict[str, int]:
    """How many bodies wait in the quarantine and how many handler runs are dead (for the navigation)."""
    quarantined = conn.execute(select(func.count()).select_from(receiver_quarantine)).scalar_one()
    dead = conn.execute(
        select(func.count()).select_from(receiver_handler_failures)
        .where(receiver_handler_failures.c.dead_at.is_not(None))
    ).scalar_one()
    return {"quarantine": quarantined, "dead_letters": dead}


@dataclass(frozen=True)
class DeadLetter:
    failure: FailureRow
    event_type: str | None
    conversation_id: int | None
    message_id: int | None


def with_events(conn: Connection, failures: Sequence[FailureRow]) -> list[DeadLetter]:
    """Dead handler runs with what their event was about."""
    ids = sorted({failure.event_id for failure in failures})
    rows = {
        row.id: row
        for row in conn.execute(
            select(receiver_events.c.id, receiver_events.c.event_type, receiver_events.c.conversation_id,
                   receiver_events.c.message_id).where(receiver_events.c.id.in_(ids))
        ).all()
    } if ids else {}
    letters = []
    for failure in failures:
        event = rows.get(failure.event_id)
        letters.append(DeadLetter(failure, event.event_type if event else None,
                                  event.conversation_id if event else None, event.message_id if event else None))
    return letters


# ---------------------------------------------------------------- live updates


def projected_position(conn: Connection) -> int:
    """How far the inbox has been projected from the log: a live page shows what is up to here."""
    return receiver_inbox.read_cursor(conn, receiver_inbox.INBOX_CURSOR)


@dataclass(frozen=True)
class Touched:
    """What the events between two log positions were about."""

    conversation_ids: Sequence[int]
    message_ids: Sequence[int]


def touched_between(conn: Connection, after: int, up_to: int, conversation_id: int | None = None) -> Touched:
    """The conversations and messages of the log's events in ``(after, up_to]``: a range of its primary key."""
    query = (
        select(receiver_events.c.conversation_id, receiver_events.c.message_id)
        .where(receiver_events.c.id > after, receiver_events.c.id <= up_to)
        .order_by(receiver_events.c.id.desc())
    )
    if conversation_id is not None:
        query = query.where(receiver_events.c.conversation_id == conversation_id)
    rows = conn.execute(query.limit(5000)).all()
    conversation_ids = {row.conversation_id for row in rows if row.conversation_id is not None}
    message_ids = {row.message_id for row in rows if row.message_id is not None}
    return Touched(sorted(conversation_ids)[-TOUCHED_LIMIT:], sorted(message_ids)[-TOUCHED_LIMIT:])
