"""What an organization has (its businesses and custom channels), and the
inbound side of the simulated built-in partners.

Facebook, Instagram, Google, WhatsApp and SMS cannot be reached from here; a
consumer's message from one of them arrives through
``POST /v2/partners/{partner}/messages``, the simulated partner's own call,
and from there on follows the same path as any other message.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import select

from tidings.contract import MessagingPartner
from tidings.platform.api.auth import OrgContext, org_context
from tidings.platform.api.context import PlatformContext, platform_context
from tidings.platform.api.conversation_routes import refusal
from tidings.platform.api.models import LARGEST_ID, MAX_CONTENT_LENGTH, ApiModel, IngestedMessage, Problem, Text
from tidings.platform.conversations import MessagingError, receive_partner_message
from tidings.store.platform_tables import businesses, custom_channels

router = APIRouter(prefix="/v2", responses={
    401: {"model": Problem, "description": "missing or unknown API key"},
    403: {"model": Problem, "description": "the key may not act for that organization"},
    422: {"model": Problem, "description": "the request is malformed; detail says how"},
})


class BusinessOut(BaseModel):
    id: str
    name: str
    city: str
    zipcode: str
    country: str
    formatted_address: str


class BusinessList(BaseModel):
    items: list[BusinessOut]


class CustomChannelOut(BaseModel):
    id: str
    name: str
    icon: str
    is_readonly: bool


class CustomChannelList(BaseModel):
    items: list[CustomChannelOut]


class PartnerMessageIn(ApiModel):
    business_id: Text(24, 1)
    content: Text(MAX_CONTENT_LENGTH)
    content_type: Text(64, 1) = "Text"
    consumer_name: Text(500) | None = None
    consumer_phone_number: Text(32) | None = None
    consumer_email: Text(320) | None = None
    consumer_img: Text(2000) | None = None
    conversation_id: int | None = Field(None, ge=1, le=LARGEST_ID,
                                        description="write in this conversation; a new one when omitted")


@router.get("/businesses", response_model=BusinessList, tags=["organization"], summary="The organization's businesses")
async def list_businesses(org: OrgContext = Depends(org_context),
                          platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    async with platform.engine.connect() as conn:
        rows = (await conn.execute(select(businesses).where(businesses.c.org_id == org.org_id)
                                   .order_by(businesses.c.id))).mappings().all()
    return {"items": [{key: row[key] for key in BusinessOut.model_fields} for row in rows]}


@router.get("/custom-channels", response_model=CustomChannelList, tags=["organization"],
            summary="The organization's custom channels")
async def list_custom_channels(org: OrgContext = Depends(org_context),
                               platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    async with platform.engine.connect() as conn:
        rows = (await conn.execute(select(custom_channels).where(custom_channels.c.org_id == org.org_id)
                                   .order_by(custom_channels.c.id))).mappings().all()
    return {"items": [{key: row[key] for key in CustomChannelOut.model_fields} for row in rows]}


@router.post("/partners/{partner}/messages", response_model=IngestedMessage, tags=["simulated partners"],
             summary="A consumer's message from a simulated built-in partner",
             responses={404: {"model": Problem, "description": "no such business or conversation"}})
async def partner_message(partner: str, body: PartnerMessageIn, org: OrgContext = Depends(org_context),
                          platform: PlatformContext = Depends(platform_context)) -> dict[str, Any]:
    if not MessagingPartner(partner).is_known:
        known = ", ".join(sorted(MessagingPartner.known_values))
        raise HTTPException(404, detail=f"no simulated partner {partner!r}; one of: {known}")
    try:
        async with platform.engine.begin() as conn:
            conversation_id, message_id = await receive_partner_message(
                conn, platform.signer, org_id=org.org_id, partner=partner, **body.model_dump())
    except MessagingError as error:
        raise refusal(error) from None
    return {"message_id": message_id, "conversation_id": conversation_id, "duplicate": False}
