"""The receiver's read API (JSON): the inbox and the event log.

    GET /inbox/conversations                     newest activity first
    GET /inbox/conversations/{id}/messages       oldest first
    GET /events?after=ID&limit=N                 the log, in order; page with next_after
    GET /gaps?waiting=false                      holes in a conversation's sequence reported after the bound

It shows customers' messages: it is served on the admin listener only, behind
its token (``tidings.apps.receiver_admin``), never beside the public webhook.
"""

from __future__ import annotations

import orjson
from fastapi import APIRouter, HTTPException, Query, Response

from tidings.receiver import inbox
from tidings.receiver.log import EventLog, StoredEvent


def _json(document) -> Response:
    return Response(orjson.dumps(document), media_type="application/json")


def event_document(stored: StoredEvent) -> dict:
    """One log entry as the API shows it; the event is the body as received, not re-encoded."""
    return {
        "id": stored.id,
        "type": stored.event_type,
        "webhook_id": stored.webhook_id,
        "scheme": stored.scheme,
        "received_at": stored.received_at,
        "event": orjson.Fragment(stored.body),
    }


def read_router(log: EventLog) -> APIRouter:
    router = APIRouter()

    @router.get("/inbox/conversations")
    def conversations(limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)) -> Response:
        with log.engine.connect() as conn:
            items = inbox.list_conversations(conn, limit, offset)
        return _json({"conversations": items, "count": len(items)})

    @router.get("/inbox/conversations/{conversation_id}/messages")
    def messages(conversation_id: int, limit: int = Query(500, ge=1, le=5000)) -> Response:
        with log.engine.connect() as conn:
            conversation = inbox.get_conversation(conn, conversation_id)
            if conversation is None:
                raise HTTPException(404, f"no conversation {conversation_id} in the inbox")
            items = inbox.list_messages(conn, conversation_id, limit)
        return _json({"conversation_id": conversation_id, "messages": items, "count": len(items)})

    @router.get("/events")
    def events(after: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)) -> Response:
        stored = log.events_after(after, limit)
        return _json({"events": [event_document(e) for e in stored], "next_after": stored[-1].id if stored else after})

    @router.get("/gaps")
    def gaps(waiting: bool = Query(False)) -> Response:
        with log.engine.connect() as conn:
            items = inbox.list_gaps(conn, include_waiting=waiting)
        return _json({"gaps": items, "count": len(items)})

    return router
