"""The webhook endpoint as a FastAPI router, for an application that has one already.

    receiver = Receiver("sqlite:///events.db", Verifier(public_keys=[key]))
    app = FastAPI()
    app.include_router(webhook_router(receiver, "/webhook"))

The router's lifespan starts the receiver's threads and drains them at
shutdown (FastAPI merges a router's lifespan into the application's).
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import APIRouter, Request, Response

from tidings.receiver.answers import Answer
from tidings.receiver.core import Receiver


def to_response(answer: Answer) -> Response:
    return Response(answer.body, status_code=answer.status, headers=dict(answer.headers), media_type="application/json")


def webhook_router(receiver: Receiver, path: str = "/webhook") -> APIRouter:
    """A router with ``POST path`` (and ``POST path/{secret}``) answered by ``receiver``."""

    @asynccontextmanager
    async def lifespan(_app):
        receiver.start()
        try:
            yield
        finally:
            receiver.close()

    router = APIRouter(lifespan=lifespan)

    @router.post(path, include_in_schema=False)
    async def receive_event(request: Request) -> Response:
        body = await request.body()
        return to_response(await receiver.handle(body, request.headers.raw, request.url.query))

    @router.post(path.rstrip("/") + "/{secret}", include_in_schema=False)
    async def receive_event_with_secret(secret: str, request: Request) -> Response:
        body = await request.body()
        return to_response(await receiver.handle(body, request.headers.raw, request.url.query, path_secret=secret))

    return router
