"""API keys (header ``x-APIKey``) and the organization a request acts for.

An organization key acts for its own organization. A PROVIDER key manages
several organizations and names one with the ``org_id`` query parameter.
Only a SHA-256 of each key is stored. A revoked key is refused: each
process looks for new revocations four times a second and then forgets the
keys it had found (``watch_revocations``), so every process stops honouring
a key within a second of its revocation, while the ingestion fast path keeps
its cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import APIKeyHeader
from sqlalchemy import select

from tidings.contract import utcnow
from tidings.platform.api.context import PlatformContext, platform_context
from tidings.platform.api_keys import note_use, revocation_count, use_is_stale
from tidings.store.engine import begin_write
from tidings.store.platform_tables import api_keys, provider_organizations

log = logging.getLogger("tidings.auth")

ORG_KEY = "org"
PROVIDER_KEY = "provider"
REVOCATION_CHECK_INTERVAL = 0.25  # seconds between two looks for keys revoked by another process

api_key_header = APIKeyHeader(name="x-APIKey", auto_error=False, description="An organization or PROVIDER API key")


def new_api_key() -> str:
    return "tdk_" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class OrgContext:
    """The organization a request acts for, and the key that proved it."""

    org_id: int
    api_key_id: int
    key_kind: str


async def org_context(
    request: Request,
    key: str | None = Depends(api_key_header),
    org_id: int | None = Query(None, description="The organization, for a PROVIDER key", ge=1, le=2**62),
    platform: PlatformContext = Depends(platform_context),
) -> OrgContext:
    if not key:
        raise HTTPException(401, "missing x-APIKey header")
    key_hash = hash_api_key(key)
    row = platform.known_keys.get(("key", key_hash))
    if row is None:
        async with platform.engine.connect() as conn:
            row = (await conn.execute(
                select(api_keys.c.id, api_keys.c.kind, api_keys.c.org_id, api_keys.c.last_used_at)
                .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
            )).first()
        if row is None:
            raise HTTPException(401, "unknown API key")
        platform.known_keys.put(("key", key_hash), row)
        await note_use_if_stale(platform, row.id, row.last_used_at)
    if row.kind == ORG_KEY:
        if org_id is not None and org_id != row.org_id:
            raise HTTPException(403, "this key belongs to another organization")
        return OrgContext(org_id=row.org_id, api_key_id=row.id, key_kind=ORG_KEY)
    if org_id is None:
        raise HTTPException(400, "a PROVIDER key must name the organization with the org_id query parameter")
    if platform.known_keys.get(("manages", row.id, org_id)) is None:
        async with platform.engine.connect() as conn:
            managed = (await conn.execute(
                select(provider_organizations.c.org_id).where(
                    provider_organizations.c.api_key_id == row.id, provider_organizations.c.org_id == org_id)
            )).first()
        if managed is None:
            raise HTTPException(403, "this PROVIDER key does not manage that organization")
        platform.known_keys.put(("manages", row.id, org_id), True)
    return OrgContext(org_id=org_id, api_key_id=row.id, key_kind=PROVIDER_KEY)


async def note_use_if_stale(platform: PlatformContext, key_id: int, last_used_at) -> None:
    """Records the key's use when the stored one is a minute old: a write per key
    and minute at most, only when the key was not in the cache."""
    now = utcnow()
    if use_is_stale(last_used_at, now):
        async with begin_write(platform.engine) as conn:
            await note_use(conn, key_id=key_id, now=now)


async def watch_revocations(platform: PlatformContext, *, interval: float = REVOCATION_CHECK_INTERVAL) -> None:
    """Empties the cache of keys found whenever the number of revoked keys
    changes, until cancelled; if it cannot look for a second, it empties the
    cache anyway, so that no revoked key outlives a second."""
    seen: int | None = None
    looked_at = time.monotonic()
    while True:
        try:
            async with platform.engine.connect() as conn:
                count = await revocation_count(conn)
            looked_at = time.monotonic()
            if count != seen:  # the first look too: a key may have been found just before a revocation
                platform.known_keys.forget_all()
            seen = count
        except Exception as error:  # the database may be away for a while: keep looking
            log.warning("cannot look for revoked API keys: %s", error)
            if time.monotonic() - looked_at > 1.0:
                platform.known_keys.forget_all()
        await asyncio.sleep(interval)
