"""The platform's HTTP application: ``create_app(context)``.

Its OpenAPI document (3.1) describes the ``/v2`` API and, in its ``webhooks``
section, the two events a subscriber receives, generated from the contract's
models.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tidings.contract import MessageCreated, MessageUpdated
from tidings.platform.api import conversation_routes, delivery_routes, directory_routes, key_routes, webhook_routes
from tidings.platform.api.auth import KeyBeforeBody, watch_revocations
from tidings.platform.api.context import PlatformContext
from tidings.platform.ingest_queue import IngestQueue
from tidings.platform.partners import PartnerSimulator


def validation_problem(exc: RequestValidationError) -> dict:
    """One sentence per problem, each naming where it is: ``body.items.0.url: Field required``."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error.get("loc", ()))
        problems.append(f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid")))
    return {"detail": "; ".join(problems) or "the request is invalid",
            "errors": [{"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")),
                        "type": str(error.get("type", ""))} for error in exc.errors()]}


def http_protocol() -> str:
    """uvicorn's ``http`` setting for this app: its httptools protocol with the
    ingestion fast path (``fast_ingest``), or uvicorn's choice without httptools."""
    if importlib.util.find_spec("httptools") is None:
        return "auto"
    return "tidings.platform.api.fast_ingest:IngestHttpProtocol"


# gen0 at 20,000 allocations instead of 700; the older generations less often too.
SERVING_GC_THRESHOLDS = (20_000, 50, 100)


@contextmanager
def serving_gc() -> Iterator[None]:
    """The garbage collector as a busy server wants it, for the time of a ``with``.

    What exists at start-up (modules, the app, its routes and models) is
    frozen out of the collector's sight, so a full collection does not walk
    it, and collections run less often: an ingested message makes a few
    hundred short-lived objects (pydantic models, SQLAlchemy rows), nearly
    all freed by reference counting; it shortens the tail of ingestion's
    latency (``bench/ingest.py``). The previous settings come back afterwards
    (tests serve in their own process).
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def create_app(context: PlatformContext, *, partner_seed: int | None = None) -> FastAPI:
    """The ``/v2`` API over ``context``; ``partner_seed`` pins the simulated partners' answers."""
    partners = PartnerSimulator(context.engine, context.signer, context.settings.partners, seed=partner_seed)
    ingest_queue = IngestQueue(context.engine, context.signer, hand_off=context.dispatcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await partners.start()
        revocations = asyncio.create_task(watch_revocations(context), name="revocations")
        try:
            yield
        finally:
            revocations.cancel()
            await partners.stop()
            await ingest_queue.stop()

    app = FastAPI(
        title="tidings",
        version="2",
        summary="Conversations, messages and the webhooks that announce them.",
        description="Authenticate with the `x-APIKey` header. A PROVIDER key names the organization "
                    "it acts for with the `org_id` query parameter.",
        lifespan=lifespan,
    )
    app.state.platform = context
    app.state.partners = partners
    app.state.ingest_queue = ingest_queue

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_problem(exc), status_code=422)

    app.add_middleware(KeyBeforeBody, platform=context)  # the API key before any body is read
    app.include_router(webhook_routes.router)
    app.include_router(conversation_routes.router)
    app.include_router(directory_routes.router)
    app.include_router(delivery_routes.router)
    app.include_router(key_routes.router)

    @app.webhooks.post("message_created")
    def message_created(event: MessageCreated) -> None:
        """A message was created: a consumer's message arrived (``Success``), or a
        business user sent one (``Sending``). Answer any 2xx; signed with
        Ed25519 (``X-Tidings-Signature-v1``) and Standard Webhooks headers."""

    @app.webhooks.post("message_updated")
    def message_updated(event: MessageUpdated) -> None:
        """A field of a message changed (e.g. ``status`` ``Sending`` -> ``Success``
        / ``Failed``); the payload holds its new state."""

    return app
