"""``/v2/webhooks``: the organization's webhook configurations.

Each rule is a pure function of ``tidings.platform.webhook_rules``; the
target's address is checked by ``tidings.platform.transport.guard``; the
statements are ``tidings.platform.configurations``'. A refusal is a 4xx whose
``detail`` says why.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.contract import EVENT_TYPES, format_iso_z, utcnow
from tidings.contract.signing import generate_secret
from tidings.platform import configurations
from tidings.platform.api.auth import OrgContext, org_context
from tidings.platform.api.context import PlatformContext, platform_context
from tidings.platform.api.models import (
    LARGEST_ID,
    CreatedWebhookConfigs,
    EventTypes,
    Problem,
    WebhookConfigOut,
    WebhookConfigPage,
    WebhookConfigsIn,
    WebhookConfigUpdate,
    WebhookSecret,
)
from tidings.platform.deliveries import actions
from tidings.platform.settings import PlatformSettings
from tidings.platform.transport import MASKED, TargetPolicy, TargetRefused, check_target_url
from tidings.platform.webhook_rules import (
    MAX_PER_PAGE,
    WebhookRuleError,
    check_custom_headers,
    check_event_type,
    check_one_per_event_type,
    check_ordering,
    check_url,
    keep_masked_values,
    page_window,
)

router = APIRouter(prefix="/v2/webhooks", tags=["webhooks"], responses={
    401: {"model": Problem, "description": "missing or unknown API key"},
    403: {"model": Problem, "description": "the key may not act for that organization"},
    422: {"model": Problem, "description": "a rule is broken; detail says which"},
})

WebhookId = Annotated[int, Path(ge=1, le=LARGEST_ID, description="The configuration's id")]


def rule_refusal(error: WebhookRuleError) -> HTTPException:
    return HTTPException(422, detail=f"{error.field}: {error.reason}")


def check_target(url: str, settings: PlatformSettings) -> str:
    """The URL in the normalised form that is stored and connected to
    (``normalize_target``); refuses one that breaks the contract's rules,
    holds credentials, or points at an address that is not a target."""
    try:
        check_url(url, allow_http=settings.delivery.allow_http)
    except WebhookRuleError as error:
        raise rule_refusal(error) from None
    try:
        normalized = check_target_url(url, TargetPolicy.from_settings(settings.delivery))
    except TargetRefused as refused:
        raise HTTPException(422, detail=f"url: the target is refused: {refused.reason}") from None
    try:
        check_url(normalized, allow_http=settings.delivery.allow_http)  # its length, once written out
    except WebhookRuleError as error:
        raise rule_refusal(error) from None
    return normalized


def check_headers(headers: Mapping[str, str], settings: PlatformSettings) -> None:
    try:
        check_custom_headers(headers, settings.delivery.vendor_prefix)
    except WebhookRuleError as error:
        raise rule_refusal(error) from None


def config_out(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "url": row.url, "event_type": row.event_type,
        "created_at": format_iso_z(row.created_at), "updated_at": format_iso_z(row.updated_at),
        "org_id": row.org_id, "custom_headers": {name: MASKED for name in row.custom_headers or {}},
        "ordering": row.ordering,
    }


async def load_config(conn: AsyncConnection, org: OrgContext, webhook_id: int) -> Any:
    row = await configurations.get(conn, config_id=webhook_id, org_id=org.org_id)
    if row is None:
        raise HTTPException(404, detail=f"no webhook configuration {webhook_id} in this organization")
    return row


@router.post("", response_model=CreatedWebhookConfigs, summary="Create webhook configurations",
             responses={409: {"model": Problem, "description": "one configuration per organization and event type"}})
async def create_webhooks(body: WebhookConfigsIn, org: OrgContext = Depends(org_context),
                          platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    """Creates every item or none. Each configuration gets its own signing
    secret (``whsec_...``), returned here and by ``GET /v2/webhooks/{id}/secret``.
    The URL is stored, and answered, in its normalised form (its host as the
    SSRF guard reads it)."""
    urls = []
    for item in body.items:
        try:
            check_event_type(item.event_type)
            check_ordering(item.ordering)
        except WebhookRuleError as error:
            raise rule_refusal(error) from None
        check_headers(item.custom_headers, platform.settings)
        urls.append(check_target(item.url, platform.settings))
    now = utcnow()
    try:
        async with platform.engine.begin() as conn:
            existing = await configurations.event_type_ids(conn, org.org_id)
            try:
                check_one_per_event_type(existing, [item.event_type for item in body.items])
            except WebhookRuleError as error:
                raise HTTPException(409, detail=f"{error.field}: {error.reason}") from None
            created = []
            for item, url in zip(body.items, urls, strict=True):
                secret = generate_secret()
                row = await configurations.create(
                    conn, org_id=org.org_id, url=url, event_type=item.event_type,
                    custom_headers=item.custom_headers, ordering=item.ordering, secret=secret, now=now)
                created.append({**config_out(row), "secret": secret})
    except IntegrityError:  # a concurrent request created the same event type first
        raise HTTPException(409, detail="event_type: this organization already has a configuration for it") from None
    return {"items": created}


@router.get("", response_model=WebhookConfigPage, summary="List webhook configurations")
async def list_webhooks(
    page: int = Query(1, ge=1, le=2**31, description="Page number, from 1"),
    per_page: int = Query(10, ge=1, le=MAX_PER_PAGE, description="Items per page, 1 to 100"),
    org: OrgContext = Depends(org_context), platform: PlatformContext = Depends(platform_context),
) -> dict[str, Any]:
    async with platform.engine.connect() as conn:
        count = await configurations.count_of_organization(conn, org.org_id)
        try:
            window = page_window(count, page, per_page)
        except WebhookRuleError as error:
            raise rule_refusal(error) from None
        rows = await configurations.page_of_organization(conn, org.org_id, offset=window.offset, limit=per_page)
    return {"page": page, "max_page": window.max_page, "count": count, "items": [config_out(row) for row in rows]}


@router.get("/events", response_model=EventTypes, summary="The event types that can be subscribed to")
async def list_event_types(org: OrgContext = Depends(org_context)) -> dict[str, Any]:
    return {"items": list(EVENT_TYPES)}


@router.get("/{webhook_id}", response_model=WebhookConfigOut, summary="Get a webhook configuration",
            responses={404: {"model": Problem}})
async def get_webhook(webhook_id: WebhookId, org: OrgContext = Depends(org_context),
                      platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    async with platform.engine.connect() as conn:
        return config_out(await load_config(conn, org, webhook_id))


@router.put("/{webhook_id}", response_model=WebhookConfigOut, summary="Change a webhook configuration",
            responses={404: {"model": Problem}})
async def update_webhook(webhook_id: WebhookId, body: WebhookConfigUpdate, org: OrgContext = Depends(org_context),
                         platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    """Changes ``url`` (stored in its normalised form), ``custom_headers`` and
    ``ordering``; fields left out keep their value, and so does a custom
    header whose value is given as ``********``, as the API shows it."""
    changes: dict[str, Any] = {}
    if body.url is not None:
        changes["url"] = check_target(body.url, platform.settings)
    if body.custom_headers is not None:
        check_headers(body.custom_headers, platform.settings)
    if body.ordering is not None:
        try:
            check_ordering(body.ordering)
        except WebhookRuleError as error:
            raise rule_refusal(error) from None
        changes["ordering"] = body.ordering
    async with platform.engine.begin() as conn:
        current = await load_config(conn, org, webhook_id)
        if body.custom_headers is not None:
            try:
                changes["custom_headers"] = keep_masked_values(body.custom_headers,
                                                               configurations.clear_headers(current), MASKED)
            except WebhookRuleError as error:
                raise rule_refusal(error) from None
        row = await configurations.update_fields(conn, config_id=webhook_id, org_id=org.org_id, changes=changes,
                                                 now=utcnow())
        if row.ordering != current.ordering:  # deliveries waiting for their turn may go now
            await actions.ordering_changed(conn, config_id=webhook_id, ordering=row.ordering, now=time.time())
    return config_out(row)


@router.delete("/{webhook_id}", status_code=204, response_class=Response, summary="Delete a webhook configuration",
               responses={404: {"model": Problem}})
async def delete_webhook(webhook_id: WebhookId, org: OrgContext = Depends(org_context),
                         platform: PlatformContext = Depends(platform_context)) -> Response:
    """Deletes the configuration and its delivery log: its pending deliveries
    are not sent; a request already under way ends, and its result is dropped."""
    async with platform.engine.begin() as conn:
        await load_config(conn, org, webhook_id)
        await actions.delete_configuration(conn, config_id=webhook_id, now=utcnow())
    return Response(status_code=204)


def secret_out(row: Any, now: float) -> dict[str, Any]:
    expires = row.previous_secret_expires_at
    if row.previous_secret is None or expires is None or expires <= now:
        return {"secret": configurations.clear_secret(row.secret), "previous_secret": None,
                "previous_secret_expires_at": None}
    return {"secret": configurations.clear_secret(row.secret),
            "previous_secret": configurations.clear_secret(row.previous_secret),
            "previous_secret_expires_at": format_iso_z(datetime.fromtimestamp(expires, UTC))}


@router.get("/{webhook_id}/secret", response_model=WebhookSecret, summary="The configuration's signing secret",
            responses={404: {"model": Problem}})
async def get_webhook_secret(webhook_id: WebhookId, org: OrgContext = Depends(org_context),
                             platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    async with platform.engine.connect() as conn:
        return secret_out(await load_config(conn, org, webhook_id), time.time())


@router.post("/{webhook_id}/secret/rotate", response_model=WebhookSecret, summary="Rotate the signing secret",
             responses={404: {"model": Problem}})
async def rotate_webhook_secret(webhook_id: WebhookId, org: OrgContext = Depends(org_context),
                                platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    """A new secret signs from now on; the old one keeps signing beside it
    for ``secret_overlap`` seconds, so receivers can switch without a gap."""
    now = time.time()
    async with platform.engine.begin() as conn:
        current = await load_config(conn, org, webhook_id)
        row = await configurations.rotate_secret(
            conn, config_id=webhook_id, current_secret=current.secret, new_secret=generate_secret(),
            previous_expires_at=now + platform.settings.secret_overlap, now=utcnow())
        if row is None:
            raise HTTPException(409, detail="the secret was rotated by another request meanwhile; try again")
    return secret_out(row, now)
