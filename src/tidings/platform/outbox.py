"""The transactional outbox: an event and its deliveries are written in the
caller's transaction, beside the change that caused them.

So a message, its event and one delivery per matching webhook configuration
commit together or not at all, and the dispatcher only ever sends events of
committed changes. The body is rendered here, once; the dispatcher sends
these bytes on every attempt.
"""

from __future__ import annotations

import secrets
import time

from sqlalchemy import exists, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.contract import MessageEvent, dump_event, utcnow
from tidings.contract.signing import Signer
from tidings.store.platform_tables import deliveries, delivery_sequences, events, webhook_configs

PENDING = "pending"
HELD = "held"  # the configuration is paused; sent once it is resumed
# Ordered delivery: waits until the delivery before it in its conversation
# (same configuration) is delivered or has finally failed.
QUEUED = "queued"
UNFINISHED = ("pending", "delivering", QUEUED, HELD)

ORDERED = "conversation"  # a configuration's ordering mode; the other is "none"


def new_webhook_id() -> str:
    """A Standard Webhooks message id, unique across databases."""
    return "msg_" + secrets.token_hex(12)


def _upsert(conn: AsyncConnection):
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert


async def next_sequence(conn: AsyncConnection, webhook_config_id: int, conversation_id: int) -> int:
    """The next sequence number of a conversation's events for one configuration.

    One atomic upsert: concurrent writers on PostgreSQL never share a number,
    and the row stays locked until the transaction ends, which serialises the
    writers and the dispatcher's promotions of one conversation (see
    ``delivery_store.promote_next``).
    """
    insert_ = _upsert(conn)(delivery_sequences).values(
        webhook_config_id=webhook_config_id, conversation_id=conversation_id, last_sequence=1)
    statement = insert_.on_conflict_do_update(
        index_elements=[delivery_sequences.c.webhook_config_id, delivery_sequences.c.conversation_id],
        set_={"last_sequence": delivery_sequences.c.last_sequence + 1},
    ).returning(delivery_sequences.c.last_sequence)
    return (await conn.execute(statement)).scalar_one()


def initial_status(*, ordered: bool, paused: bool, waits_behind_another: bool) -> str:
    """The status a new delivery starts in (pure)."""
    if ordered and waits_behind_another:
        return QUEUED
    return HELD if paused else PENDING


async def has_unfinished(conn: AsyncConnection, webhook_config_id: int, conversation_id: int) -> bool:
    """Whether a delivery of this conversation and configuration is still to finish."""
    return bool((await conn.execute(select(exists().where(
        deliveries.c.webhook_config_id == webhook_config_id, deliveries.c.conversation_id == conversation_id,
        deliveries.c.status.in_(UNFINISHED))))).scalar())


async def record_event(conn: AsyncConnection, *, org_id: int, event: MessageEvent, signer: Signer,
                       now: float | None = None) -> int:
    """Writes ``event`` and a delivery for each configuration of ``org_id``
    subscribed to its type; returns the event's id. Call inside a transaction."""
    body = dump_event(event)
    created = utcnow()
    conversation_id = event.payload.conversation.id
    event_id = (await conn.execute(
        insert(events).values(org_id=org_id, event_type=event.type, conversation_id=conversation_id,
                              message_id=event.payload.message.id, body=body, created_at=created)
        .returning(events.c.id)
    )).scalar_one()
    # In id order, so that concurrent writers lock sequence rows in one order.
    configs = (await conn.execute(
        select(webhook_configs.c.id, webhook_configs.c.paused, webhook_configs.c.ordering)
        .where(webhook_configs.c.org_id == org_id, webhook_configs.c.event_type == event.type)
        .order_by(webhook_configs.c.id)
    )).all()
    if not configs:
        return event_id
    signature = signer.vendor_signature(body)
    due = time.time() if now is None else now
    rows = []
    for config_id, paused, ordering in configs:
        sequence = await next_sequence(conn, config_id, conversation_id)
        ordered = ordering == ORDERED
        waits = ordered and sequence > 1 and await has_unfinished(conn, config_id, conversation_id)
        rows.append({
            "event_id": event_id, "webhook_config_id": config_id, "org_id": org_id,
            "webhook_id": new_webhook_id(), "signature": signature,
            "conversation_id": conversation_id, "sequence": sequence,
            "status": initial_status(ordered=ordered, paused=paused, waits_behind_another=waits),
            "attempt_count": 0, "next_attempt_at": due, "created_at": created,
        })
    await conn.execute(insert(deliveries), rows)
    return event_id
