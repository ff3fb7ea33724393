"""Live updates by server-sent events: the wire format and the stream loop.

A page that updates itself opens an ``EventSource`` on a stream URL that
carries the position the page was rendered at (``after=``). The server polls
the database for rows past that position (one cheap indexed query a second),
and sends each changed row as HTML rendered by the same template macro that
rendered the page, so there is one way to draw a row. ``static/live.js``
inserts or replaces it. Each message's SSE ``id`` is the new position: a
browser that reconnects sends it back as ``Last-Event-ID`` and misses nothing.

A stream ends after ``STREAM_LIFETIME`` seconds and the browser reconnects at
once; so each connection proves its sign-in again now and then, and a server
that shuts down is not held by open streams for long: uvicorn waits for open
responses before it stops (unless ``timeout_graceful_shutdown`` is set), and
nothing tells a streaming response that the server is stopping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import orjson
from starlette.requests import Request
from starlette.responses import StreamingResponse

POLL_INTERVAL = 1.0  # seconds between two looks at the database
KEEP_ALIVE = 15.0  # seconds of silence after which a comment keeps proxies from closing the stream
STREAM_LIFETIME = 30.0
RETRY_MS = 1000  # how soon the browser reconnects


@dataclass(frozen=True)
class Upsert:
    """Put ``html`` in place of the element ``key``, or insert it in ``container`` by ``order``."""

    key: str
    html: str
    container: str
    order: str  # compared as strings: zero-padded numbers, or dates in one format

    def document(self) -> dict:
        return {"key": self.key, "html": self.html, "container": self.container, "order": self.order}


@dataclass(frozen=True)
class Removal:
    key: str

    def document(self) -> dict:
        return {"key": self.key}


Change = Upsert | Removal


@dataclass(frozen=True)
class Poll:
    """What one look at the database found: the changes and the position after them."""

    changes: Sequence[Change]
    position: str


def sse_message(event: str, data: dict, message_id: str | None = None) -> bytes:
    """One server-sent event; ``data`` is JSON on a single line."""
    lines = []
    if message_id is not None:
        lines.append(f"id: {message_id}")
    lines.append(f"event: {event}")
    lines.append("data: " + orjson.dumps(data).decode())
    return ("\n".join(lines) + "\n\n").encode()


def order_key(number: int) -> str:
    """A number that sorts correctly as a string."""
    return f"{number:020d}"


def start_position(request: Request, rendered_at: str) -> str:
    """Where a stream starts: the browser's ``Last-Event-ID`` after a reconnection, else the page's."""
    return request.headers.get("last-event-id") or rendered_at


async def poll_stream(
    request: Request,
    position: str,
    poll: Callable[[str], Awaitable[Poll]],
    *,
    interval: float = POLL_INTERVAL,
    lifetime: float = STREAM_LIFETIME,
) -> AsyncIterator[bytes]:
    """Calls ``poll(position)`` every ``interval`` seconds and sends what changed."""
    yield f"retry: {RETRY_MS}\n\n".encode()
    started = last_sent = time.monotonic()
    while time.monotonic() - started < lifetime:
        if await request.is_disconnected():
            return
        found = await poll(position)
        position = found.position
        for change in found.changes:
            kind = "upsert" if isinstance(change, Upsert) else "remove"
            yield sse_message(kind, change.document(), position)
            last_sent = time.monotonic()
        if not found.changes and time.monotonic() - last_sent > KEEP_ALIVE:
            yield b": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(interval)


def event_stream(iterator: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        iterator,
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )
