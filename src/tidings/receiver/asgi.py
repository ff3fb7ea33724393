"""The webhook endpoint as a raw ASGI app: the hot path, without a router.

    app = ReceiverApp(receiver, path="/webhook")           # alone
    app = ReceiverApp(receiver, path="/webhook", fallback=other_asgi_app)

Requests to ``path`` (or ``path/<secret>``) go to the receiver; everything
else goes to ``fallback`` (404 without one). Measured on this machine, a
FastAPI route costs about as much again as this whole app, hence no router
on this path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tidings.receiver.answers import Answer
from tidings.receiver.core import Receiver

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

MAX_BODY_BYTES = 1 << 20  # an event is a few kilobytes; refuse to buffer a flood

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


class ReceiverApp:
    """An ASGI app that answers webhook requests with a ``Receiver``.

    Without a ``fallback`` it also runs the ASGI lifespan: the receiver's
    threads start at start-up and drain at shutdown. With one, the fallback
    owns the lifespan (and should start and close the receiver).
    """

    def __init__(self, receiver: Receiver, path: str = "/webhook", fallback: ASGIApp | None = None) -> None:
        self.receiver = receiver
        self.path = path
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
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


async def send_answer(send, answer: Answer) -> None:
    extra = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers]
    await _send(send, answer.status, answer.body, extra)


async def _send(send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [*_JSON, (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
