"""The webhook endpoint as a raw ASGI app: the hot path, without a router.

    app = receiver_app(receiver, path="/webhook")          # the public listener: the webhook and /health
    app = ReceiverApp(receiver, path="/webhook", fallback=other_asgi_app)

Requests to ``path`` (or ``path/<secret>``) go to the receiver and ``GET
/health`` is answered; everything else goes to ``fallback``, or gets 404
without one. Without a fallback the app serves nothing that was stored: it
is what faces the internet, while the inbox and the read API are served on
a listener of their own (``tidings.apps.receiver_admin``). No router on
this path: a FastAPI route costs about as much again as this whole app
(``bench/receive.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from tidings.receiver.answers import Answer
from tidings.receiver.core import Receiver
from tidings.serving.limits import DEFAULT_LIMITS

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

MAX_BODY_BYTES = DEFAULT_LIMITS.max_body_bytes  # an event is a few kilobytes; refuse to buffer a flood
HEALTH_PATH = "/health"

_JSON = [(b"content-type", b"application/json")]


def match_webhook_path(path: str, webhook_path: str) -> tuple[bool, str | None]:
    """Whether ``path`` is the webhook's, and the secret segment it carries, if any.

    >>> match_webhook_path("/webhook", "/webhook")
    (True, None)
    >>> match_webhook_path("/webhook/s3cret", "/webhook")
    (True, 's3cret')
    >>> match_webhook_path("/webhook/a/b", "/webhook")
    (False, None)
    """
    base = webhook_path.rstrip("/") or ""
    if path == base or path == base + "/":
        return True, None
    if path.startswith(base + "/"):
        rest = path[len(base) + 1 :]
        if rest and "/" not in rest:
            return True, rest
    return False, None


Lifespan = Callable[[Any], AbstractAsyncContextManager[None]]


class ReceiverApp:
    """An ASGI app that answers webhook requests with a ``Receiver``, and ``GET /health``.

    Without a ``fallback`` it also runs the ASGI lifespan: ``lifespan(app)``
    when given (an async context manager, as Starlette takes), else the
    receiver's threads start at start-up and drain at shutdown. With a
    fallback, the fallback owns the lifespan (and should start and close the
    receiver).
    """

    def __init__(self, receiver: Receiver, path: str = "/webhook", fallback: ASGIApp | None = None,
                 lifespan: Lifespan | None = None) -> None:
        self.receiver = receiver
        self.path = path
        self.fallback = fallback
        self.lifespan = lifespan

    async def __call__(self, scope: Scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"] == HEALTH_PATH and scope["method"] in ("GET", "HEAD"):
                await _send(send, 200, b'{"status":"ok"}')
                return
            matched, path_secret = match_webhook_path(scope["path"], self.path)
            if matched:
                await self._webhook(scope, receive, send, path_secret)
                return
        elif kind == "lifespan" and self.fallback is None:
            await self._lifespan(receive, send)
            return
        if self.fallback is not None:
            await self.fallback(scope, receive, send)
        elif kind == "http":
            await _send(send, 404, b'{"error":"not found"}')

    async def _webhook(self, scope: Scope, receive, send, path_secret: str | None) -> None:
        if scope["method"] != "POST":
            await _send(send, 405, b'{"error":"use POST"}', [(b"allow", b"POST")])
            return
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                await _send(send, 413, b'{"error":"body too large"}')
                return
        answer = await self.receiver.handle(body, scope["headers"], scope["query_string"].decode("latin-1"), path_secret)
        await send_answer(send, answer)

    async def _lifespan(self, receive, send) -> None:
        if self.lifespan is not None:
            await _run_lifespan(self.lifespan(self), receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.receiver.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.receiver.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def receiver_app(receiver: Receiver, path: str = "/webhook", lifespan: Lifespan | None = None) -> ReceiverApp:
    """The public listener's app: ``POST path`` (and ``path/<secret>``), ``GET /health``, 404 for the rest."""
    return ReceiverApp(receiver, path, lifespan=lifespan)


async def _run_lifespan(context: AbstractAsyncContextManager[None], receive, send) -> None:
    """The ASGI lifespan protocol around one async context manager."""
    await receive()  # lifespan.startup
    try:
        await context.__aenter__()
    except Exception as exc:
        await send({"type": "lifespan.startup.failed", "message": str(exc)})
        return
    await send({"type": "lifespan.startup.complete"})
    await receive()  # lifespan.shutdown
    try:
        await context.__aexit__(None, None, None)
    except Exception as exc:
        await send({"type": "lifespan.shutdown.failed", "message": str(exc)})
        return
    await send({"type": "lifespan.shutdown.complete"})


async def send_answer(send, answer: Answer) -> None:
    extra = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers]
    await _send(send, answer.status, answer.body, extra)


async def _send(send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
