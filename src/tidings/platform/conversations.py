"""Conversations and messages: business users' replies, status changes, the
simulated partners' inbound messages, and the contract events each one emits
(ingestion from custom channels is in ``tidings.platform.ingestion``).

Every write here runs in the caller's transaction and records its event
there too (``tidings.platform.deliveries.outbox.record_event``), so a change and its
event commit together. Status changes are guarded in their ``WHERE``
clause: a change that already happened is not made, nor emitted, twice.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.contract import (
    Conversation,
    ConversationStatus,
    EventPayload,
    Message,
    MessageCreated,
    MessageStatus,
    MessageUpdated,
    MessagingPartner,
    SenderType,
    format_date,
    utcnow,
)
from tidings.contract.samples import CUSTOM_PARTNER
from tidings.contract.signing import Signer
from tidings.platform import configurations
from tidings.platform.deliveries.outbox import record_event
from tidings.platform.deliveries.cycle import FinishedDelivery
from tidings.store.platform_tables import (
    businesses,
    conversations,
    custom_channels,
    events,
    messages,
)
from tidings.store.sqlite import in_sqlite_thread, json_array

# A custom channel's conversations carry this partner name; the built-in
# partners are the contract's known values (Facebook, Google, ...).
CUSTOM_CHANNEL_PARTNER = CUSTOM_PARTNER
BUILT_IN_PARTNERS = frozenset(MessagingPartner.known_values)
INGESTED_SENDER_TYPES = (str(SenderType.USER), str(SenderType.CONSUMER))


class MessagingError(Exception):
    """A request about conversations that cannot be carried out; ``str()`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(MessagingError):
    """No such thing in the organization (another organization's is not found either)."""


class Refused(MessagingError):
    """The thing exists but its state forbids the request (a closed conversation, ...)."""


# ---------------------------------------------------------------- pure decisions


def reply_refusal(*, conversation_status: str, issues: Sequence[str], partner: str,
                  channel_is_readonly: bool | None) -> str | None:
    """Why a business user cannot send in this conversation now, or ``None``."""
    if conversation_status == ConversationStatus.CLOSED:
        return "the conversation is Closed: no message can be sent in it"
    if conversation_status != ConversationStatus.OPEN:
        return f"the conversation's status is {conversation_status!r}: messages are sent only in Open conversations"
    if issues:
        return f"the conversation has set-up issues that block sending: {', '.join(map(str, issues))}"
    if channel_is_readonly:
        return "the conversation's custom channel is read-only: it only brings messages in"
    if channel_is_readonly is None and partner not in BUILT_IN_PARTNERS:
        return f"messages cannot be sent through the partner {partner!r}"
    return None


def retry_refusal(status: str, sender_type: str) -> str | None:
    """Why a message cannot be re-sent, or ``None``."""
    if sender_type != SenderType.USER:
        return f"only a business user's message can be re-sent; this one's sender is {sender_type}"
    if status != MessageStatus.FAILED:
        return f"only a Failed message can be retried; this one is {status}"
    return None


def encode_cursor(last_id: int) -> str:
    """An opaque cursor that resumes a listing after the row ``last_id``."""
    return base64.urlsafe_b64encode(f"after:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The row id a cursor resumes after; ``ValueError`` for one this API did not give."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("the cursor is not one this API gave (take next_cursor from the previous page)") from None
    prefix, _, number = text.partition(":")
    if prefix != "after" or not number.isdigit() or len(number) > 19:
        raise ValueError("the cursor is not one this API gave (take next_cursor from the previous page)")
    return int(number)


# ---------------------------------------------------------------- rows -> contract models

_last_message = messages.alias("last_message")


def _prefixed(table, prefix: str) -> list:
    return [column.label(prefix + column.name) for column in table.c]


_CONVERSATION_COLUMNS = [
    *conversations.c,
    *_prefixed(businesses, "business__"),
    *_prefixed(custom_channels, "channel__"),
    *_prefixed(_last_message, "last__"),
]


def select_conversations() -> Select:
    """Conversations with their business, channel and last message, in one row each."""
    return select(*_CONVERSATION_COLUMNS).select_from(
        conversations.join(businesses, businesses.c.id == conversations.c.business_id)
        .outerjoin(custom_channels, custom_channels.c.id == conversations.c.custom_channel_id)
        .outerjoin(_last_message, _last_message.c.id == conversations.c.last_message_id)
    )


def message_document(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """The contract's Message of a ``messages`` row, as its JSON document
    (pure). Fields in the model's order: ``dump_event`` of the model gives
    the same bytes (``tests/test_event_documents.py``)."""
    external_id = row[prefix + "external_message_id"]
    return {
        "id": row[prefix + "id"],
        "conversation_id": row[prefix + "conversation_id"],
        "date": format_date(row[prefix + "date"]),
        "content_type": row[prefix + "content_type"],
        "sender_type": row[prefix + "sender_type"],
        "sender_label": row[prefix + "sender_label"],
        "status": row[prefix + "status"],
        "is_deleted": row[prefix + "is_deleted"],
        "is_automated": row[prefix + "is_automated"],
        "content": row[prefix + "content"],
        "user_id": row[prefix + "user_id"],
        "custom_channel": None if external_id is None else {"external_message_id": external_id},
    }


def conversation_document(conversation: Mapping[str, Any], business: Mapping[str, Any],
                          channel: Mapping[str, Any] | None, last_message: dict[str, Any] | None) -> dict[str, Any]:
    """The contract's Conversation from its row, its business's and its custom
    channel's, as its JSON document (pure); ``last_message`` is a
    ``message_document``."""
    custom_channel = None
    if channel is not None:
        custom_channel = {
            "id": channel["id"], "name": channel["name"], "icon": channel["icon"],
            "is_readonly": channel["is_readonly"],
            "external_conversation_id": conversation["external_conversation_id"] or ""}
    first_message_date: datetime = conversation["first_message_date"] or conversation["created_at"]
    return {
        "id": conversation["id"],
        "consumer_img": conversation["consumer_img"],
        "consumer_name": conversation["consumer_name"],
        "consumer_phone_number": conversation["consumer_phone_number"],
        "consumer_email": conversation["consumer_email"],
        "last_message": last_message,
        "is_read": conversation["is_read"],
        "status": conversation["status"],
        "created_at": format_date(conversation["created_at"]),
        "has_one_user_message": conversation["has_one_user_message"],
        "business": {
            "id": business["id"], "name": business["name"], "city": business["city"],
            "zipcode": business["zipcode"], "country": business["country"],
            "formatted_address": business["formatted_address"]},
        "messaging_partner": conversation["messaging_partner"],
        "issues": list(conversation["issues"] or []),
        "first_message_date": format_date(first_message_date),
        "is_expired": conversation["is_expired"],
        "is_solved": conversation["is_solved"],
        "is_automated": conversation["is_automated"],
        "assigned_user_id": conversation["assigned_user_id"],
        "custom_channel": custom_channel,
    }


def message_from_row(row: Mapping[str, Any], prefix: str = "") -> Message:
    return Message.model_validate(message_document(row, prefix))


def _unprefixed(row: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {key[len(prefix):]: value for key, value in row.items() if key.startswith(prefix)}


def conversation_from_row(row: Mapping[str, Any], *, last_message: Message | None = None) -> Conversation:
    """The contract's Conversation of a ``select_conversations()`` row.

    ``last_message`` replaces the stored one (in ``message_created`` it is
    the new message itself).
    """
    if last_message is None and row["last__id"] is not None:
        last_message = message_from_row(row, "last__")
    channel = _unprefixed(row, "channel__") if row["channel__id"] is not None else None
    return conversation_model(row, _unprefixed(row, "business__"), channel, last_message)


def conversation_model(conversation: Mapping[str, Any], business: Mapping[str, Any],
                       channel: Mapping[str, Any] | None, last_message: Message | None) -> Conversation:
    """The contract's Conversation from its row, its business's and its custom channel's."""
    document = conversation_document(conversation, business, channel, None)
    document["last_message"] = last_message
    return Conversation.model_validate(document)


async def load_conversation(conn: AsyncConnection, conversation_id: int, org_id: int | None = None) -> Mapping | None:
    query = select_conversations().where(conversations.c.id == conversation_id)
    if org_id is not None:
        query = query.where(conversations.c.org_id == org_id)
    row = (await conn.execute(query)).first()
    return None if row is None else row._mapping


async def emit(conn: AsyncConnection, signer: Signer, event_type: str, *, org_id: int, message: Message,
               conversation: Conversation) -> int:
    """Records ``message_created`` or ``message_updated`` for ``message``; returns the event id."""
    model = MessageCreated if event_type == "message_created" else MessageUpdated
    event = model(type=event_type, payload=EventPayload(message=message, conversation=conversation, org_id=org_id))
    return await record_event(conn, org_id=org_id, event=event, signer=signer)


# Ingestion of custom channels' messages is in ``tidings.platform.ingestion``.


# ---------------------------------------------------------------- replies


@dataclass(frozen=True)
class SentReply:
    """A reply on its way: ``partner`` is set when a simulated built-in partner carries it."""

    message: Message
    partner: str | None


def user_id_of_key(api_key_id: int) -> str:
    """The 24-hex business-user id a reply sent with API key ``api_key_id`` carries."""
    return f"{api_key_id:024x}"


async def send_reply(conn: AsyncConnection, signer: Signer, *, org_id: int, conversation_id: int, content: str,
                     content_type: str, sender_label: str, user_id: str | None) -> SentReply:
    """A business user's message, created ``Sending``, with its ``message_created``.

    On a bidirectional custom channel the reply leaves through the
    organization's ``message_created`` webhook (``on_delivery_final`` settles
    it); on a built-in partner the caller hands it to the simulated partner.
    """
    row = await load_conversation(conn, conversation_id, org_id)
    if row is None:
        raise NotFound(f"no conversation {conversation_id} in this organization")
    await _check_can_send(conn, org_id, row)
    now = utcnow()
    is_custom = row["channel__id"] is not None
    message_id = (await conn.execute(insert(messages).values(
        conversation_id=conversation_id, org_id=org_id, date=now, content_type=content_type,
        sender_type=str(SenderType.USER), sender_label=sender_label, status=str(MessageStatus.SENDING),
        is_deleted=False, is_automated=False, content=content, user_id=user_id,
        custom_channel_id=row["channel__id"],
        # The channel's integration can use it to recognise a reply it has already passed on.
        external_message_id=("reply_" + secrets.token_hex(12)) if is_custom else None,
    ).returning(messages.c.id))).scalar_one()
    await conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(
        last_message_id=message_id, has_one_user_message=True, is_read=True))
    row = await load_conversation(conn, conversation_id)
    message = message_from_row(row, "last__")
    await emit(conn, signer, "message_created", org_id=org_id, message=message,
               conversation=conversation_from_row(row, last_message=message))
    return SentReply(message=message, partner=None if is_custom else row["messaging_partner"])


async def _check_can_send(conn: AsyncConnection, org_id: int, row: Mapping) -> None:
    refusal = reply_refusal(
        conversation_status=row["status"], issues=row["issues"] or [], partner=row["messaging_partner"],
        channel_is_readonly=row["channel__is_readonly"] if row["channel__id"] is not None else None)
    if refusal:
        raise Refused(refusal)
    if row["channel__id"] is not None:
        if await configurations.for_event_type(conn, org_id=org_id, event_type="message_created") is None:
            raise Refused("replies on a custom channel leave through the organization's message_created webhook, "
                          "and this organization has none: create one with POST /v2/webhooks")


async def retry_reply(conn: AsyncConnection, signer: Signer, *, org_id: int, message_id: int) -> SentReply:
    """Re-sends a ``Failed`` reply: ``Sending`` again, with its ``message_updated``.

    On a custom channel the message also leaves again: a new
    ``message_created`` of the message (now ``Sending``) goes to the
    organization's webhook, and its delivery settles the status as the first
    one did. Receivers recognise it by the message id.
    """
    found = (await conn.execute(select(messages.c.conversation_id, messages.c.status, messages.c.sender_type).where(
        messages.c.id == message_id, messages.c.org_id == org_id))).first()
    if found is None:
        raise NotFound(f"no message {message_id} in this organization")
    refusal = retry_refusal(found.status, found.sender_type)
    if refusal:
        raise Refused(refusal)
    row = await load_conversation(conn, found.conversation_id)
    await _check_can_send(conn, org_id, row)
    message = await change_message_status(conn, signer, message_id, from_status=MessageStatus.FAILED,
                                          to_status=MessageStatus.SENDING)
    if message is None:
        raise Refused("the message is no longer Failed; it is being retried already")
    if row["channel__id"] is not None:
        row = await load_conversation(conn, found.conversation_id)
        await emit(conn, signer, "message_created", org_id=org_id, message=message,
                   conversation=conversation_from_row(row))
        return SentReply(message=message, partner=None)
    return SentReply(message=message, partner=row["messaging_partner"])


# ---------------------------------------------------------------- status changes


async def change_message_status(conn: AsyncConnection, signer: Signer, message_id: int, *, from_status: str,
                                to_status: str) -> Message | None:
    """Moves a message from ``from_status`` to ``to_status`` and records
    ``message_updated``; ``None`` (and no event) when it was not in
    ``from_status``, so a repeated call changes and emits nothing."""
    changed = (await conn.execute(
        update(messages).where(messages.c.id == message_id, messages.c.status == str(from_status))
        .values(status=str(to_status)).returning(messages.c.conversation_id, messages.c.org_id)
    )).first()
    if changed is None:
        return None
    message_row = (await conn.execute(select(messages).where(messages.c.id == message_id))).first()._mapping
    message = message_from_row(message_row)
    row = await load_conversation(conn, changed.conversation_id)
    await emit(conn, signer, "message_updated", org_id=changed.org_id, message=message,
               conversation=conversation_from_row(row))
    return message


# The replies still ``Sending`` that the ``message_created`` events named carry.
# Built once: building it cost about half of the dispatcher's cycle on SQLite (bench/e2e.py).
_REPLIES_CARRIED = (
    select(events.c.id, messages.c.id).select_from(
        events.join(messages, messages.c.id == events.c.message_id)
        .join(custom_channels, custom_channels.c.id == messages.c.custom_channel_id))
    .where(events.c.id.in_(bindparam("event_ids", expanding=True)), events.c.event_type == "message_created",
           messages.c.sender_type == str(SenderType.USER), messages.c.status == str(MessageStatus.SENDING),
           custom_channels.c.is_readonly.is_(False))
)

_REPLIES_CARRIED_SQLITE = (
    "SELECT e.id, m.id FROM events AS e JOIN messages AS m ON m.id = e.message_id "
    "JOIN custom_channels AS c ON c.id = m.custom_channel_id "
    "WHERE e.id IN (SELECT value FROM json_each(?)) AND e.event_type = 'message_created' "
    f"AND m.sender_type = '{SenderType.USER}' AND m.status = '{MessageStatus.SENDING}' AND c.is_readonly = 0")


def _replies_carried_on_sqlite(db, event_ids: str) -> list[tuple[int, int]]:
    return db.execute(_REPLIES_CARRIED_SQLITE, (event_ids,)).fetchall()


async def settle_replies(conn: AsyncConnection, finished: Sequence[FinishedDelivery], *, signer: Signer) -> None:
    """The dispatcher's ``on_finished``: called once per cycle, inside the
    transaction that records the deliveries that ended in it.

    When a delivery carried the ``message_created`` of a business user's
    reply still ``Sending`` on a bidirectional custom channel, the webhook was
    the way out: the reply becomes ``Success`` (delivered) or ``Failed``. One
    statement finds such replies among all of the cycle's deliveries; guarded
    on ``Sending``, so a second call for the same delivery does nothing.
    """
    delivered = {delivery.row.event_id: delivery.delivered for delivery in finished if not delivery.row.is_tryout}
    if not delivered:
        return
    if conn.dialect.name == "sqlite":  # one call to the connection's thread, not one per step of a cursor
        carried = await in_sqlite_thread(conn, _replies_carried_on_sqlite, json_array(sorted(delivered)))
    else:
        carried = (await conn.execute(_REPLIES_CARRIED, {"event_ids": sorted(delivered)})).all()
    for event_id, message_id in carried:
        await change_message_status(conn, signer, message_id, from_status=MessageStatus.SENDING,
                                    to_status=MessageStatus.SUCCESS if delivered[event_id] else MessageStatus.FAILED)


def replies_settled_by(signer: Signer):
    """``settle_replies`` bound to the platform's signer, as the dispatcher calls it."""

    async def on_finished(conn: AsyncConnection, finished: Sequence[FinishedDelivery]) -> None:
        await settle_replies(conn, finished, signer=signer)

    return on_finished


async def settle_partner_reply(conn: AsyncConnection, signer: Signer, message_id: int, accepted: bool) -> Message | None:
    """A simulated built-in partner's answer: the ``Sending`` reply becomes
    ``Success`` or ``Failed`` (once)."""
    on_partner = (await conn.execute(select(messages.c.id).where(
        messages.c.id == message_id, messages.c.custom_channel_id.is_(None)))).first()
    if on_partner is None:
        return None
    return await change_message_status(conn, signer, message_id, from_status=MessageStatus.SENDING,
                                       to_status=MessageStatus.SUCCESS if accepted else MessageStatus.FAILED)


# ---------------------------------------------------------------- built-in partners' conversations


async def receive_partner_message(conn: AsyncConnection, signer: Signer, *, org_id: int, business_id: str,
                                  partner: str, content: str, consumer_name: str | None = None,
                                  consumer_phone_number: str | None = None, consumer_email: str | None = None,
                                  consumer_img: str | None = None, conversation_id: int | None = None,
                                  status: str = "Open", issues: Sequence[str] = (),
                                  content_type: str = "Text") -> tuple[int, int]:
    """A consumer's message arriving from a built-in partner (Facebook, SMS, ...),
    in a new conversation or in ``conversation_id``; returns ``(conversation_id, message_id)``.

    The partners cannot be reached from here: the demo and the tests use this
    to have conversations to reply in.
    """
    if partner not in BUILT_IN_PARTNERS:
        raise MessagingError(f"{partner!r} is not a built-in partner; one of: {', '.join(sorted(BUILT_IN_PARTNERS))}")
    now = utcnow()
    if conversation_id is not None:
        owner = (await conn.execute(select(conversations.c.org_id).where(
            conversations.c.id == conversation_id, conversations.c.messaging_partner == partner))).scalar()
        if owner != org_id:
            raise NotFound(f"no {partner} conversation {conversation_id} in this organization")
    else:
        owner = (await conn.execute(select(businesses.c.org_id).where(businesses.c.id == business_id))).scalar()
        if owner != org_id:
            raise NotFound(f"no business {business_id!r} in this organization")
        conversation_id = (await conn.execute(insert(conversations).values(
            org_id=org_id, business_id=business_id, messaging_partner=partner, consumer_name=consumer_name,
            consumer_phone_number=consumer_phone_number, consumer_email=consumer_email, consumer_img=consumer_img,
            is_read=False, status=status, issues=list(issues), created_at=now, first_message_date=now,
            has_one_user_message=False, is_expired=False, is_solved=False, is_automated=False,
        ).returning(conversations.c.id))).scalar_one()
    message_id = (await conn.execute(insert(messages).values(
        conversation_id=conversation_id, org_id=org_id, date=now, content_type=content_type,
        sender_type=str(SenderType.CONSUMER), sender_label=consumer_name or "", status=str(MessageStatus.SUCCESS),
        is_deleted=False, is_automated=False, content=content, user_id=None,
    ).returning(messages.c.id))).scalar_one()
    await conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(
        last_message_id=message_id, is_read=False))
    row = await load_conversation(conn, conversation_id)
    message = message_from_row(row, "last__")
    await emit(conn, signer, "message_created", org_id=org_id, message=message,
               conversation=conversation_from_row(row, last_message=message))
    return conversation_id, message_id


async def pending_partner_replies(conn: AsyncConnection, limit: int = 10_000) -> list[int]:
    """Replies still ``Sending`` through a built-in partner (to resume after a restart)."""
    return list((await conn.execute(
        select(messages.c.id).where(
            and_(messages.c.status == str(MessageStatus.SENDING), messages.c.sender_type == str(SenderType.USER),
                 messages.c.custom_channel_id.is_(None)))
        .order_by(messages.c.id).limit(limit)
    )).scalars())
