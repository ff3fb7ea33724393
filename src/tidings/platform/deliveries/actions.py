"""The operator's actions on deliveries: pause and resume a configuration,
resend a delivery, recover a configuration's failures, change its ordering,
delete it. Each runs in the caller's transaction; every status change is
guarded by the status it expects."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.platform.deliveries.cycle import cycle_of
from tidings.platform.deliveries.statuses import DELIVERING, FAILED, FINAL, HELD, PENDING, QUEUED
from tidings.platform.deliveries.wakeup import deliveries_written
from tidings.platform.webhook_rules import BY_CONVERSATION
from tidings.store.platform_tables import deliveries, delivery_sequences, webhook_configs

__all__ = ["delete_configuration", "ordering_changed", "pause_configuration", "purge_deleted_configurations",
           "recover", "resend", "resume_configuration"]

_live = webhook_configs.c.deleted_at.is_(None)


async def pause_configuration(conn: AsyncConnection, *, config_id: int, reason: str, now: datetime) -> int | None:
    """The configuration stops sending; its ``pending`` deliveries become ``held``.

    Returns how many were held, or ``None`` if it was already paused (or does
    not exist). Deliveries being sent at this moment finish; the dispatcher
    holds any it claims afterwards, since it reads ``paused`` after claiming.
    """
    paused = await conn.execute(
        update(webhook_configs).where(webhook_configs.c.id == config_id, webhook_configs.c.paused.is_(False), _live)
        .values(paused=True, paused_reason=reason[:500], updated_at=now))
    if paused.rowcount == 0:
        return None
    held = await conn.execute(
        update(deliveries).where(deliveries.c.webhook_config_id == config_id, deliveries.c.status == PENDING)
        .values(status=HELD))
    return held.rowcount


async def resume_configuration(conn: AsyncConnection, *, config_id: int, now: float,
                               updated_at: datetime) -> int | None:
    """The configuration sends again; its ``held`` deliveries are due now.
    Returns how many were released, or ``None`` if it was not paused."""
    resumed = await conn.execute(
        update(webhook_configs).where(webhook_configs.c.id == config_id, webhook_configs.c.paused.is_(True), _live)
        .values(paused=False, paused_reason=None, updated_at=updated_at))
    if resumed.rowcount == 0:
        return None
    released = await conn.execute(
        update(deliveries).where(deliveries.c.webhook_config_id == config_id, deliveries.c.status == HELD)
        .values(status=PENDING, next_attempt_at=now))
    if released.rowcount:
        await deliveries_written(conn)
    return released.rowcount


def _requeued(status: str, now: float) -> dict:
    # A re-sent delivery starts a new series of attempts, with a full retry budget.
    return {"status": status, "next_attempt_at": now, "attempt_count": 0, "finished_at": None, "worker_id": None}


async def _configuration_state(conn: AsyncConnection, config_id: int) -> tuple[bool, bool] | None:
    """``(ordered, paused)`` of a live configuration, or ``None``."""
    row = (await conn.execute(select(webhook_configs.c.ordering, webhook_configs.c.paused)
                              .where(webhook_configs.c.id == config_id, _live))).first()
    return None if row is None else (row.ordering == BY_CONVERSATION, bool(row.paused))


async def resend(conn: AsyncConnection, *, delivery_id: int, now: float) -> bool:
    """A finished delivery (``delivered`` or ``failed``) is queued again: same
    body, same signature, same ``webhook-id``; ``held`` while its
    configuration is paused. ``False`` if it is not finished.

    With ordered delivery it waits, ``queued``, behind what its conversation
    is sending, and goes before that conversation's later events."""
    row = (await conn.execute(select(deliveries.c.webhook_config_id, deliveries.c.conversation_id)
                              .where(deliveries.c.id == delivery_id))).first()
    state = None if row is None else await _configuration_state(conn, row.webhook_config_id)
    if state is None:
        return False
    ordered, paused = state
    ordered = ordered and row.conversation_id is not None
    waiting = HELD if paused else PENDING
    requeued = await conn.execute(
        update(deliveries).where(deliveries.c.id == delivery_id, deliveries.c.status.in_(FINAL))
        .values(**_requeued(QUEUED if ordered else waiting, now)))
    if requeued.rowcount == 1 and ordered:
        await cycle_of(conn).promote(conn, [(delivery_id, row.webhook_config_id, row.conversation_id)],
                                     status=waiting, worker_id=None, now=now, per_conversation=1)
    if requeued.rowcount == 1:
        await deliveries_written(conn)
    return requeued.rowcount == 1


async def recover(conn: AsyncConnection, *, config_id: int, since: datetime, now: float) -> int:
    """Every ``failed`` delivery of a configuration created since ``since`` is
    queued again (``held`` while it is paused; with ordered delivery,
    ``queued`` in sequence order behind what each conversation is sending)."""
    state = await _configuration_state(conn, config_id)
    if state is None:
        return 0
    ordered, paused = state
    waiting = HELD if paused else PENDING
    recovered = await conn.execute(
        update(deliveries)
        .where(deliveries.c.webhook_config_id == config_id, deliveries.c.status == FAILED,
               deliveries.c.created_at >= since)
        .values(**_requeued(QUEUED if ordered else waiting, now)))
    if ordered and recovered.rowcount:
        await promote_heads(conn, config_id=config_id, status=waiting, now=now)
    if recovered.rowcount:
        await deliveries_written(conn)
    return recovered.rowcount


async def promote_heads(conn: AsyncConnection, *, config_id: int, status: str, now: float) -> int:
    """Every conversation of an ordered configuration with nothing being sent
    gets its next ``queued`` delivery promoted to ``status``. Returns how many."""
    named = (await conn.execute(
        select(func.min(deliveries.c.id), deliveries.c.conversation_id)
        .where(deliveries.c.webhook_config_id == config_id, deliveries.c.status == QUEUED)
        .group_by(deliveries.c.conversation_id))).all()
    promoted = await cycle_of(conn).promote(conn, [(delivery_id, config_id, conversation_id)
                                                   for delivery_id, conversation_id in named],
                                            status=status, worker_id=None, now=now, per_conversation=1)
    return len(promoted)


async def ordering_changed(conn: AsyncConnection, *, config_id: int, ordering: str, now: float) -> None:
    """A configuration's ordering changed: without ordering nothing waits any
    more; with it, deliveries already due stay due and new ones queue."""
    if ordering != BY_CONVERSATION:
        released = await conn.execute(update(deliveries).where(deliveries.c.webhook_config_id == config_id,
                                                               deliveries.c.status == QUEUED)
                                      .values(status=PENDING, next_attempt_at=now))
        if released.rowcount:
            await deliveries_written(conn)


async def delete_configuration(conn: AsyncConnection, *, config_id: int, now: datetime) -> bool:
    """The configuration is deleted with its delivery log; ``False`` if there was none.

    It is marked deleted at once (no read, no new event and no claim sees it
    again) and its deliveries go with their attempts, but for those being sent
    at this moment: the worker that holds them drops their results and the
    rows when the attempts end (``cycle``), and
    ``purge_deleted_configurations`` removes the configuration's row once
    nothing refers to it any more. So a delete never pulls a row from under a
    worker."""
    marked = await conn.execute(update(webhook_configs).where(webhook_configs.c.id == config_id, _live)
                                .values(deleted_at=now, updated_at=now))
    if marked.rowcount == 0:
        return False
    await conn.execute(delete(deliveries).where(deliveries.c.webhook_config_id == config_id,
                                                deliveries.c.status != DELIVERING))
    return True


async def purge_deleted_configurations(conn: AsyncConnection) -> int:
    """Deleted configurations go for good once none of their deliveries is
    being sent: what is left of their deliveries, their sequence numbers and
    their rows. Returns how many configurations went (one read of the small
    configurations table when there is nothing to purge)."""
    deleted = (await conn.execute(select(webhook_configs.c.id)
                                  .where(webhook_configs.c.deleted_at.is_not(None)))).scalars().all()
    if not deleted:
        return 0
    await conn.execute(delete(deliveries).where(deliveries.c.webhook_config_id.in_(deleted),
                                                deliveries.c.status != DELIVERING))
    gone = select(webhook_configs.c.id).where(
        webhook_configs.c.id.in_(deleted), ~exists().where(deliveries.c.webhook_config_id == webhook_configs.c.id))
    await conn.execute(delete(delivery_sequences).where(delivery_sequences.c.webhook_config_id.in_(gone)))
    purged = await conn.execute(delete(webhook_configs).where(webhook_configs.c.id.in_(gone)))
    return purged.rowcount
