"""Custom-channel ingestion, conversations, messages and replies (``/v2``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.platform.api.auth import OrgContext, org_context
from tidings.platform.api.context import PlatformContext, platform_context
from tidings.platform.api.models import (
    LARGEST_ID,
    ConversationPage,
    IngestedMessage,
    IncomingMessageIn,
    MessagePage,
    Problem,
    ReplyIn,
    storable,
)
from tidings.platform.conversations import (
    MessagingError,
    NotFound,
    Refused,
    SentReply,
    conversation_from_row,
    decode_cursor,
    encode_cursor,
    load_conversation,
    message_from_row,
    retry_reply,
    select_conversations,
    send_reply,
    user_id_of_key,
)
from tidings.contract import Conversation, Message
from tidings.platform.ingestion import ChannelMessage, IncomingMessage
from tidings.store.platform_tables import api_keys, conversations, messages

router = APIRouter(prefix="/v2", responses={
    401: {"model": Problem, "description": "missing or unknown API key"},
    403: {"model": Problem, "description": "the key may not act for that organization"},
    422: {"model": Problem, "description": "the request is malformed; detail says how"},
})

RowId = Annotated[int, Path(ge=1, le=LARGEST_ID)]
PerPage = Annotated[int, Query(ge=1, le=100, description="Items per page, 1 to 100")]
Cursor = Annotated[str | None, Query(max_length=100, description="next_cursor of the previous page")]


def refusal(error: MessagingError) -> HTTPException:
    if isinstance(error, NotFound):
        return HTTPException(404, detail=error.reason)
    if isinstance(error, Refused):
        return HTTPException(409, detail=error.reason)
    return HTTPException(422, detail=error.reason)


def cursor_position(cursor: str | None) -> int | None:
    if cursor is None or cursor == "":
        return None
    try:
        position = decode_cursor(cursor)
    except ValueError as error:
        raise HTTPException(422, detail=f"cursor: {error}") from None
    if position > LARGEST_ID:
        raise HTTPException(422, detail="cursor: the cursor is not one this API gave")
    return position


@router.post("/custom-channels/{channel_id}/messages", response_model=IngestedMessage, tags=["custom channels"],
             summary="Bring a custom channel's message in",
             responses={404: {"model": Problem, "description": "no such channel in the organization"},
                        409: {"model": Problem, "description": "the conversation belongs to another business"}})
async def ingest_message(
    body: IncomingMessageIn, request: Request,
    channel_id: str = Path(max_length=24, description="The custom channel's id"),
    org: OrgContext = Depends(org_context),
) -> dict[str, Any]:
    """Messages with one ``external_conversation_id`` share a conversation,
    created with the first; a message whose ``external_message_id`` was
    already ingested on the channel is a duplicate: it is not stored again and
    no event is sent (``duplicate`` is true). The answer comes once the
    message is committed; concurrent messages share one commit."""
    try:
        storable(channel_id)
    except ValueError as error:
        raise HTTPException(422, detail=f"channel_id: {error}") from None
    try:
        result = await request.app.state.ingest_queue.ingest(
            ChannelMessage(org.org_id, channel_id, IncomingMessage(**body.model_dump())))
    except MessagingError as error:
        raise refusal(error) from None
    return {"message_id": result.message_id, "conversation_id": result.conversation_id,
            "duplicate": result.duplicate}


@router.get("/conversations", response_model=ConversationPage, tags=["conversations"],
            summary="List conversations, newest first")
async def list_conversations(
    per_page: PerPage = 20, cursor: Cursor = None,
    business_id: Annotated[str | None, Query(max_length=24, description="Only this business's conversations")] = None,
    org: OrgContext = Depends(org_context), platform: PlatformContext = Depends(platform_context),
) -> dict[str, Any]:
    after = cursor_position(cursor)
    scope = [conversations.c.org_id == org.org_id]
    if business_id is not None:
        try:
            storable(business_id)
        except ValueError as error:
            raise HTTPException(422, detail=f"business_id: {error}") from None
        scope.append(conversations.c.business_id == business_id)
    query = select_conversations().where(*scope)
    if after is not None:
        query = query.where(conversations.c.id < after)
    async with platform.engine.connect() as conn:
        count = (await conn.execute(select(func.count()).select_from(conversations).where(*scope))).scalar_one()
        rows = (await conn.execute(query.order_by(conversations.c.id.desc()).limit(per_page + 1))).all()
    page = [conversation_from_row(row._mapping) for row in rows[:per_page]]
    next_cursor = encode_cursor(page[-1].id) if len(rows) > per_page else None
    return {"conversations": page, "count": count, "next_cursor": next_cursor}


@router.get("/conversations/{conversation_id}", response_model=Conversation, tags=["conversations"],
            summary="Get a conversation", responses={404: {"model": Problem}})
async def get_conversation(conversation_id: RowId, org: OrgContext = Depends(org_context),
                           platform: PlatformContext = Depends(platform_context)) -> Conversation:
    async with platform.engine.connect() as conn:
        row = await load_conversation(conn, conversation_id, org.org_id)
    if row is None:
        raise HTTPException(404, detail=f"no conversation {conversation_id} in this organization")
    return conversation_from_row(row)


@router.get("/messages", response_model=MessagePage, tags=["conversations"],
            summary="List a conversation's messages, newest first", responses={404: {"model": Problem}})
async def list_messages(
    conversation_id: Annotated[int, Query(ge=1, le=LARGEST_ID)], per_page: PerPage = 20, cursor: Cursor = None,
    org: OrgContext = Depends(org_context), platform: PlatformContext = Depends(platform_context),
) -> dict[str, Any]:
    after = cursor_position(cursor)
    scope = [messages.c.conversation_id == conversation_id, messages.c.org_id == org.org_id]
    query = select(messages).where(*scope)
    if after is not None:
        query = query.where(messages.c.id < after)
    async with platform.engine.connect() as conn:
        await _require_conversation(conn, org, conversation_id)
        count = (await conn.execute(select(func.count()).select_from(messages).where(*scope))).scalar_one()
        rows = (await conn.execute(query.order_by(messages.c.id.desc()).limit(per_page + 1))).all()
    page = [message_from_row(row._mapping) for row in rows[:per_page]]
    next_cursor = encode_cursor(page[-1].id) if len(rows) > per_page else None
    return {"messages": page, "count": count, "next_cursor": next_cursor}


async def _require_conversation(conn: AsyncConnection, org: OrgContext, conversation_id: int) -> None:
    found = (await conn.execute(select(conversations.c.id).where(
        conversations.c.id == conversation_id, conversations.c.org_id == org.org_id))).first()
    if found is None:
        raise HTTPException(404, detail=f"no conversation {conversation_id} in this organization")


@router.post("/messages", response_model=Message, tags=["conversations"], summary="Send a business user's reply",
             responses={404: {"model": Problem}, 409: {"model": Problem, "description": "sending is not possible "
                        "in this conversation (Closed, set-up issues, read-only channel, no webhook to carry it)"}})
async def send_message(body: ReplyIn, request: Request, org: OrgContext = Depends(org_context),
                       platform: PlatformContext = Depends(platform_context)) -> Message:
    """Creates the reply with status ``Sending`` and records ``message_created``.

    It leaves through its channel: a bidirectional custom channel's replies
    go through the organization's ``message_created`` webhook and become
    ``Success`` or ``Failed`` with that delivery; a built-in partner answers
    after a while. Each status change records ``message_updated``.
    """
    try:
        async with platform.engine.begin() as conn:
            label = (await conn.execute(select(api_keys.c.name).where(api_keys.c.id == org.api_key_id))).scalar()
            sent = await send_reply(conn, platform.signer, org_id=org.org_id, conversation_id=body.conversation_id,
                                    content=body.content, content_type=body.content_type, sender_label=label or "",
                                    user_id=user_id_of_key(org.api_key_id))
    except MessagingError as error:
        raise refusal(error) from None
    _hand_to_partner(request, sent)
    return sent.message


@router.post("/messages/{message_id}/retry", response_model=Message, tags=["conversations"],
             summary="Re-send a Failed message",
             responses={404: {"model": Problem}, 409: {"model": Problem, "description": "the message is not Failed, "
                        "or sending is not possible in its conversation"}})
async def retry_message(message_id: RowId, request: Request, org: OrgContext = Depends(org_context),
                        platform: PlatformContext = Depends(platform_context)) -> Message:
    try:
        async with platform.engine.begin() as conn:
            sent = await retry_reply(conn, platform.signer, org_id=org.org_id, message_id=message_id)
    except MessagingError as error:
        raise refusal(error) from None
    _hand_to_partner(request, sent)
    return sent.message


def _hand_to_partner(request: Request, sent: SentReply) -> None:
    """After the commit: a built-in partner's reply goes to the simulated partner."""
    if sent.partner is not None:
        request.app.state.partners.submit(sent.message.id)
