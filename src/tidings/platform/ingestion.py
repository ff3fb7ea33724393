"""Ingestion of custom channels' messages (``POST /v2/custom-channels/{id}/messages``).

Messages with one ``external_conversation_id`` share a conversation, created
with the first; a message whose ``external_message_id`` was already
ingested on its channel is a duplicate: nothing is stored or sent for it.
Each new message gets its ``message_created`` event, and the event its
deliveries, in the same transaction.

``ingest_batch`` takes many messages at once (the API batches concurrent
requests, ``tidings.platform.ingest_queue``) and does their work in about a
dozen statements, whatever their number: the reads first, then every
decision in Python, then the writes. Every refusal is decided before the
first write, so a refused message leaves the others untouched. It runs on a
synchronous connection (the ingestion's writer thread on SQLite);
``ingest_messages`` is the same on an async one. On the writer's SQLite
connection each statement runs on the sqlite3 connection underneath, in
the form written beside its SQLAlchemy one (``store.sqlite``;
``tests/test_ingestion_sqlite.py`` holds the two to the same rows).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.contract import ConversationStatus, MessageStatus, SenderType, utcnow
from tidings.contract.signing import Signer
from tidings.platform.conversations import (
    CUSTOM_CHANNEL_PARTNER,
    INGESTED_SENDER_TYPES,
    MessagingError,
    NotFound,
    Refused,
    conversation_document,
    message_document,
)
from tidings.platform.deliveries.outbox import OutgoingEvent, write_events
from tidings.store.pairs import pair_condition, select_pairs
from tidings.store.platform_tables import businesses, conversations, custom_channels, messages
from tidings.store.sqlite import SqliteColumns, driver_sqlite, insert_rows, json_array, sqlite_datetime
from tidings.store.types import UTCDateTime


@dataclass(frozen=True)
class IncomingMessage:
    """A message posted to ``POST /v2/custom-channels/{channel_id}/messages``."""

    business_id: str
    external_conversation_id: str
    external_message_id: str
    content: str
    sender_type: str = "Consumer"
    content_type: str = "Text"
    consumer_name: str | None = None
    consumer_img: str | None = None
    sender_label: str | None = None


@dataclass(frozen=True)
class ChannelMessage:
    """An incoming message with the organization and channel it was posted for."""

    org_id: int
    channel_id: str
    incoming: IncomingMessage


@dataclass(frozen=True)
class IngestResult:
    message_id: int
    conversation_id: int
    duplicate: bool


Outcome = IngestResult | MessagingError


async def ingest_custom_message(conn: AsyncConnection, signer: Signer, *, org_id: int, channel_id: str,
                                incoming: IncomingMessage) -> IngestResult:
    """One message; raises ``MessagingError`` (or a subclass) for a refusal."""
    [outcome] = await ingest_messages(conn, signer, [ChannelMessage(org_id, channel_id, incoming)])
    if isinstance(outcome, MessagingError):
        raise outcome
    return outcome


# ---------------------------------------------------------------- pure decisions


def ingest_refusal(item: ChannelMessage, channel: Mapping | None, business: Mapping | None) -> MessagingError | None:
    """Why ``item`` cannot be ingested at all, or ``None``."""
    if item.incoming.sender_type not in INGESTED_SENDER_TYPES:
        return MessagingError(f"sender_type must be User or Consumer, not {item.incoming.sender_type!r}")
    if channel is None or channel["org_id"] != item.org_id:  # another organization's is not found either
        return NotFound(f"no custom channel {item.channel_id!r} in this organization")
    if business is None or business["org_id"] != item.org_id:
        return MessagingError(f"no business {item.incoming.business_id!r} in this organization")
    return None


def business_refusal(item: ChannelMessage, conversation: Mapping) -> Refused | None:
    """A conversation keeps the business it was created for."""
    if conversation["business_id"] == item.incoming.business_id:
        return None
    return Refused(f"conversation {item.incoming.external_conversation_id!r} of this channel belongs to business "
                   f"{conversation['business_id']}, not {item.incoming.business_id}")


def new_conversation_row(item: ChannelMessage, now: datetime) -> dict[str, Any]:
    incoming = item.incoming
    return {
        "org_id": item.org_id, "business_id": incoming.business_id, "messaging_partner": CUSTOM_CHANNEL_PARTNER,
        "custom_channel_id": item.channel_id, "external_conversation_id": incoming.external_conversation_id,
        "consumer_name": incoming.consumer_name, "consumer_img": incoming.consumer_img,
        "consumer_phone_number": None, "consumer_email": None, "is_read": False,
        "status": str(ConversationStatus.OPEN), "issues": [], "created_at": now, "first_message_date": now,
        "has_one_user_message": False, "is_expired": False, "is_solved": False, "is_automated": False,
        "assigned_user_id": None, "last_message_id": None,
    }


def new_message_row(item: ChannelMessage, conversation_id: int, business_name: str, now: datetime) -> dict[str, Any]:
    incoming = item.incoming
    is_user = incoming.sender_type == SenderType.USER
    label = incoming.sender_label
    if label is None:
        label = business_name if is_user else (incoming.consumer_name or "")
    return {
        "conversation_id": conversation_id, "org_id": item.org_id, "date": now,
        "content_type": incoming.content_type, "sender_type": incoming.sender_type, "sender_label": label,
        "status": str(MessageStatus.SUCCESS), "is_deleted": False, "is_automated": False,
        "content": incoming.content, "user_id": None, "custom_channel_id": item.channel_id,
        "external_message_id": incoming.external_message_id,
    }


def conversation_after(conversation: Mapping[str, Any], message: Mapping[str, Any],
                       incoming: IncomingMessage) -> dict[str, Any]:
    """The conversation once ``message`` is its newest message."""
    is_user = incoming.sender_type == SenderType.USER
    after = dict(conversation)
    after.update(
        last_message_id=message["id"],
        first_message_date=conversation["first_message_date"] or message["date"],
        is_read=is_user,  # a consumer's message is unread; a business user's reply reads the conversation
        has_one_user_message=conversation["has_one_user_message"] or is_user,
    )
    if incoming.consumer_name is not None:
        after["consumer_name"] = incoming.consumer_name
    if incoming.consumer_img is not None:
        after["consumer_img"] = incoming.consumer_img
    return after


# ---------------------------------------------------------------- the batch


MessageKey = tuple[str, str]  # (channel id, external message id)
ConversationKey = tuple[str, str]  # (channel id, external conversation id)


@dataclass
class BatchPlan:
    """What to do with each message of a batch, decided before any write."""

    outcomes: list[Outcome | None]  # set for the messages refused or already stored
    accepted: list[int]  # indexes of the messages to store, in order
    repeated: list[tuple[int, int]]  # (index, index of the same message earlier in the batch)
    new_conversations: dict[ConversationKey, dict[str, Any]]  # rows to create


def plan_batch(batch: Sequence[ChannelMessage], channels: Mapping[str, Mapping], owners: Mapping[str, Mapping],
               stored_messages: Mapping[MessageKey, tuple[int, int]],
               stored_conversations: Mapping[ConversationKey, Mapping], now: datetime) -> BatchPlan:
    """Decides each message from what is stored: refused, a duplicate (of a
    stored message or of one earlier in the batch), or to store, opening
    its conversation if needed."""
    plan = BatchPlan(outcomes=[None] * len(batch), accepted=[], repeated=[], new_conversations={})
    first_with_key: dict[MessageKey, int] = {}
    for index, item in enumerate(batch):
        refusal = ingest_refusal(item, channels.get(item.channel_id), owners.get(item.incoming.business_id))
        if refusal is not None:
            plan.outcomes[index] = refusal
            continue
        message_key = _message_key(item)
        if message_key in stored_messages:
            message_id, conversation_id = stored_messages[message_key]
            plan.outcomes[index] = IngestResult(message_id, conversation_id, duplicate=True)
            continue
        if message_key in first_with_key:
            plan.repeated.append((index, first_with_key[message_key]))
            continue
        conversation_key = _conversation_key(item)
        conversation = stored_conversations.get(conversation_key) or plan.new_conversations.get(conversation_key)
        if conversation is None:
            plan.new_conversations[conversation_key] = new_conversation_row(item, now)
        elif (refusal := business_refusal(item, conversation)) is not None:
            plan.outcomes[index] = refusal
            continue
        first_with_key[message_key] = index
        plan.accepted.append(index)
    return plan


async def ingest_messages(conn: AsyncConnection, signer: Signer, batch: Sequence[ChannelMessage]) -> list[Outcome]:
    """``ingest_batch`` on an async connection."""
    return await conn.run_sync(ingest_batch, signer, batch)


def ingest_batch(conn: Connection, signer: Signer, batch: Sequence[ChannelMessage]) -> list[Outcome]:
    """Ingests ``batch`` in the caller's transaction; one outcome per message, in order."""
    channels = _rows_by_id(conn, _CHANNELS, _CHANNELS_SQLITE, {item.channel_id for item in batch})
    owners = _rows_by_id(conn, _BUSINESSES, _BUSINESSES_SQLITE, {item.incoming.business_id for item in batch})
    stored_messages = _stored_messages(conn, {_message_key(item) for item in batch})
    stored_conversations = _stored_conversations(conn, {_conversation_key(item) for item in batch})
    now = utcnow()
    plan = plan_batch(batch, channels, owners, stored_messages, stored_conversations, now)
    outcomes, accepted, repeated, new_conversations = plan.outcomes, plan.accepted, plan.repeated, plan.new_conversations

    if new_conversations:
        stored_conversations.update(_create_conversations(conn, new_conversations))
        for index in list(accepted):  # one created meanwhile by another process may belong to another business
            refusal = business_refusal(batch[index], stored_conversations[_conversation_key(batch[index])])
            if refusal is not None:
                outcomes[index] = refusal
                accepted.remove(index)

    rows = {index: new_message_row(batch[index], stored_conversations[_conversation_key(batch[index])]["id"],
                                   owners[batch[index].incoming.business_id]["name"], now) for index in accepted}
    message_ids = _insert_messages(conn, [rows[index] for index in accepted])
    stored_later = _stored_messages(conn, {_message_key(batch[i]) for i in accepted} - set(message_ids))
    created: list[tuple[int, dict[str, Any], dict[str, Any]]] = []  # (index, message row, conversation as of it)
    for index in accepted:
        item = batch[index]
        message_key = _message_key(item)
        if message_key not in message_ids:  # ingested meanwhile by another process
            message_id, conversation_id = stored_later[message_key]
            outcomes[index] = IngestResult(message_id, conversation_id, duplicate=True)
            continue
        message = {**rows[index], "id": message_ids[message_key]}
        conversation_key = _conversation_key(item)
        stored_conversations[conversation_key] = conversation_after(stored_conversations[conversation_key], message,
                                                                    item.incoming)
        created.append((index, message, stored_conversations[conversation_key]))
        outcomes[index] = IngestResult(message["id"], message["conversation_id"], duplicate=False)
    for index, earlier in repeated:
        found = outcomes[earlier]
        outcomes[index] = IngestResult(found.message_id, found.conversation_id, duplicate=True) \
            if isinstance(found, IngestResult) else found

    if created:
        _update_conversations(conn, [(message, batch[index].incoming) for index, message, _ in created])
        events = []
        for index, message_row, conversation_row in created:
            item = batch[index]
            events.append(OutgoingEvent(item.org_id, "message_created", message_row["conversation_id"],
                                        message_row["id"], message_created_body(
                                            item.org_id, message_row, conversation_row,
                                            owners[item.incoming.business_id], channels[item.channel_id])))
        write_events(conn, events, signer=signer)
    return outcomes  # type: ignore[return-value]  # every slot is filled above


def message_created_body(org_id: int, message: Mapping[str, Any], conversation: Mapping[str, Any],
                         business: Mapping[str, Any], channel: Mapping[str, Any]) -> bytes:
    """The ``message_created`` of a new message, as the bytes its deliveries
    send: the documents of its rows, without building the contract's models
    first (about 90 us a message less; the same bytes as ``dump_event`` of
    the models, ``tests/test_event_documents.py``)."""
    last_message = message_document(message)
    return orjson.dumps({"type": "message_created", "payload": {
        "message": last_message,
        "conversation": conversation_document(conversation, business, channel, last_message),
        "org_id": org_id}})


def _message_key(item: ChannelMessage) -> MessageKey:
    return (item.channel_id, item.incoming.external_message_id)


def _conversation_key(item: ChannelMessage) -> ConversationKey:
    return (item.channel_id, item.incoming.external_conversation_id)


def _by_id(table):
    return select(table).where(table.c.id.in_(bindparam("ids", expanding=True)))


def _by_pair(columns, *pair):
    return select(*columns).where(pair_condition(*pair))


# The reads, built once: building such a statement costs more than running it.
_CHANNELS = _by_id(custom_channels)
_BUSINESSES = _by_id(businesses)
_STORED_MESSAGES = _by_pair((messages.c.custom_channel_id, messages.c.external_message_id, messages.c.id,
                             messages.c.conversation_id), messages.c.custom_channel_id, messages.c.external_message_id)
_STORED_CONVERSATIONS = _by_pair(conversations.c, conversations.c.custom_channel_id,
                                 conversations.c.external_conversation_id)


# Their SQLite forms, for the writer's sqlite3 connection (``driver_sqlite``):
# keys go in as one JSON array, so that each statement has one text; a pair
# is looked up through its unique index (tests/test_query_plans.py).
_CHANNEL_COLUMNS = SqliteColumns(custom_channels)
_BUSINESS_COLUMNS = SqliteColumns(businesses)
_CONVERSATION_COLUMNS = SqliteColumns(conversations)
_NEW_CONVERSATION_COLUMNS = SqliteColumns(conversations, [name for name in conversations.c.keys() if name != "id"])
_NEW_MESSAGE_COLUMNS = SqliteColumns(messages, [name for name in messages.c.keys() if name != "id"])
_BY_ID_SQLITE = "SELECT {columns} FROM {table} WHERE id IN (SELECT value FROM json_each(?))"
_CHANNELS_SQLITE = (_CHANNEL_COLUMNS, _BY_ID_SQLITE.format(columns=_CHANNEL_COLUMNS.listed, table="custom_channels"))
_BUSINESSES_SQLITE = (_BUSINESS_COLUMNS, _BY_ID_SQLITE.format(columns=_BUSINESS_COLUMNS.listed, table="businesses"))
# No alias for the table: the query plans' test reads its name in the plan.
_BY_PAIR_SQLITE = ("SELECT {columns} FROM json_each(?) AS k CROSS JOIN {table} "
                   "ON {table}.custom_channel_id = json_extract(k.value, '$[0]') "
                   "AND {table}.{second} = json_extract(k.value, '$[1]')")
STORED_MESSAGES_SQLITE = _BY_PAIR_SQLITE.format(
    columns="messages.custom_channel_id, messages.external_message_id, messages.id, messages.conversation_id",
    table="messages", second="external_message_id")
STORED_CONVERSATIONS_SQLITE = _BY_PAIR_SQLITE.format(
    columns=_CONVERSATION_COLUMNS.listed_as("conversations"), table="conversations", second="external_conversation_id")


def _rows_by_id(conn: Connection, statement, on_sqlite: tuple[SqliteColumns, str],
                ids: set[str]) -> dict[str, dict[str, Any]]:
    if (db := driver_sqlite(conn)) is not None:
        columns, text = on_sqlite
        found = [columns.read(row) for row in db.execute(text, (json_array(sorted(ids)),))]
        return {row["id"]: row for row in found}
    rows = conn.execute(statement, {"ids": sorted(ids)})
    return {row.id: dict(row._mapping) for row in rows}


def _stored_messages(conn: Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
    """(channel, external message id) -> (message id, conversation id) of those already stored."""
    if not keys:
        return {}
    if (db := driver_sqlite(conn)) is not None:
        rows = db.execute(STORED_MESSAGES_SQLITE, (json_array(sorted(keys)),)).fetchall()
    else:
        rows = select_pairs(conn, _STORED_MESSAGES, keys)
    return {(row[0], row[1]): (row[2], row[3]) for row in rows}


def _stored_conversations(conn: Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    if (db := driver_sqlite(conn)) is not None:
        found = [_CONVERSATION_COLUMNS.read(row)
                 for row in db.execute(STORED_CONVERSATIONS_SQLITE, (json_array(sorted(keys)),))]
    else:
        found = [dict(row._mapping) for row in select_pairs(conn, _STORED_CONVERSATIONS, keys)]
    return {(row["custom_channel_id"], row["external_conversation_id"]): row for row in found}


def _insert_new(table, unique: tuple[str, str], *returning):
    """``INSERT ... ON CONFLICT (unique) DO NOTHING RETURNING ...`` for each dialect, built once."""
    return {dialect.__name__.rsplit(".", 1)[-1]: dialect.insert(table).on_conflict_do_nothing(
        index_elements=list(unique)).returning(*returning) for dialect in (postgresql, sqlite)}


_NEW_CONVERSATIONS = _insert_new(conversations, ("custom_channel_id", "external_conversation_id"), conversations.c.id,
                                 conversations.c.custom_channel_id, conversations.c.external_conversation_id)
_NEW_MESSAGES = _insert_new(messages, ("custom_channel_id", "external_message_id"), messages.c.id,
                            messages.c.custom_channel_id, messages.c.external_message_id)


def _for_dialect(conn: Connection, statements: dict) -> Any:
    return statements["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]


def _create_conversations(conn: Connection, new: dict[tuple[str, str], dict[str, Any]]
                                ) -> dict[tuple[str, str], dict[str, Any]]:
    """Inserts the new conversations; one created meanwhile by another process is read instead."""
    if (db := driver_sqlite(conn)) is not None:
        inserted = insert_rows(db, _NEW_CONVERSATION_COLUMNS, [new[key] for key in sorted(new)],
                               on_conflict="ON CONFLICT (custom_channel_id, external_conversation_id) DO NOTHING",
                               returning=("id", "custom_channel_id", "external_conversation_id"))
    else:
        inserted = conn.execute(_for_dialect(conn, _NEW_CONVERSATIONS), [new[key] for key in sorted(new)])
    created = {(row[1], row[2]): {**new[(row[1], row[2])], "id": row[0]} for row in inserted}
    missing = set(new) - set(created)
    if missing:
        created.update(_stored_conversations(conn, missing))
    return created


def _insert_messages(conn: Connection, rows: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """Inserts the messages; returns the ids of those inserted (one stored meanwhile is skipped)."""
    if not rows:
        return {}
    if (db := driver_sqlite(conn)) is not None:
        inserted = insert_rows(db, _NEW_MESSAGE_COLUMNS, rows, on_conflict="ON CONFLICT (custom_channel_id, external_message_id) DO NOTHING",
                               returning=("id", "custom_channel_id", "external_message_id"))
    else:
        inserted = conn.execute(_for_dialect(conn, _NEW_MESSAGES), rows)
    return {(row[1], row[2]): row[0] for row in inserted}


# Relative to the stored row, so that a concurrent writer's change is not undone.
_NEWER = or_(conversations.c.last_message_id.is_(None), conversations.c.last_message_id < bindparam("new_last_id"))
_UPDATE_CONVERSATION = (
    update(conversations).where(conversations.c.id == bindparam("conversation_id")).values(
        last_message_id=case((_NEWER, bindparam("new_last_id")), else_=conversations.c.last_message_id),
        is_read=case((_NEWER, bindparam("new_is_read")), else_=conversations.c.is_read),
        first_message_date=func.coalesce(conversations.c.first_message_date, bindparam("new_first_date", type_=UTCDateTime)),
        has_one_user_message=or_(conversations.c.has_one_user_message, bindparam("new_user_message")),
        consumer_name=func.coalesce(bindparam("new_consumer_name"), conversations.c.consumer_name),
        consumer_img=func.coalesce(bindparam("new_consumer_img"), conversations.c.consumer_img),
    )
)


# The same statement's text on SQLite, for the writer's sqlite3 connection.
_UPDATE_CONVERSATION_SQLITE = str(_UPDATE_CONVERSATION.compile(dialect=sqlite.dialect(paramstyle="named")))


def _update_conversations(conn: Connection, created: list[tuple[dict[str, Any], IncomingMessage]]) -> None:
    """One update per conversation, for all its new messages together."""
    changes: dict[int, dict[str, Any]] = {}
    for message, incoming in created:  # in order: the later message of a conversation wins
        is_user = incoming.sender_type == SenderType.USER
        earlier = changes.get(message["conversation_id"], {})
        changes[message["conversation_id"]] = {
            "conversation_id": message["conversation_id"], "new_last_id": message["id"], "new_is_read": is_user,
            "new_first_date": earlier.get("new_first_date", message["date"]),
            "new_user_message": earlier.get("new_user_message", False) or is_user,
            "new_consumer_name": incoming.consumer_name if incoming.consumer_name is not None
            else earlier.get("new_consumer_name"),
            "new_consumer_img": incoming.consumer_img if incoming.consumer_img is not None
            else earlier.get("new_consumer_img"),
        }
    if (db := driver_sqlite(conn)) is not None:
        db.executemany(_UPDATE_CONVERSATION_SQLITE, [{**changes[key], "new_first_date": sqlite_datetime(
            changes[key]["new_first_date"])} for key in sorted(changes)])
    else:
        conn.execute(_UPDATE_CONVERSATION, [changes[key] for key in sorted(changes)])
