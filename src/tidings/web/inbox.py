"""The receiver's inbox, served by ``tidings receive`` under ``/inbox``.

Pages: the conversations as a unified inbox shows them, one conversation's
thread, the quarantine (authentic bodies that did not parse) with
re-processing, and the dead letters (handler runs that used up their tries)
with replay. The lists update themselves by server-sent events.

It reads through the receiver's own functions (``tidings.receiver.inbox``)
and calls them for re-processing and replay; it imports nothing of the
platform. Like the receiver's read API, it shows customers' messages: it is
served on the receiver's admin listener only, behind its token
(``tidings.apps.receiver_admin``, ``tidings.web.admin_door``).

Mount it on the admin app with ``mount_inbox(app, receiver)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool

from tidings.receiver.handler_runner import list_failures, replay_dead
from tidings.web import inbox_queries as queries
from tidings.web.live import Poll, Upsert, event_stream, poll_stream, start_position
from tidings.web.message_view import conversation_order, message_order
from tidings.web.origin import check_same_origin
from tidings.web.templating import STATIC_DIR, TEMPLATES, render_macro

PREFIX = "/inbox"
STATIC_PATH = PREFIX + "/static"

T = TypeVar("T")

router = APIRouter(prefix=PREFIX, include_in_schema=False)


def mount_inbox(app: FastAPI, receiver: Any | None = None) -> None:
    """Adds the inbox's pages, its stream and its static files to the receiver's ``app``.

    ``receiver``: the ``tidings.receiver.core.Receiver`` whose store the pages
    read and whose writer replays dead letters; when ``None``,
    ``app.state.receiver`` is used. Mounting twice changes nothing.
    """
    if any(getattr(route, "path", None) == STATIC_PATH for route in app.routes):
        return
    if receiver is not None:
        app.state.inbox_receiver = receiver
    app.include_router(router)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="inbox-static")


def _receiver(request: Request) -> Any:
    state = request.app.state
    receiver = getattr(state, "inbox_receiver", None) or getattr(state, "receiver", None)
    if receiver is None:
        raise HTTPException(503, "the inbox has no receiver to read from")
    return receiver


async def _read(request: Request, function: Callable[[Connection], T]) -> T:
    """Runs ``function(conn)`` on a connection of the receiver's store, in a worker thread."""
    engine = _receiver(request).log.engine

    def run() -> T:
        with engine.connect() as conn:
            return function(conn)

    return await run_in_threadpool(run)


def _page(request: Request, template: str, **context: Any) -> Response:
    notice = _notice(request)
    response = TEMPLATES.TemplateResponse(
        request, template, {"static": STATIC_PATH, "notice": notice, "section": "", **context}
    )
    response.headers["cache-control"] = "no-store"
    return response


_NOTICES = {
    "reprocessed": "{moved} quarantined bodies parsed and moved to the log; {failing} still do not parse.",
    "replayed": "{count} dead letters queued to run again.",
}


def _notice(request: Request) -> dict | None:
    """The result of the last action, from the redirect's query (numbers only, so a link cannot forge text)."""
    params = request.query_params
    template = _NOTICES.get(params.get("done", ""))
    if template is None:
        return None
    numbers = {name: params.get(name, "0") for name in ("moved", "failing", "count")}
    if not all(value.isdigit() and len(value) < 10 for value in numbers.values()):
        return None
    return {"text": template.format(**numbers), "kind": "ok"}


# ---------------------------------------------------------------- conversations


def _conversation_change(conversation: queries.Conversation) -> Upsert:
    html = render_macro("_inbox_rows.html", "conversation_item", conversation=conversation)
    return Upsert(f"conversation-{conversation['id']}", html, "conversations", conversation_order(conversation))


def _message_change(message: queries.Message) -> Upsert:
    html = render_macro("_inbox_rows.html", "message_item", message=message)
    return Upsert(f"message-{message['id']}", html, "thread", message_order(message))


@router.get("", response_class=HTMLResponse)
async def conversations_page(request: Request) -> Response:
    def read(conn: Connection):
        return queries.projected_position(conn), queries.conversations(conn), queries.counts(conn)

    position, conversations, counts = await _read(request, read)
    return _page(request, "inbox.html", section="inbox", conversations=conversations, counts=counts,
                 position=position)


@router.get("/threads/{conversation_id}", response_class=HTMLResponse)
async def thread_page(request: Request, conversation_id: int) -> Response:
    def read(conn: Connection):
        return (queries.projected_position(conn), queries.conversation(conn, conversation_id),
                queries.thread(conn, conversation_id), queries.counts(conn))

    position, conversation, messages, counts = await _read(request, read)
    if conversation is None:
        raise HTTPException(404, "no such conversation in the inbox")
    return _page(request, "thread.html", section="inbox", conversation=conversation, messages=messages,
                 counts=counts, position=position)


# ---------------------------------------------------------------- quarantine and dead letters


@router.get("/quarantine", response_class=HTMLResponse)
async def quarantine_page(request: Request) -> Response:
    log = _receiver(request).log

    def read(conn: Connection):
        return log.quarantined(limit=queries.LIST_SIZE, conn=conn), queries.counts(conn)

    rows, counts = await _read(request, read)
    return _page(request, "quarantine.html", section="quarantine", rows=rows, counts=counts)


@router.post("/quarantine/reprocess")
async def reprocess(request: Request) -> Response:
    """Parses quarantined bodies again with today's parser (``Receiver.reprocess_quarantine``)."""
    check_same_origin(request)
    ids = _ids((await request.form()).getlist("id"))
    outcome = await run_in_threadpool(_receiver(request).reprocess_quarantine, ids or None)
    return RedirectResponse(
        f"{PREFIX}/quarantine?done=reprocessed&moved={len(outcome.moved)}&failing={len(outcome.still_failing)}",
        status_code=303,
    )


@router.get("/dead-letters", response_class=HTMLResponse)
async def dead_letters_page(request: Request) -> Response:
    log = _receiver(request).log
    failures = await run_in_threadpool(lambda: list_failures(log, dead=True, limit=queries.LIST_SIZE))

    def read(conn: Connection):
        return queries.with_events(conn, failures), queries.counts(conn)

    letters, counts = await _read(request, read)
    return _page(request, "dead_letters.html", section="dead_letters", letters=letters, counts=counts)


@router.post("/dead-letters/replay")
async def replay(request: Request) -> Response:
    """Makes dead handler runs due again (``replay_dead``), through the receiver's one writer."""
    check_same_origin(request)
    ids = _ids((await request.form()).getlist("id"))
    receiver = _receiver(request)
    replayed = receiver.committer.run(lambda conn: replay_dead(conn, ids or None))
    count = await asyncio.wrap_future(replayed)
    return RedirectResponse(f"{PREFIX}/dead-letters?done=replayed&count={count}", status_code=303)


def _ids(values: list[Any]) -> list[int]:
    """The row ids a form names; anything that is not a positive number is ignored."""
    return [int(value) for value in values if isinstance(value, str) and value.isdigit() and len(value) <= 18]


# ---------------------------------------------------------------- live updates


@router.get("/events")
async def events(request: Request) -> Response:
    """The stream of one page: ``view`` is ``list`` or ``thread`` (with ``id``).

    Positions are the inbox projector's: a page is sent what the projector
    merged after the position it shows, never an event still waiting to be merged.
    """
    params = request.query_params
    view = params.get("view", "list")
    conversation_id = None
    if view == "thread":
        text = params.get("id", "")
        if not text.isdigit() or len(text) > 18:
            raise HTTPException(400, "the thread view needs id=")
        conversation_id = int(text)
    elif view != "list":
        raise HTTPException(400, "view is list or thread")
    start = start_position(request, params.get("after", ""))
    if not start.isdigit() or len(start) > 18:
        start = str(await _read(request, queries.projected_position))

    async def poll(position: str) -> Poll:
        after = int(position)

        def read(conn: Connection):
            head = queries.projected_position(conn)
            if head <= after:
                return head, []
            touched = queries.touched_between(conn, after, head, conversation_id)
            if conversation_id is None:
                return head, [_conversation_change(c) for c in queries.conversations_by_id(conn, touched.conversation_ids)]
            return head, [_message_change(m) for m in queries.messages_by_id(conn, touched.message_ids)]

        head, changes = await _read(request, read)
        return Poll(changes, str(max(head, after)))

    return event_stream(poll_stream(request, start, poll))
