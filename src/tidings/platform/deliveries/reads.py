"""Reading deliveries and their attempts, for the API and the dashboard.

Each read of one organization's rows filters on its id: a page never sees
another organization's rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.platform import configurations
from tidings.platform.deliveries.statuses import DELIVERED, HEAD, QUEUED
from tidings.store.pairs import pairs_in
from tidings.store.platform_tables import attempts, deliveries, events, webhook_configs

PAGE_SIZE = 100
HELD_BACK_LIMIT = 50  # held-back conversations listed, those that waited longest first
HEALTH_SAMPLE = 1000  # attempts per configuration that the health figures look at, newest first

DELIVERY_COLUMNS = (
    deliveries.c.id, deliveries.c.event_id, deliveries.c.webhook_config_id, deliveries.c.org_id,
    deliveries.c.webhook_id, deliveries.c.status, deliveries.c.attempt_count, deliveries.c.next_attempt_at,
    deliveries.c.last_status_code, deliveries.c.last_error, deliveries.c.is_tryout, deliveries.c.conversation_id,
    deliveries.c.sequence, deliveries.c.created_at, deliveries.c.finished_at,
)


# ---------------------------------------------------------------- the API


def _deliveries_of(config_id: int, status: str | None):
    where = [deliveries.c.webhook_config_id == config_id]
    if status is not None:
        where.append(deliveries.c.status == status)
    return where


async def count_deliveries(conn: AsyncConnection, *, config_id: int, status: str | None = None) -> int:
    return (await conn.execute(
        select(func.count()).select_from(deliveries).where(*_deliveries_of(config_id, status)))).scalar_one()


async def list_deliveries(conn: AsyncConnection, *, config_id: int, status: str | None = None,
                          offset: int = 0, limit: int = 50) -> list[Any]:
    """Deliveries of a configuration, newest first (served by ``ix_deliveries_config_status_id``)."""
    return list((await conn.execute(
        select(*DELIVERY_COLUMNS, events.c.event_type)
        .join_from(deliveries, events, events.c.id == deliveries.c.event_id)
        .where(*_deliveries_of(config_id, status))
        .order_by(deliveries.c.id.desc()).offset(offset).limit(limit))).all())


async def get_delivery(conn: AsyncConnection, *, delivery_id: int, org_id: int) -> Any | None:
    return (await conn.execute(
        select(*DELIVERY_COLUMNS, events.c.event_type)
        .join_from(deliveries, events, events.c.id == deliveries.c.event_id)
        .where(deliveries.c.id == delivery_id, deliveries.c.org_id == org_id))).first()


async def list_attempts(conn: AsyncConnection, *, delivery_id: int) -> list[Any]:
    return list((await conn.execute(
        select(attempts).where(attempts.c.delivery_id == delivery_id).order_by(attempts.c.id))).all())


async def newest_event_body(conn: AsyncConnection, *, org_id: int, event_type: str) -> bytes | None:
    """The body of the organization's newest event of a type (for a tryout)."""
    return (await conn.execute(
        select(events.c.body).where(events.c.org_id == org_id, events.c.event_type == event_type)
        .order_by(events.c.id.desc()).limit(1))).scalar()


# ---------------------------------------------------------------- the dashboard


@dataclass(frozen=True)
class DeliveryFilter:
    """The filters of the deliveries page; ``None`` means any."""

    status: str | None = None
    event_type: str | None = None
    config_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, row: Any) -> bool:
        """Whether a delivery row (as ``_delivery_columns`` selects it) passes the filters."""
        return (
            (self.status is None or row.status == self.status)
            and (self.event_type is None or row.event_type == self.event_type)
            and (self.config_id is None or row.webhook_config_id == self.config_id)
            and (self.since is None or row.created_at >= self.since)
            and (self.until is None or row.created_at < self.until)
        )


def _delivery_columns():
    return select(
        deliveries.c.id,
        deliveries.c.event_id,
        deliveries.c.webhook_config_id,
        deliveries.c.webhook_id,
        deliveries.c.status,
        deliveries.c.attempt_count,
        deliveries.c.next_attempt_at,
        deliveries.c.last_status_code,
        deliveries.c.last_error,
        deliveries.c.is_tryout,
        deliveries.c.created_at,
        deliveries.c.finished_at,
        deliveries.c.conversation_id,
        events.c.event_type,
        events.c.message_id,
        webhook_configs.c.url,
    ).select_from(
        deliveries.join(events, events.c.id == deliveries.c.event_id).join(
            webhook_configs, webhook_configs.c.id == deliveries.c.webhook_config_id
        )
    )


def _filtered(query, org_id: int, wanted: DeliveryFilter):
    query = query.where(deliveries.c.org_id == org_id)
    if wanted.status is not None:
        query = query.where(deliveries.c.status == wanted.status)
    if wanted.event_type is not None:
        query = query.where(events.c.event_type == wanted.event_type)
    if wanted.config_id is not None:
        query = query.where(deliveries.c.webhook_config_id == wanted.config_id)
    if wanted.since is not None:
        query = query.where(deliveries.c.created_at >= wanted.since)
    if wanted.until is not None:
        query = query.where(deliveries.c.created_at < wanted.until)
    return query


async def recent_attempts(
    conn: AsyncConnection, org_id: int, config_id: int, since: datetime, limit: int = HEALTH_SAMPLE
) -> list[Any]:
    """The newest attempts of one configuration started at ``since`` or later, newest first."""
    return (await conn.execute(
        select(attempts.c.started_at, attempts.c.duration_ms, attempts.c.status_code, attempts.c.error,
               attempts.c.response_excerpt)
        .select_from(attempts.join(deliveries, deliveries.c.id == attempts.c.delivery_id))
        .where(deliveries.c.org_id == org_id, deliveries.c.webhook_config_id == config_id,
               attempts.c.started_at >= since)
        .order_by(attempts.c.id.desc())
        .limit(limit)
    )).all()


async def delivered_times(conn: AsyncConnection, org_id: int, config_id: int, since: datetime,
                          limit: int = HEALTH_SAMPLE) -> list[tuple[datetime, datetime]]:
    """``(created_at, finished_at)`` of one configuration's deliveries delivered at ``since`` or later, newest first."""
    return [(row.created_at, row.finished_at) for row in (await conn.execute(
        select(deliveries.c.created_at, deliveries.c.finished_at)
        .where(deliveries.c.org_id == org_id, deliveries.c.webhook_config_id == config_id,
               deliveries.c.status == DELIVERED, deliveries.c.finished_at >= since)
        .order_by(deliveries.c.id.desc())
        .limit(limit)
    )).all()]


async def status_counts(conn: AsyncConnection, org_id: int) -> dict[int, dict[str, int]]:
    """How many deliveries each configuration has in each status."""
    rows = (await conn.execute(
        select(deliveries.c.webhook_config_id, deliveries.c.status, func.count())
        .where(deliveries.c.org_id == org_id)
        .group_by(deliveries.c.webhook_config_id, deliveries.c.status)
    )).all()
    counts: dict[int, dict[str, int]] = {}
    for config_id, status, count in rows:
        counts.setdefault(config_id, {})[status] = count
    return counts


async def delivery_page(
    conn: AsyncConnection, org_id: int, wanted: DeliveryFilter, before_id: int | None = None,
    limit: int = PAGE_SIZE,
) -> list[Any]:
    """Deliveries that pass ``wanted``, newest first, older than ``before_id`` when given."""
    query = _filtered(_delivery_columns(), org_id, wanted)
    if before_id is not None:
        query = query.where(deliveries.c.id < before_id)
    return (await conn.execute(query.order_by(deliveries.c.id.desc()).limit(limit))).all()


async def deliveries_by_id(conn: AsyncConnection, org_id: int, ids: Iterable[int]) -> list[Any]:
    wanted = sorted(set(ids))
    if not wanted:
        return []
    return (await conn.execute(
        _delivery_columns().where(deliveries.c.org_id == org_id, deliveries.c.id.in_(wanted))
        .order_by(deliveries.c.id)
    )).all()


async def delivery(conn: AsyncConnection, org_id: int, delivery_id: int) -> Any | None:
    """One delivery with its event's body and the configuration's URL."""
    return (await conn.execute(
        _delivery_columns().add_columns(deliveries.c.signature, deliveries.c.sequence, deliveries.c.worker_id,
                                        events.c.body)
        .where(deliveries.c.org_id == org_id, deliveries.c.id == delivery_id)
    )).first()


async def delivery_attempts(conn: AsyncConnection, delivery_id: int, after_id: int = 0) -> list[Any]:
    """The attempts of one delivery (already checked to be the organization's), oldest first."""
    return (await conn.execute(
        select(attempts).where(attempts.c.delivery_id == delivery_id, attempts.c.id > after_id)
        .order_by(attempts.c.id)
    )).all()


@dataclass(frozen=True)
class Head:
    """The newest delivery and attempt ids of the whole database: where a live page starts."""

    delivery_id: int
    attempt_id: int

    def spelled(self) -> str:
        return f"{self.delivery_id}.{self.attempt_id}"

    @classmethod
    def parse(cls, text: str | None) -> Head | None:
        """``"12.40"`` -> ``Head(12, 40)``; ``None`` for anything else.

        >>> Head.parse("12.40"), Head.parse("x")
        (Head(delivery_id=12, attempt_id=40), None)
        """
        parts = (text or "").split(".")
        if len(parts) != 2 or not all(part.isdigit() and len(part) <= 18 for part in parts):
            return None
        return cls(int(parts[0]), int(parts[1]))


async def head(conn: AsyncConnection) -> Head:
    delivery_id = (await conn.execute(select(func.coalesce(func.max(deliveries.c.id), 0)))).scalar_one()
    attempt_id = (await conn.execute(select(func.coalesce(func.max(attempts.c.id), 0)))).scalar_one()
    return Head(delivery_id, attempt_id)


@dataclass(frozen=True)
class Changes:
    """Deliveries of one organization created or attempted between two heads."""

    new_ids: Sequence[int]
    attempted_ids: Sequence[int]  # deliveries with a new attempt
    head: Head


async def changes_since(conn: AsyncConnection, org_id: int, since: Head, limit: int = PAGE_SIZE) -> Changes:
    """What happened to the organization's deliveries after ``since``, up to today's head.

    Both queries are range scans of a primary key. The head is read first, so
    a row committed while this runs is found by the next call.
    """
    now = await head(conn)
    new_ids = (await conn.execute(
        select(deliveries.c.id)
        .where(deliveries.c.id > since.delivery_id, deliveries.c.id <= now.delivery_id,
               deliveries.c.org_id == org_id)
        .order_by(deliveries.c.id).limit(limit)
    )).scalars().all()
    attempted = (await conn.execute(
        select(attempts.c.delivery_id, func.max(attempts.c.id))
        .select_from(attempts.join(deliveries, deliveries.c.id == attempts.c.delivery_id))
        .where(attempts.c.id > since.attempt_id, attempts.c.id <= now.attempt_id, deliveries.c.org_id == org_id)
        .group_by(attempts.c.delivery_id)
        .limit(limit)
    )).all()
    return Changes(new_ids=list(new_ids), attempted_ids=[row[0] for row in attempted], head=now)


# ---------------------------------------------------------------- ordered delivery: held-back conversations


@dataclass(frozen=True)
class HeldBackConversation:
    """A conversation of one configuration whose later deliveries wait ``queued`` behind its head."""

    config: Any  # the configuration's row
    conversation_id: int
    waiting: int  # queued deliveries
    waiting_since: datetime  # when the oldest of them was created
    head: Any | None  # the delivery they wait behind (``None``: there is none)


@dataclass(frozen=True)
class HeldBack:
    conversations: Sequence[HeldBackConversation]  # up to ``HELD_BACK_LIMIT``
    total_conversations: int
    total_waiting: int


_HEAD_COLUMNS = (
    deliveries.c.id, deliveries.c.webhook_config_id, deliveries.c.conversation_id, deliveries.c.sequence,
    deliveries.c.status, deliveries.c.attempt_count, deliveries.c.next_attempt_at, deliveries.c.last_status_code,
    deliveries.c.last_error, deliveries.c.created_at,
)


async def conversation_heads(conn: AsyncConnection, org_id: int,
                             pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], Any]:
    """The head of each (configuration, conversation): its delivery that is
    pending, being sent or held (the lowest sequence, should there be more).
    Looked up by ``ix_deliveries_order``."""
    wanted = sorted(set(pairs))
    if not wanted:
        return {}
    rows = (await conn.execute(
        select(*_HEAD_COLUMNS)
        .where(pairs_in(deliveries.c.webhook_config_id, deliveries.c.conversation_id, wanted),
               deliveries.c.status.in_(HEAD), deliveries.c.org_id == org_id)
        .order_by(deliveries.c.sequence.desc())
    )).all()
    return {(row.webhook_config_id, row.conversation_id): row for row in rows}  # the lowest sequence wins


async def held_back(conn: AsyncConnection, org_id: int, config_id: int | None = None,
                    limit: int = HELD_BACK_LIMIT) -> HeldBack:
    """The organization's conversations with ``queued`` deliveries (of one
    configuration when ``config_id`` is given), those that waited longest first.

    The queued rows are found by ``ix_deliveries_config_status_id`` for each
    of the organization's configurations, their heads by ``ix_deliveries_order``.
    The queued rows are a materialized CTE: grouped straight from the table,
    SQLite prefers ``ix_deliveries_order`` for its grouping order, and reads
    every delivery the configuration ever had.
    """
    configs = {row.id: row for row in await configurations.of_organization(conn, org_id) if config_id is None or row.id == config_id}
    if not configs:
        return HeldBack([], 0, 0)
    queued = (
        select(deliveries.c.webhook_config_id, deliveries.c.conversation_id, deliveries.c.created_at)
        .where(deliveries.c.webhook_config_id.in_(sorted(configs)), deliveries.c.status == QUEUED,
               deliveries.c.org_id == org_id)
        .cte("queued").prefix_with("MATERIALIZED")
    )
    waiting = func.count().label("waiting")
    since = func.min(queued.c.created_at).label("since")
    groups = (
        select(queued.c.webhook_config_id, queued.c.conversation_id, waiting, since)
        .group_by(queued.c.webhook_config_id, queued.c.conversation_id)
    )
    rows = (await conn.execute(
        groups.order_by(since, queued.c.webhook_config_id, queued.c.conversation_id).limit(limit))).all()
    if not rows:
        return HeldBack([], 0, 0)
    if len(rows) < limit:
        total_conversations, total_waiting = len(rows), sum(row.waiting for row in rows)
    else:  # more than are shown: count them all
        counted = groups.subquery()
        total_conversations, total_waiting = (await conn.execute(
            select(func.count(), func.coalesce(func.sum(counted.c.waiting), 0)).select_from(counted))).one()
    heads = await conversation_heads(conn, org_id, [(row.webhook_config_id, row.conversation_id) for row in rows])
    return HeldBack(
        [HeldBackConversation(configs[row.webhook_config_id], row.conversation_id, row.waiting, row.since,
                              heads.get((row.webhook_config_id, row.conversation_id)))
         for row in rows],
        int(total_conversations), int(total_waiting),
    )

