"""Setting up tenants: organizations and their keys, PROVIDER keys,
businesses and custom channels.

The ``tidings org|provider|business|channel create`` commands, the tests
and the demo all call these. Each function runs in the caller's
transaction; an API key is returned once and only its hash is stored.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.contract import utcnow
from tidings.platform.api.auth import ORG_KEY, PROVIDER_KEY, hash_api_key, new_api_key
from tidings.platform.api_keys import key_prefix
from tidings.store.platform_tables import (
    api_keys,
    businesses,
    custom_channels,
    organizations,
    provider_organizations,
)


async def organization_name(conn: AsyncConnection, org_id: int) -> str | None:
    return (await conn.execute(select(organizations.c.name).where(organizations.c.id == org_id))).scalar()


class TenantError(ValueError):
    """A set-up request that cannot be carried out; ``str()`` says why."""


def new_object_id() -> str:
    """24 hexadecimal characters, the form of business and channel ids."""
    return secrets.token_hex(12)


async def create_organization(conn: AsyncConnection, name: str, *, key_name: str = "admin") -> tuple[int, str]:
    """A new organization and its first (admin) API key: ``(org_id, api_key)``."""
    if not name.strip():
        raise TenantError("an organization needs a name")
    now = utcnow()
    org_id = (await conn.execute(
        insert(organizations).values(name=name, created_at=now).returning(organizations.c.id)
    )).scalar_one()
    key = await create_org_key(conn, org_id, key_name)
    return org_id, key


async def create_org_key(conn: AsyncConnection, org_id: int, name: str) -> str:
    """Another API key of one organization (a business user's)."""
    return (await create_org_key_row(conn, org_id, name))[1]


async def create_org_key_row(conn: AsyncConnection, org_id: int, name: str) -> tuple[Any, str]:
    """Another API key of one organization: its row (as a list shows it) and the key, shown once."""
    if not name.strip():
        raise TenantError("a key needs a name")
    await require_organizations(conn, [org_id])
    key = new_api_key()
    row = (await conn.execute(insert(api_keys).values(
        key_hash=hash_api_key(key), key_prefix=key_prefix(key), kind=ORG_KEY, org_id=org_id, name=name,
        created_at=utcnow()).returning(api_keys.c.id, api_keys.c.name, api_keys.c.key_prefix, api_keys.c.kind,
                                       api_keys.c.org_id, api_keys.c.created_at, api_keys.c.last_used_at))).first()
    return row, key


async def create_provider_key(conn: AsyncConnection, name: str, org_ids: Sequence[int]) -> str:
    """A PROVIDER key that manages the organizations ``org_ids``."""
    if not name.strip():
        raise TenantError("a provider needs a name")
    unique_ids = sorted(set(org_ids))
    if not unique_ids:
        raise TenantError("a provider manages at least one organization")
    await require_organizations(conn, unique_ids)
    key = new_api_key()
    key_id = (await conn.execute(
        insert(api_keys).values(key_hash=hash_api_key(key), key_prefix=key_prefix(key), kind=PROVIDER_KEY, org_id=None, name=name,
                                created_at=utcnow()).returning(api_keys.c.id)
    )).scalar_one()
    await conn.execute(insert(provider_organizations), [{"api_key_id": key_id, "org_id": org_id} for org_id in unique_ids])
    return key


async def create_business(conn: AsyncConnection, org_id: int, name: str, *, city: str = "", zipcode: str = "",
                          country: str = "", formatted_address: str = "") -> str:
    """A business of ``org_id``; returns its id (24 hexadecimal characters)."""
    if not name.strip():
        raise TenantError("a business needs a name")
    await require_organizations(conn, [org_id])
    business_id = new_object_id()
    await conn.execute(insert(businesses).values(
        id=business_id, org_id=org_id, name=name, city=city, zipcode=zipcode, country=country,
        formatted_address=formatted_address))
    return business_id


async def create_custom_channel(conn: AsyncConnection, org_id: int, name: str, *, icon: str = "",
                                is_readonly: bool = False) -> str:
    """A custom channel of ``org_id``; returns its id (24 hexadecimal characters).

    A read-only channel only brings messages in; a bidirectional one also
    carries the business users' replies out, through the organization's
    ``message_created`` webhook.
    """
    if not name.strip():
        raise TenantError("a channel needs a name")
    await require_organizations(conn, [org_id])
    channel_id = new_object_id()
    await conn.execute(insert(custom_channels).values(
        id=channel_id, org_id=org_id, name=name, icon=icon, is_readonly=is_readonly))
    return channel_id


async def require_organizations(conn: AsyncConnection, org_ids: Sequence[int]) -> None:
    found = set((await conn.execute(
        select(organizations.c.id).where(organizations.c.id.in_(list(org_ids)))
    )).scalars())
    missing = [org_id for org_id in org_ids if org_id not in found]
    if missing:
        raise TenantError(f"no organization with id {', '.join(map(str, missing))}")
