"""The inbox, projected from the event log: conversations and their messages.

The projector reads the log after its cursor, merges each message event into
the inbox with the rules of ``inbox_rules`` and moves the cursor, all in one
transaction: a crash replays a batch, and replaying is harmless because
merging is idempotent. It runs after the acknowledgement, never in the
request path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence, Set
from typing import Any

import orjson
from sqlalchemy import Connection, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from tidings.contract import ContentType, ConversationStatus, MessageStatus, MessagingPartner, SenderType
from tidings.receiver.inbox_rules import MessageState, conversation_wins, merge_message, sortable_date
from tidings.receiver.log import EventLog, StoredEvent
from tidings.receiver.sequencing import Arrival, Held, Plan, SequenceKey, holes, plan_batch
from tidings.store.receiver_tables import (
    receiver_cursors,
    receiver_held_events,
    receiver_sequence_gaps,
    receiver_sequence_keys,
    receiver_inbox_conversations,
    receiver_inbox_messages,
)

INBOX_CURSOR = "inbox"
APPLIED_RANK_CURSOR = "inbox-applied"  # how many events the inbox has applied: the order conversations tie-break by
DEFAULT_GAP_WAIT = 30.0  # seconds a hole in a key's sequence is waited on before it is reported

# Open enums of the contract, by the field that carries them.
_MESSAGE_ENUMS = {"content_type": ContentType, "sender_type": SenderType, "status": MessageStatus}
_CONVERSATION_ENUMS = {"status": ConversationStatus, "messaging_partner": MessagingPartner}


def unknown_values(document: dict[str, Any], enums: dict[str, type]) -> list[str]:
    """The fields of ``document`` whose enum value this version does not know."""
    return [
        field
        for field, enum in enums.items()
        if isinstance(document.get(field), str) and document[field] not in enum.known_values
    ]


# ---------------------------------------------------------------- cursors


def read_cursor(conn: Connection, name: str) -> int:
    position = conn.execute(select(receiver_cursors.c.position).where(receiver_cursors.c.name == name)).scalar()
    return position or 0


def write_cursor(conn: Connection, name: str, position: int) -> None:
    _upsert(conn, receiver_cursors, [{"name": name, "position": position}], key="name")


def _upsert(conn: Connection, table, rows: list[dict], key: str = "id") -> None:
    if not rows:
        return
    insert = sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert
    statement = insert(table)
    statement = statement.on_conflict_do_update(
        index_elements=[key], set_={name: statement.excluded[name] for name in rows[0] if name != key}
    )
    conn.execute(statement, rows)


def prepared_upsert(table, rows: list[dict], paramstyle: str, key: str = "id") -> tuple[str, list[tuple]]:
    """``INSERT ... ON CONFLICT (key) DO UPDATE`` for ``rows``, the same SQL on both engines, JSON pre-encoded."""
    if not rows:
        return "", []
    columns = list(rows[0])
    placeholder = "?" if paramstyle == "qmark" else "%s"
    statement = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([placeholder] * len(columns))}) "
        f"ON CONFLICT ({key}) DO UPDATE SET "
        + ", ".join(f"{name} = excluded.{name}" for name in columns if name != key)
    )
    encode = orjson.dumps
    parameters = [
        tuple(encode(row[name]).decode() if name == "snapshot" else row[name] for name in columns) for row in rows
    ]
    return statement, parameters


# ---------------------------------------------------------------- projecting


class InboxProjector:
    """Moves the inbox forward along the log, one batch per step.

    A step reads and merges outside any write transaction (the projector is
    the only writer of the inbox tables: one lease holder per database), then
    writes in a short one, guarded by the cursor it started from: projecting
    inside the request writer's thread, with the contract's models, held
    acknowledgements up, while reading the raw JSON and writing briefly keeps
    the projection off the request path's back (``bench/receive.py``).

    Events that carry a sequence are applied in sequence order per key
    (``sequencing``): one beyond the next in line is held until the hole
    closes, or until the oldest held event of its key has waited ``gap_wait``
    seconds; then the hole is reported and the held events applied anyway.
    """

    def __init__(
        self, log: EventLog, batch_size: int = 500, gap_wait: float = DEFAULT_GAP_WAIT, clock: Callable[[], float] = time.time
    ) -> None:
        self.log = log
        self.batch_size = batch_size
        self.gap_wait = gap_wait
        self.clock = clock

    def step(self, batch_size: int | None = None) -> int:
        """Project the next batch; the number of log events it covered (0: up to date).

        A step with no new event still applies held events whose wait is over.
        """
        now = self.clock()
        with self.log.engine.connect() as conn:
            position = read_cursor(conn, INBOX_CURSOR)
            events = self.log.events_after(position, batch_size or self.batch_size, conn)
            held = read_held(conn)
            if not events and not any(now - h.held_since > self.gap_wait for h in held):
                return 0
            arrivals = [arrival(stored) for stored in events]
            keys = {a.key for a in arrivals if a.key is not None} | {h.key for h in held}
            plan = plan_batch(arrivals, read_last_applied(conn, keys), held, now, self.gap_wait)
            by_id = {stored.id: stored for stored in events}
            by_id.update(self.log.events_by_id([i for i in plan.released if i not in by_id], conn))
            applied = [by_id[event_id] for event_id in plan.applied]
            first_rank = read_cursor(conn, APPLIED_RANK_CURSOR) + 1
            messages, conversations = fold_events(applied, first_rank, plan.late)
            paramstyle = conn.dialect.paramstyle
            writes = [
                prepared_upsert(receiver_inbox_messages, merged_message_rows(conn, messages), paramstyle),
                prepared_upsert(receiver_inbox_conversations, merged_conversation_rows(conn, conversations), paramstyle),
            ]
        # Everything is encoded before the write transaction, which only runs two
        # executemany: it holds the request writers up as briefly as it can.
        with self.log.transaction() as conn:
            if read_cursor(conn, INBOX_CURSOR) != position:
                return 0  # someone else projected meanwhile; start again from their cursor
            for statement, parameters in writes:
                if parameters:
                    conn.exec_driver_sql(statement, parameters)
            write_sequencing(conn, plan, now)
            write_cursor(conn, INBOX_CURSOR, events[-1].id if events else position)
            write_cursor(conn, APPLIED_RANK_CURSOR, first_rank - 1 + len(applied))
        return len(events)

    def catch_up(self) -> int:
        """Project everything in the log now (tests, one-shot commands)."""
        total = 0
        while count := self.step():
            total += count
        return total


# ---------------------------------------------------------------- sequencing state


def arrival(stored: StoredEvent) -> Arrival:
    """How the sequencer sees a log event: its key only if it is a message event with an org and a conversation."""
    parsed = message_event(stored.body) if stored.sequence is not None else None
    if parsed is None or not isinstance(parsed[3], int) or isinstance(parsed[3], bool):
        return Arrival(stored.id, None, None)
    event_type, _message, conversation, org_id = parsed
    return Arrival(stored.id, (org_id, event_type, conversation["id"]), stored.sequence)


def read_held(conn: Connection) -> list[Held]:
    """Every held event (few: only those waiting on a hole)."""
    table = receiver_held_events
    return [
        Held(row.event_id, (row.org_id, row.event_type, row.conversation_id), row.sequence, row.held_since)
        for row in conn.execute(select(table).order_by(table.c.event_id)).all()
    ]


def read_last_applied(conn: Connection, keys: set[SequenceKey]) -> dict[SequenceKey, int]:
    if not keys:
        return {}
    table = receiver_sequence_keys
    found: dict[SequenceKey, int] = {}
    conversation_ids = sorted({key[2] for key in keys})
    for start in range(0, len(conversation_ids), 500):
        rows = conn.execute(select(table).where(table.c.conversation_id.in_(conversation_ids[start : start + 500]))).all()
        for row in rows:
            key = (row.org_id, row.event_type, row.conversation_id)
            if key in keys:
                found[key] = row.last_applied
    return found


def write_sequencing(conn: Connection, plan: Plan, now: float) -> None:
    """The plan's changes to the held events, the last applied per key and the reported gaps."""
    if plan.released:
        conn.execute(delete(receiver_held_events).where(receiver_held_events.c.event_id.in_(plan.released)))
    if plan.held:
        conn.execute(
            receiver_held_events.insert(),
            [
                {"event_id": h.event_id, "org_id": h.key[0], "event_type": h.key[1], "conversation_id": h.key[2],
                 "sequence": h.sequence, "held_since": h.held_since}
                for h in plan.held
            ],
        )
    if plan.last_applied:
        insert = sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert
        statement = insert(receiver_sequence_keys)
        statement = statement.on_conflict_do_update(
            index_elements=["org_id", "event_type", "conversation_id"],
            set_={"last_applied": statement.excluded.last_applied},
        )
        conn.execute(
            statement,
            [{"org_id": k[0], "event_type": k[1], "conversation_id": k[2], "last_applied": v} for k, v in plan.last_applied.items()],
        )
    if plan.reported:
        conn.execute(
            receiver_sequence_gaps.insert(),
            [
                {"org_id": g.key[0], "event_type": g.key[1], "conversation_id": g.key[2], "first_missing": g.first_missing,
                 "last_missing": g.last_missing, "waiting_since": g.waiting_since, "reported_at": now}
                for g in plan.reported
            ],
        )


def gap_document(key: SequenceKey, first: int, last: int, since: float, reported_at: float | None) -> dict[str, Any]:
    return {
        "key": {"org_id": key[0], "event_type": key[1], "conversation_id": key[2]},
        "missing": {"first": first, "last": last},
        "waiting_since": since,
        "reported_at": reported_at,
    }


def list_gaps(conn: Connection, include_waiting: bool = False) -> list[dict[str, Any]]:
    """The holes reported (waited on past the bound), oldest first; with ``include_waiting``, also those still waited on."""
    table = receiver_sequence_gaps
    gaps = [
        gap_document((row.org_id, row.event_type, row.conversation_id), row.first_missing, row.last_missing,
                     row.waiting_since, row.reported_at)
        for row in conn.execute(select(table).order_by(table.c.id)).all()
    ]
    if include_waiting:
        held = read_held(conn)
        by_key: dict[SequenceKey, list[Held]] = {}
        for event in held:
            by_key.setdefault(event.key, []).append(event)
        last = read_last_applied(conn, set(by_key))
        for key, events in by_key.items():
            for gap in holes(last.get(key, 0), events):
                gaps.append(gap_document(key, gap.first_missing, gap.last_missing, gap.waiting_since, None))
    return gaps


MESSAGE_EVENT_TYPES = ("message_created", "message_updated")


def message_event(body: bytes) -> tuple[str, dict, dict, Any] | None:
    """(type, message, conversation, org_id) of a message event, as received; ``None`` for anything else.

    The log holds only bodies that parsed under the contract when they came
    in, so the projector reads the raw JSON: the values stay exactly as sent.
    """
    try:
        document = orjson.loads(body)
        payload = document["payload"]
        message, conversation = payload["message"], payload["conversation"]
        if document["type"] not in MESSAGE_EVENT_TYPES or not isinstance(message.get("id"), int):
            return None
        if not isinstance(conversation.get("id"), int):
            return None
        return document["type"], message, conversation, payload.get("org_id")
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None


def fold_events(events: Sequence[StoredEvent], first_rank: int = 1, late: Set[int] = frozenset()) -> tuple[dict, dict]:
    """Merge a batch, in the order to apply it, in memory.

    message id -> (state, conversation id, event id); conversation id ->
    (snapshot, event id, org, applied rank), the rank counting from ``first_rank``.
    The ``late`` events (a sequence number already passed) rank 0: their
    conversation snapshot wins only with a newer last message, never a tie.
    """
    messages: dict[int, tuple[MessageState, int, int]] = {}
    conversations: dict[int, tuple[dict, int, Any, int]] = {}
    for rank, stored in enumerate(events, start=first_rank):
        if stored.id in late:
            rank = 0
        parsed = message_event(stored.body)
        if parsed is None:
            continue  # an event type this version does not show: kept in the log only
        event_type, message, conversation, org_id = parsed
        incoming = MessageState.from_event(event_type, message)
        previous = messages.get(message["id"])
        merged = merge_message(previous[0] if previous else None, incoming)
        winner_event = stored.id if merged.snapshot is incoming.snapshot else previous[2]
        messages[message["id"]] = (merged, message.get("conversation_id", conversation["id"]), winner_event)
        held = conversations.get(conversation["id"])
        if held is None or conversation_wins(held[0], held[3], conversation, rank):
            conversations[conversation["id"]] = (conversation, stored.id, org_id, rank)
    return messages, conversations


def merged_message_rows(conn: Connection, batch: dict[int, tuple[MessageState, int, int]]) -> list[dict]:
    table = receiver_inbox_messages
    stored = {row.id: row for row in conn.execute(select(table).where(table.c.id.in_(list(batch)))).all()} if batch else {}
    rows = []
    for message_id, (state, conversation_id, event_id) in batch.items():
        row = stored.get(message_id)
        if row is not None:
            held = MessageState(row.snapshot, row.snapshot_event_type, row.is_deleted)
            merged = merge_message(held, state)
            if merged.snapshot is held.snapshot:
                event_id = row.event_id
            state = merged
        rows.append(
            {
                "id": message_id,
                "conversation_id": conversation_id,
                "date": sortable_date(state.snapshot.get("date")),
                "status": state.status,
                "is_deleted": state.is_deleted,
                "snapshot_event_type": state.event_type,
                "event_id": event_id,
                "snapshot": state.snapshot,
            }
        )
    return rows


def merged_conversation_rows(conn: Connection, batch: dict[int, tuple[dict, int, Any, int]]) -> list[dict]:
    table = receiver_inbox_conversations
    stored = {row.id: row for row in conn.execute(select(table).where(table.c.id.in_(list(batch)))).all()} if batch else {}
    rows = []
    for conversation_id, (snapshot, event_id, org_id, rank) in batch.items():
        row = stored.get(conversation_id)
        if row is not None and not conversation_wins(row.snapshot, row.applied_rank, snapshot, rank):
            continue
        rows.append(
            {"id": conversation_id, "org_id": org_id if isinstance(org_id, int) else None, "event_id": event_id,
             "applied_rank": rank, "snapshot": snapshot}
        )
    return rows


# ---------------------------------------------------------------- reading


def message_view(row) -> dict[str, Any]:
    """A message as the inbox shows it: its fields, the merged status and deletion, what is unknown."""
    view = dict(row.snapshot)
    view["status"] = row.status
    view["is_deleted"] = row.is_deleted
    view["unknown_values"] = unknown_values(view, _MESSAGE_ENUMS)
    return view


def conversation_view(row, last_message, message_count: int) -> dict[str, Any]:
    view = {key: value for key, value in row.snapshot.items() if key != "last_message"}
    view["org_id"] = row.org_id
    view["last_message"] = message_view(last_message) if last_message is not None else row.snapshot.get("last_message")
    view["message_count"] = message_count
    view["unknown_values"] = unknown_values(view, _CONVERSATION_ENUMS)
    return view


def list_conversations(conn: Connection, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    """Conversations, the one with the newest message first, each with its last message."""
    messages = receiver_inbox_messages
    conversations = receiver_inbox_conversations
    newest = (
        select(messages.c.conversation_id, func.max(messages.c.date).label("newest"), func.count().label("count"))
        .group_by(messages.c.conversation_id)
        .subquery()
    )
    query = (
        select(conversations, newest.c.newest, newest.c.count)
        .outerjoin(newest, newest.c.conversation_id == conversations.c.id)
        .order_by(newest.c.newest.desc().nulls_last(), conversations.c.id.desc())
        .limit(limit)
        .offset(offset)
    )
    rows = conn.execute(query).all()
    last_messages = _last_messages(conn, [(row.id, row.newest) for row in rows if row.newest is not None])
    return [conversation_view(row, last_messages.get(row.id), row.count or 0) for row in rows]


def _last_messages(conn: Connection, wanted: Iterable[tuple[int, str]]) -> dict[int, Any]:
    wanted = list(wanted)
    if not wanted:
        return {}
    table = receiver_inbox_messages
    rows = conn.execute(
        select(table).where(table.c.conversation_id.in_([cid for cid, _ in wanted])).where(
            table.c.date.in_([date for _, date in wanted])
        )
    ).all()
    newest = dict(wanted)
    found: dict[int, Any] = {}
    for row in rows:
        if newest.get(row.conversation_id) == row.date:
            current = found.get(row.conversation_id)
            if current is None or row.id > current.id:
                found[row.conversation_id] = row
    return found


def get_conversation(conn: Connection, conversation_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        select(receiver_inbox_conversations).where(receiver_inbox_conversations.c.id == conversation_id)
    ).first()
    if row is None:
        return None
    messages = list_messages(conn, conversation_id)
    last = conn.execute(
        select(receiver_inbox_messages)
        .where(receiver_inbox_messages.c.conversation_id == conversation_id)
        .order_by(receiver_inbox_messages.c.date.desc(), receiver_inbox_messages.c.id.desc())
        .limit(1)
    ).first()
    return conversation_view(row, last, len(messages))


def list_messages(conn: Connection, conversation_id: int, limit: int = 500) -> list[dict[str, Any]]:
    """The messages of one conversation, oldest first."""
    table = receiver_inbox_messages
    rows = conn.execute(
        select(table)
        .where(table.c.conversation_id == conversation_id)
        .order_by(table.c.date, table.c.id)
        .limit(limit)
    ).all()
    return [message_view(row) for row in rows]


def get_message(conn: Connection, message_id: int) -> dict[str, Any] | None:
    row = conn.execute(select(receiver_inbox_messages).where(receiver_inbox_messages.c.id == message_id)).first()
    return message_view(row) if row is not None else None
