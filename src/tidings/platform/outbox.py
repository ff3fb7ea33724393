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

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.contract import MessageEvent, dump_event, utcnow
from tidings.contract.signing import Signer
from tidings.store.platform_tables import deliveries, delivery_sequences, events, webhook_configs

PENDING = "pending"
HELD = "held"  # the configuration is paused; sent once it is resumed


def new_webhook_id() -> str:
    """A Standard Webhooks message id, unique across databases."""
    return "msg_" + secrets.token_hex(12)


async def next_sequence(conn: AsyncConnection, webhook_config_id: int, conversation_id: int) -> int:
    """The next sequence number of a conversation's events for one configuration.

    An atomic increment, so concurrent writers on PostgreSQL never share a number.
    """
    bumped = await conn.execute(
        update(delivery_sequences)
        .where(delivery_sequences.c.webhook_config_id == webhook_config_id,
               delivery_sequences.c.conversation_id == conversation_id)
        .values(last_sequence=delivery_sequences.c.last_sequence + 1)
        .returning(delivery_sequences.c.last_sequence)
    )
    row = bumped.first()
    if row is not None:
        return row[0]
    await conn.execute(insert(delivery_sequences).values(
        webhook_config_id=webhook_config_id, conversation_id=conversation_id, last_sequence=1))
    return 1


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
    configs = (await conn.execute(
        select(webhook_configs.c.id, webhook_configs.c.paused)
        .where(webhook_configs.c.org_id == org_id, webhook_configs.c.event_type == event.type)
    )).all()
    if not configs:
        return event_id
    signature = signer.vendor_signature(body)
    due = time.time() if now is None else now
    rows = []
    for config_id, paused in configs:
        rows.append({
            "event_id": event_id, "webhook_config_id": config_id, "org_id": org_id,
            "webhook_id": new_webhook_id(), "signature": signature,
            "conversation_id": conversation_id,
            "sequence": await next_sequence(conn, config_id, conversation_id),
            "status": HELD if paused else PENDING, "attempt_count": 0, "next_attempt_at": due,
            "created_at": created,
        })
    await conn.execute(insert(deliveries), rows)
    return event_id
