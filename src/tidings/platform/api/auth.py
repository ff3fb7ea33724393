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
import json
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


MISSING_KEY = "missing x-APIKey header"
UNKNOWN_KEY = "unknown API key"


async def key_row(platform: PlatformContext, key: str):
    """The stored key (``id``, ``kind``, ``org_id``), remembered once found (its use
    noted, see ``note_use_if_stale``); ``None`` if unknown or revoked."""
    key_hash = hash_api_key(key)
    row = platform.known_keys.get(("key", key_hash))
    if row is None:
        async with platform.engine.connect() as conn:
            row = (await conn.execute(
                select(api_keys.c.id, api_keys.c.kind, api_keys.c.org_id, api_keys.c.last_used_at)
                .where(api_keys.c.key_hash == key_hash, api_keys.c.revoked_at.is_(None))
            )).first()
        if row is not None:
            platform.known_keys.put(("key", key_hash), row)
            await note_use_if_stale(platform, row.id, row.last_used_at)
    return row


def has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's head announces a body (pure)."""
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The ``x-APIKey`` of a request's head, if any (pure)."""
    for name, value in headers:
        if name == b"x-apikey":
            return value.decode("latin-1")
    return None


class KeyBeforeBody:
    """ASGI middleware: a request to ``/v2`` with a body and without a known
    API key gets ``401`` before its body is read (the connection then closes),
    so no stranger's body is ever buffered or parsed. Routes check the key
    (and a PROVIDER key's ``org_id``) again, from the cache."""

    def __init__(self, app, platform: PlatformContext) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v2/") and has_body(scope["headers"]):
            key = presented_key(scope["headers"])
            if not key:
                await refuse_unauthenticated(send, MISSING_KEY)
                return
            if await key_row(self.platform, key) is None:
                await refuse_unauthenticated(send, UNKNOWN_KEY)
                return
        await self.app(scope, receive, send)


async def refuse_unauthenticated(send, detail: str) -> None:
    """``401`` as FastAPI words it, closing the connection: the body is left unread."""
    body = json.dumps({"detail": detail}, separators=(",", ":")).encode()
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


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
        raise HTTPException(401, MISSING_KEY)
    row = await key_row(platform, key)
    if row is None:
        raise HTTPException(401, UNKNOWN_KEY)
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
