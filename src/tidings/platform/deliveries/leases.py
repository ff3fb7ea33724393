"""Workers and their leases: a delivery ``delivering`` is held by the worker
named in ``worker_id``; a worker proves it is alive by its heartbeat, and
the deliveries of a worker whose heartbeat stopped are handed back (stalled
work is found by heartbeat, never by age)."""

from __future__ import annotations

from sqlalchemy import and_, delete, exists, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.platform.deliveries.statuses import DELIVERING, HEAD, PENDING, QUEUED
from tidings.platform.webhook_rules import BY_CONVERSATION
from tidings.store.platform_tables import deliveries, webhook_configs, workers

__all__ = ["hand_back_held_by", "heartbeat", "reap_orphans", "reap_stalled", "register_worker",
           "unregister_worker"]

_before = deliveries.alias("before")
_HAND_BACK_SLICE = 10_000  # ids per statement: both engines take about 32,000 parameters at most


def _held_by(worker_id: str):
    return and_(deliveries.c.status == DELIVERING, deliveries.c.worker_id == worker_id)


async def register_worker(conn: AsyncConnection, *, worker_id: str, hostname: str, pid: int, now: float) -> None:
    """A worker says it exists; a worker id that is already known is taken over."""
    taken_over = await conn.execute(
        update(workers).where(workers.c.id == worker_id)
        .values(hostname=hostname, pid=pid, started_at=now, heartbeat_at=now))
    if taken_over.rowcount == 0:
        await conn.execute(insert(workers).values(id=worker_id, hostname=hostname, pid=pid, started_at=now,
                                                  heartbeat_at=now))


async def heartbeat(conn: AsyncConnection, *, worker_id: str, now: float) -> bool:
    """``False`` when the worker's row is gone: it was declared dead and its
    deliveries were handed back; it must register again."""
    beat = await conn.execute(update(workers).where(workers.c.id == worker_id).values(heartbeat_at=now))
    return beat.rowcount == 1


async def reap_stalled(conn: AsyncConnection, *, now: float, stale_after: float) -> int:
    """Workers whose heartbeat is older than ``stale_after`` are deleted and
    their deliveries handed back; returns how many.

    The ``DELETE ... RETURNING`` comes first, so that on PostgreSQL a worker
    that beats at that moment either beats first (and is not reaped) or finds
    its row gone (and knows it was)."""
    dead = list((await conn.execute(
        delete(workers).where(workers.c.heartbeat_at < now - stale_after).returning(workers.c.id))).scalars())
    if not dead:
        return 0
    return await _hand_back(conn, and_(deliveries.c.status == DELIVERING, deliveries.c.worker_id.in_(dead)))


async def reap_orphans(conn: AsyncConnection) -> int:
    """``delivering`` deliveries whose worker is not registered at all are
    handed back (a safety net run when a worker starts; it scans the table)."""
    return await _hand_back(conn, and_(
        deliveries.c.status == DELIVERING,
        or_(deliveries.c.worker_id.is_(None), deliveries.c.worker_id.not_in(select(workers.c.id)))))


async def hand_back_held_by(conn: AsyncConnection, *, worker_id: str) -> int:
    """Every delivery ``worker_id`` holds is handed back, due as it was."""
    return await _hand_back(conn, _held_by(worker_id))


async def unregister_worker(conn: AsyncConnection, *, worker_id: str) -> int:
    """A worker stopping cleanly hands back what it still holds and leaves."""
    handed_back = await hand_back_held_by(conn, worker_id=worker_id)
    await conn.execute(delete(workers).where(workers.c.id == worker_id))
    return handed_back


async def _hand_back(conn: AsyncConnection, which) -> int:
    """The ``delivering`` deliveries ``which`` selects go back to ``pending``,
    due as they were; of an ordered conversation, one that has an earlier
    delivery pending, being sent or held (a head's follower, claimed with it)
    goes back to ``queued`` behind it. Returns how many went back."""
    ids = list((await conn.execute(
        update(deliveries).where(which).values(status=PENDING, worker_id=None).returning(deliveries.c.id))).scalars())
    for start in range(0, len(ids), _HAND_BACK_SLICE):
        await conn.execute(
            update(deliveries)
            .where(deliveries.c.id.in_(ids[start:start + _HAND_BACK_SLICE]), deliveries.c.status == PENDING,
                   deliveries.c.conversation_id.is_not(None),
                   deliveries.c.webhook_config_id.in_(
                       select(webhook_configs.c.id).where(webhook_configs.c.ordering == BY_CONVERSATION)),
                   exists().where(_before.c.webhook_config_id == deliveries.c.webhook_config_id,
                                  _before.c.conversation_id == deliveries.c.conversation_id,
                                  _before.c.status.in_(HEAD), _before.c.sequence < deliveries.c.sequence))
            .values(status=QUEUED))
    return len(ids)
