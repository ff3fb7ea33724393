"""API keys after their creation: listed, revoked, their use noted; and the
dashboard's sessions, which a key opens and its revocation ends.

Only hashes are stored: of a key (SHA-256, ``auth.hash_api_key``) and of a
session id. A key is shown once, when it is made (``tenants``); a list shows
its name, prefix, creation and last use, never the key.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.store.platform_tables import api_keys, dashboard_sessions

__all__ = ["KEY_PREFIX_LENGTH", "LAST_USE_EVERY", "SESSION_LIFETIME", "end_session", "find_session", "key_prefix",
           "list_all_keys", "list_org_keys", "new_session_id", "note_use", "open_session", "revocation_count", "revoke", "session_hash", "use_is_stale"]

KEY_PREFIX_LENGTH = 12  # "tdk_" and 8 random characters: enough to tell keys apart, nothing to guess from
LAST_USE_EVERY = timedelta(minutes=1)  # a key's last use is written at most this often
SESSION_LIFETIME = 12 * 3600.0  # seconds a dashboard sign-in lasts

_live_key = api_keys.c.revoked_at.is_(None)


def key_prefix(key: str) -> str:
    """The first characters of a key, kept to tell keys apart in a list (pure)."""
    return key[:KEY_PREFIX_LENGTH]


def use_is_stale(last_used_at: datetime | None, now: datetime) -> bool:
    """Whether a key's last use is old enough to be written again (pure).

    >>> from datetime import UTC
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> use_is_stale(None, t), use_is_stale(t, t + timedelta(seconds=30)), use_is_stale(t, t + timedelta(seconds=61))
    (True, False, True)
    """
    return last_used_at is None or now - last_used_at >= LAST_USE_EVERY


async def list_org_keys(conn: AsyncConnection, org_id: int) -> list[Any]:
    """The organization's live keys, oldest first: id, name, prefix, kind, creation, last use."""
    return list((await conn.execute(
        select(api_keys.c.id, api_keys.c.name, api_keys.c.key_prefix, api_keys.c.kind, api_keys.c.org_id,
               api_keys.c.created_at, api_keys.c.last_used_at)
        .where(api_keys.c.org_id == org_id, _live_key).order_by(api_keys.c.id))).all())


async def list_all_keys(conn: AsyncConnection) -> list[Any]:
    """Every live key, organizations' and PROVIDER keys, oldest first (the operator's list)."""
    return list((await conn.execute(
        select(api_keys.c.id, api_keys.c.name, api_keys.c.key_prefix, api_keys.c.kind, api_keys.c.org_id,
               api_keys.c.created_at, api_keys.c.last_used_at)
        .where(_live_key).order_by(api_keys.c.id))).all())


async def revoke(conn: AsyncConnection, *, key_id: int, org_id: int | None, now: datetime) -> bool:
    """Revokes a live key (of ``org_id``, unless ``None``: any key) and ends
    its dashboard sessions; ``False`` if there was no such live key."""
    where = [api_keys.c.id == key_id, _live_key]
    if org_id is not None:
        where.append(api_keys.c.org_id == org_id)
    revoked = (await conn.execute(update(api_keys).where(*where).values(revoked_at=now))).rowcount
    if revoked:
        await conn.execute(delete(dashboard_sessions).where(dashboard_sessions.c.api_key_id == key_id))
    return bool(revoked)


async def revocation_count(conn: AsyncConnection) -> int:
    """How many keys were ever revoked: a change means a revocation somewhere."""
    return (await conn.execute(_REVOKED)).scalar_one()


# Built once: the API looks several times a second (``watch_revocations``).
_REVOKED = select(func.count()).select_from(api_keys).where(api_keys.c.revoked_at.is_not(None))


async def note_use(conn: AsyncConnection, *, key_id: int, now: datetime) -> None:
    """Writes ``now`` as the key's last use, unless another process just did."""
    await conn.execute(update(api_keys).where(
        api_keys.c.id == key_id,
        (api_keys.c.last_used_at.is_(None)) | (api_keys.c.last_used_at <= now - LAST_USE_EVERY),
    ).values(last_used_at=now))


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


async def open_session(conn: AsyncConnection, *, api_key_id: int, org_id: int, now: datetime,
                       now_epoch: float) -> str:
    """A new session of ``api_key_id`` acting for ``org_id``; returns its id (only its hash is stored)."""
    session_id = new_session_id()
    await conn.execute(delete(dashboard_sessions).where(dashboard_sessions.c.expires_at <= now_epoch))
    await conn.execute(insert(dashboard_sessions).values(
        id_hash=session_hash(session_id), api_key_id=api_key_id, org_id=org_id, created_at=now,
        expires_at=now_epoch + SESSION_LIFETIME))
    return session_id


async def find_session(conn: AsyncConnection, session_id: str, now_epoch: float) -> Any | None:
    """``(api_key_id, org_id, kind)`` of a live session whose key is live, else ``None``."""
    return (await conn.execute(
        select(dashboard_sessions.c.api_key_id, dashboard_sessions.c.org_id, api_keys.c.kind)
        .join(api_keys, api_keys.c.id == dashboard_sessions.c.api_key_id)
        .where(dashboard_sessions.c.id_hash == session_hash(session_id),
               dashboard_sessions.c.expires_at > now_epoch, _live_key))).first()


async def end_session(conn: AsyncConnection, session_id: str) -> None:
    await conn.execute(delete(dashboard_sessions).where(dashboard_sessions.c.id_hash == session_hash(session_id)))
