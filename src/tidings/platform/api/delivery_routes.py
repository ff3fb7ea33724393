"""The delivery log as operators see it, and the test delivery ("tryout").

- ``POST /v2/webhooks/test``: sends one sample event to a URL now and
  answers how it went (CONTRACT.md section 2, "tryout").
- ``GET /v2/webhooks/{id}/deliveries``: a configuration's deliveries, newest first.
- ``GET /v2/deliveries/{id}``: one delivery with every attempt.
- ``POST /v2/deliveries/{id}/resend``: a finished delivery is sent again.
- ``POST /v2/webhooks/{id}/recover``: every failed delivery since a date is sent again.
- ``POST /v2/webhooks/{id}/pause`` and ``/resume``.

Every route acts within the API key's organization only: another
organization's configuration or delivery is a 404, as if it did not exist.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, Field

from tidings.contract import EVENT_TYPES, format_iso_z
from tidings.platform import configurations
from tidings.platform.api.auth import OrgContext, org_context
from tidings.platform.api.context import PlatformContext, platform_context
from tidings.platform.api.models import LARGEST_ID, CustomHeaders, Problem
from tidings.platform.deliveries import actions, reads
from tidings.platform.deliveries.statuses import PENDING, STATUSES
from tidings.platform.tryout import TryoutRefused, try_out
from tidings.platform.webhook_rules import MAX_PER_PAGE, MAX_URL_LENGTH, page_window

router = APIRouter(tags=["deliveries"], responses={
    401: {"model": Problem, "description": "missing or unknown API key"},
    403: {"model": Problem, "description": "the key may not act for that organization"},
    422: {"model": Problem, "description": "the request is invalid; detail says why"},
})

ConfigId = Annotated[int, Path(ge=1, le=LARGEST_ID, description="The configuration's id")]
DeliveryId = Annotated[int, Path(ge=1, le=LARGEST_ID, description="The delivery's id")]


# ---------------------------------------------------------------- bodies


class TryoutItem(BaseModel):
    url: str = Field(max_length=MAX_URL_LENGTH, examples=["https://hooks.example.com/tidings"])
    event_type: str = Field(json_schema_extra={"enum": list(EVENT_TYPES)})
    custom_headers: CustomHeaders = {}


class TryoutIn(BaseModel):
    # As many as a configuration body may hold; only the first is used.
    items: list[TryoutItem] = Field(min_length=1, max_length=len(EVENT_TYPES), description="Only the first item is used.")


class TryoutResult(BaseModel):
    url: str
    event_type: str
    sample: str = Field(description="'newest_event' (the organization's newest event of that type) or 'default_sample'")
    delivered: bool = Field(description="the endpoint answered 2xx")
    status_code: int | None
    duration_ms: float
    response_excerpt: str | None
    error: str | None


class DeliveryOut(BaseModel):
    id: int
    webhook_config_id: int
    event_id: int
    event_type: str
    webhook_id: str = Field(description="the webhook-id header, the same on every attempt")
    status: str = Field(json_schema_extra={"enum": list(STATUSES)})
    attempt_count: int = Field(description="attempts since the delivery was last queued (a re-send starts again at 0)")
    next_attempt_at: str | None = Field(description="when the next attempt is due, for a pending delivery")
    last_status_code: int | None
    last_error: str | None
    created_at: str
    finished_at: str | None


class AttemptOut(BaseModel):
    number: int
    started_at: str
    duration_ms: float
    status_code: int | None
    response_excerpt: str | None
    error: str | None
    request_headers: dict[str, str]
    worker_id: str | None


class DeliveryWithAttempts(DeliveryOut):
    attempts: list[AttemptOut]


class DeliveryPage(BaseModel):
    page: int
    max_page: int
    count: int
    items: list[DeliveryOut]


class RecoverIn(BaseModel):
    since: datetime = Field(description="ISO 8601; failed deliveries created at or after it are sent again",
                            examples=["2024-11-27T00:00:00Z"])


class RecoverResult(BaseModel):
    recovered: int
    held: bool = Field(description="the configuration is paused: the deliveries wait until it is resumed")


class PauseState(BaseModel):
    id: int
    paused: bool
    paused_reason: str | None
    deliveries_moved: int = Field(description="pending deliveries held (pause) or released (resume)")


# ---------------------------------------------------------------- rendering


def _epoch_iso(epoch: float | None) -> str | None:
    return None if epoch is None else format_iso_z(datetime.fromtimestamp(epoch, UTC))


def delivery_out(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "webhook_config_id": row.webhook_config_id, "event_id": row.event_id,
        "event_type": row.event_type, "webhook_id": row.webhook_id, "status": row.status,
        "attempt_count": row.attempt_count,
        "next_attempt_at": _epoch_iso(row.next_attempt_at) if row.status == PENDING else None,
        "last_status_code": row.last_status_code, "last_error": row.last_error,
        "created_at": format_iso_z(row.created_at),
        "finished_at": format_iso_z(row.finished_at) if row.finished_at else None,
    }


def attempt_out(row: Any) -> dict[str, Any]:
    return {
        "number": row.number, "started_at": format_iso_z(row.started_at), "duration_ms": row.duration_ms,
        "status_code": row.status_code, "response_excerpt": row.response_excerpt, "error": row.error,
        "request_headers": dict(row.request_headers or {}), "worker_id": row.worker_id,
    }


async def _configuration(conn, org: OrgContext, config_id: int) -> Any:
    row = await configurations.get(conn, config_id=config_id, org_id=org.org_id)
    if row is None:
        raise HTTPException(404, detail=f"no webhook configuration {config_id} in this organization")
    return row


# ---------------------------------------------------------------- routes


@router.post("/v2/webhooks/test", response_model=TryoutResult, summary="Send a test delivery now")
async def tryout(body: TryoutIn, org: OrgContext = Depends(org_context),
                 platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    """Sends the organization's newest event of that type (or a sample) to the
    URL, with the header ``<vendor prefix>-Tryout: true``, and answers how the
    endpoint answered. Nothing is stored and nothing is retried."""
    item = body.items[0]
    try:
        outcome = await try_out(platform.engine, platform.signer, platform.settings.delivery, org_id=org.org_id,
                                url=item.url, event_type=item.event_type, custom_headers=item.custom_headers)
    except TryoutRefused as refused:
        raise HTTPException(422, detail=str(refused)) from None
    return dataclasses.asdict(outcome)


@router.get("/v2/webhooks/{config_id}/deliveries", response_model=DeliveryPage,
            summary="A configuration's deliveries, newest first",
            responses={404: {"model": Problem, "description": "no such configuration in this organization"}})
async def list_deliveries(config_id: ConfigId,
                          status: str | None = Query(None, description="only deliveries in this status",
                                                     json_schema_extra={"enum": list(STATUSES)}),
                          page: int = Query(1, ge=1, le=LARGEST_ID),
                          per_page: int = Query(50, ge=1, le=MAX_PER_PAGE),
                          org: OrgContext = Depends(org_context),
                          platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    if status is not None and status not in STATUSES:
        raise HTTPException(422, detail=f"status: one of {', '.join(STATUSES)}; not {status!r}")
    async with platform.engine.connect() as conn:
        await _configuration(conn, org, config_id)
        count = await reads.count_deliveries(conn, config_id=config_id, status=status)
        window = page_window(count, page, per_page)
        rows = await reads.list_deliveries(conn, config_id=config_id, status=status, offset=window.offset,
                                           limit=window.per_page)
    return {"page": window.page, "max_page": window.max_page, "count": count,
            "items": [delivery_out(row) for row in rows]}


@router.get("/v2/deliveries/{delivery_id}", response_model=DeliveryWithAttempts,
            summary="One delivery and every attempt: request headers, answer, timing",
            responses={404: {"model": Problem, "description": "no such delivery in this organization"}})
async def get_delivery(delivery_id: DeliveryId, org: OrgContext = Depends(org_context),
                       platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    async with platform.engine.connect() as conn:
        row = await _delivery(conn, org, delivery_id)
        attempts = await reads.list_attempts(conn, delivery_id=delivery_id)
    return {**delivery_out(row), "attempts": [attempt_out(attempt) for attempt in attempts]}


async def _delivery(conn, org: OrgContext, delivery_id: int) -> Any:
    row = await reads.get_delivery(conn, delivery_id=delivery_id, org_id=org.org_id)
    if row is None:
        raise HTTPException(404, detail=f"no delivery {delivery_id} in this organization")
    return row


@router.post("/v2/deliveries/{delivery_id}/resend", response_model=DeliveryOut, status_code=202,
             summary="Send a finished delivery again (same body, signature and webhook-id)",
             responses={404: {"model": Problem, "description": "no such delivery in this organization"},
                        409: {"model": Problem, "description": "the delivery is not finished yet"}})
async def resend_delivery(delivery_id: DeliveryId, org: OrgContext = Depends(org_context),
                          platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    async with platform.engine.begin() as conn:
        row = await _delivery(conn, org, delivery_id)
        if not await actions.resend(conn, delivery_id=delivery_id, now=time.time()):
            raise HTTPException(409, detail=f"delivery {delivery_id} is {row.status}: only a delivered or failed "
                                            "delivery can be sent again")
        row = await _delivery(conn, org, delivery_id)
    return delivery_out(row)


@router.post("/v2/webhooks/{config_id}/recover", response_model=RecoverResult,
             summary="Send again every failed delivery created since a date",
             responses={404: {"model": Problem, "description": "no such configuration in this organization"}})
async def recover_deliveries(config_id: ConfigId, body: RecoverIn, org: OrgContext = Depends(org_context),
                             platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    since = body.since if body.since.tzinfo is not None else body.since.replace(tzinfo=UTC)
    async with platform.engine.begin() as conn:
        config = await _configuration(conn, org, config_id)
        recovered = await actions.recover(conn, config_id=config_id, since=since, now=time.time())
    return {"recovered": recovered, "held": bool(config.paused)}


@router.post("/v2/webhooks/{config_id}/pause", response_model=PauseState,
             summary="Stop sending to this configuration; its pending deliveries wait",
             responses={404: {"model": Problem, "description": "no such configuration in this organization"}})
async def pause(config_id: ConfigId, org: OrgContext = Depends(org_context),
                platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    async with platform.engine.begin() as conn:
        await _configuration(conn, org, config_id)
        moved = await actions.pause_configuration(conn, config_id=config_id, reason="paused by its owner",
                                                now=datetime.now(UTC))
        config = await _configuration(conn, org, config_id)
    return {"id": config.id, "paused": config.paused, "paused_reason": config.paused_reason,
            "deliveries_moved": moved or 0}


@router.post("/v2/webhooks/{config_id}/resume", response_model=PauseState,
             summary="Send to this configuration again, starting with the deliveries that waited",
             responses={404: {"model": Problem, "description": "no such configuration in this organization"}})
async def resume(config_id: ConfigId, org: OrgContext = Depends(org_context),
                 platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    async with platform.engine.begin() as conn:
        await _configuration(conn, org, config_id)
        moved = await actions.resume_configuration(conn, config_id=config_id, now=time.time(),
                                                 updated_at=datetime.now(UTC))
        config = await _configuration(conn, org, config_id)
    return {"id": config.id, "paused": config.paused, "paused_reason": config.paused_reason,
            "deliveries_moved": moved or 0}
