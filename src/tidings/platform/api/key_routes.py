"""``/v2/api-keys``: an organization's API keys, listed, created (the key is
shown once) and revoked.

A key acts on its organization's keys: an organization key on its own
organization's, a PROVIDER key on those of the organization it names with
``org_id``. PROVIDER keys themselves are the operator's (``tidings key``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.responses import Response
from pydantic import BaseModel, Field

from tidings.contract import format_iso_z, utcnow
from tidings.platform import api_keys, tenants
from tidings.platform.api.auth import OrgContext, org_context
from tidings.platform.api.context import PlatformContext, platform_context
from tidings.platform.api.models import LARGEST_ID, ApiModel, Problem, Text
from tidings.store.engine import begin_write

router = APIRouter(prefix="/v2", tags=["API keys"], responses={
    401: {"model": Problem, "description": "missing or unknown API key"},
    403: {"model": Problem, "description": "the key may not act for that organization"},
    422: {"model": Problem, "description": "the request is malformed; detail says how"},
})


class ApiKeyOut(BaseModel):
    id: int
    name: str
    prefix: str | None = Field(description="The key's first characters; null for keys made before prefixes were kept.")
    kind: str
    created_at: str
    last_used_at: str | None = Field(description="Updated at most once a minute.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyOut]


class ApiKeyCreated(ApiKeyOut):
    api_key: str = Field(description="The key itself: shown in this answer only, never again.")


class ApiKeyIn(ApiModel):
    name: Text(200, 1)


def key_out(row: Any) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "prefix": row.key_prefix, "kind": row.kind,
            "created_at": format_iso_z(row.created_at),
            "last_used_at": format_iso_z(row.last_used_at) if row.last_used_at else None}


@router.get("/api-keys", response_model=ApiKeyList, summary="The organization's API keys (never the keys themselves)")
async def list_keys(org: OrgContext = Depends(org_context),
                    platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    async with platform.engine.connect() as conn:
        rows = await api_keys.list_org_keys(conn, org.org_id)
    return {"items": [key_out(row) for row in rows]}


@router.post("/api-keys", response_model=ApiKeyCreated, status_code=201,
             summary="A new API key of the organization, shown once")
async def create_key(body: ApiKeyIn, org: OrgContext = Depends(org_context),
                     platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    try:
        async with begin_write(platform.engine) as conn:
            row, key = await tenants.create_org_key_row(conn, org.org_id, body.name)
    except tenants.TenantError as error:
        raise HTTPException(422, str(error)) from None
    return {**key_out(row), "api_key": key}


@router.delete("/api-keys/{key_id}", status_code=204, response_class=Response,
               summary="Revoke an API key of the organization; every process refuses it within a second",
               responses={404: {"model": Problem, "description": "no such live key in this organization"}})
async def revoke_key(key_id: int = Path(ge=1, le=LARGEST_ID), org: OrgContext = Depends(org_context),
                     platform: PlatformContext = Depends(platform_context)) -> Response:
    async with begin_write(platform.engine) as conn:
        revoked = await api_keys.revoke(conn, key_id=key_id, org_id=org.org_id, now=utcnow())
    if not revoked:
        raise HTTPException(404, f"no live API key {key_id} in this organization")
    platform.known_keys.forget_all()
    return Response(status_code=204)
