"""Webhook configurations in the database: every statement that reads or
writes one, in one place.

A deleted configuration keeps its row, marked ``deleted_at``, until nothing
refers to it (``deliveries.actions``); every read here sees live ones only.
The rules a configuration obeys are pure functions of ``webhook_rules``.
Its ``whsec_`` secrets and custom headers' values are encrypted here when
written, and decrypted by ``secrets_now`` and ``clear_headers`` (``sealed``),
the one way every reader gets them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.contract import EventType
from tidings.platform.sealed import open_value, sealer
from tidings.store.platform_tables import webhook_configs

__all__ = ["clear_headers", "clear_secret", "count_of_organization", "create", "event_type_ids", "event_types",
           "for_event_type", "get", "live_secrets", "of_organization", "page_of_organization", "rotate_secret",
           "secrets_now", "SUBSCRIBED", "update_fields"]

_live = webhook_configs.c.deleted_at.is_(None)


async def of_organization(conn: AsyncConnection, org_id: int) -> list[Any]:
    """The organization's configurations, oldest first."""
    return list((await conn.execute(
        select(webhook_configs).where(webhook_configs.c.org_id == org_id, _live).order_by(webhook_configs.c.id)
    )).all())


async def count_of_organization(conn: AsyncConnection, org_id: int) -> int:
    return (await conn.execute(select(func.count()).select_from(webhook_configs)
                               .where(webhook_configs.c.org_id == org_id, _live))).scalar_one()


async def page_of_organization(conn: AsyncConnection, org_id: int, *, offset: int, limit: int) -> list[Any]:
    return list((await conn.execute(
        select(webhook_configs).where(webhook_configs.c.org_id == org_id, _live)
        .order_by(webhook_configs.c.id).offset(offset).limit(limit))).all())


async def get(conn: AsyncConnection, *, config_id: int, org_id: int) -> Any | None:
    return (await conn.execute(select(webhook_configs).where(
        webhook_configs.c.id == config_id, webhook_configs.c.org_id == org_id, _live))).first()


async def event_type_ids(conn: AsyncConnection, org_id: int) -> dict[str, int]:
    """The organization's configuration of each event type, by event type."""
    return dict((await conn.execute(select(webhook_configs.c.event_type, webhook_configs.c.id)
                                    .where(webhook_configs.c.org_id == org_id, _live))).all())


async def event_types(conn: AsyncConnection, org_id: int) -> list[str]:
    """The event types worth offering in a filter: the contract's and the organization's configurations'."""
    configured = (await conn.execute(select(webhook_configs.c.event_type).distinct()
                                     .where(webhook_configs.c.org_id == org_id, _live))).scalars()
    return sorted(set(EventType.known_values) | set(configured))


async def for_event_type(conn: AsyncConnection, *, org_id: int, event_type: str) -> Any | None:
    return (await conn.execute(select(webhook_configs).where(
        webhook_configs.c.org_id == org_id, webhook_configs.c.event_type == event_type, _live))).first()


# ``(id, org_id, event_type, paused, ordering)`` of the configurations that
# receive events of some organizations (:org_ids) and types (:event_types), by
# id; the outbox runs it on a synchronous connection.
SUBSCRIBED = (
    select(webhook_configs.c.id, webhook_configs.c.org_id, webhook_configs.c.event_type, webhook_configs.c.paused,
           webhook_configs.c.ordering)
    .where(webhook_configs.c.org_id.in_(bindparam("org_ids", expanding=True)),
           webhook_configs.c.event_type.in_(bindparam("event_types", expanding=True)), _live)
    .order_by(webhook_configs.c.id))


async def create(conn: AsyncConnection, *, org_id: int, url: str, event_type: str,
                 custom_headers: Mapping[str, str], ordering: str, secret: str, now: datetime) -> Any:
    return (await conn.execute(insert(webhook_configs).values(
        org_id=org_id, url=url, event_type=event_type, custom_headers=sealer().seal_headers(custom_headers),
        ordering=ordering, secret=sealer().seal(secret), created_at=now, updated_at=now,
    ).returning(webhook_configs))).first()


async def update_fields(conn: AsyncConnection, *, config_id: int, org_id: int, changes: Mapping[str, Any],
                        now: datetime) -> Any | None:
    """Changes the given columns of a live configuration; its new row, or ``None``."""
    if "custom_headers" in changes:
        changes = {**changes, "custom_headers": sealer().seal_headers(changes["custom_headers"])}
    return (await conn.execute(update(webhook_configs).where(
        webhook_configs.c.id == config_id, webhook_configs.c.org_id == org_id, _live)
        .values(**changes, updated_at=now).returning(webhook_configs))).first()


async def rotate_secret(conn: AsyncConnection, *, config_id: int, current_secret: str, new_secret: str,
                        previous_expires_at: float, now: datetime) -> Any | None:
    """``new_secret`` signs from now on, the current one beside it until
    ``previous_expires_at``; ``None`` if another rotation came first.
    ``current_secret`` is the stored (encrypted) value the caller read."""
    return (await conn.execute(update(webhook_configs).where(
        webhook_configs.c.id == config_id, webhook_configs.c.secret == current_secret, _live)
        .values(secret=sealer().seal(new_secret), previous_secret=current_secret,
                previous_secret_expires_at=previous_expires_at, updated_at=now)
        .returning(webhook_configs))).first()


def live_secrets(secret: str, previous_secret: str | None, previous_expires_at: float | None,
                 now: float) -> list[str]:
    """The secrets that sign now: the current one, and the previous one until it expires (pure)."""
    if previous_secret and previous_expires_at is not None and now < previous_expires_at:
        return [secret, previous_secret]
    return [secret]


def clear_secret(stored: str | None) -> str | None:
    """A stored secret, decrypted."""
    return None if stored is None else open_value(stored)


def secrets_now(config: Any, now: float) -> list[str]:
    """The clear secrets that sign for ``config`` (a row as stored) at ``now``."""
    return live_secrets(clear_secret(config.secret), clear_secret(config.previous_secret),
                        config.previous_secret_expires_at, now)


def clear_headers(config: Any) -> dict[str, str]:
    """The custom headers of ``config`` (a row as stored), decrypted: what is sent."""
    return {name: open_value(value) for name, value in (config.custom_headers or {}).items()}
