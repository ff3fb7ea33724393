"""The service's HTTP protocol: uvicorn's own, with webhook POSTs answered without ASGI.

Everything about connections stays uvicorn's (keep-alive, pipelining, flow
control, timeouts, shutdown); every other request still goes to the ASGI app
(the read API, a GET on the webhook path). Only a ``POST`` to the webhook
path skips the ASGI machinery: no task, no ASGI messages; the body goes to
``Receiver.submit`` and the answer is written in one ``write`` when its
future resolves, instead of two (headers, then body).

Why: measured on this machine with ``wrk``, 64 connections, a server that
answers 200 at once: uvicorn with an ASGI app spent about 30 µs of CPU per
request, a bare httptools protocol about 10 µs. The answers are the same
bytes either way (``tests/test_receiver_fast_http.py`` compares them).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tidings.receiver.answers import Answer
from tidings.receiver.asgi import MAX_BODY_BYTES, ReceiverApp, match_webhook_path

_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden", 413: b"Payload Too Large", 503: b"Service Unavailable"}
_TOO_LARGE = Answer(413, b'{"error":"body too large"}')


def find_receiver_app(app) -> ReceiverApp | None:
    """The ``ReceiverApp`` inside uvicorn's wrappers, if the app is one."""
    for _ in range(10):
        if isinstance(app, ReceiverApp):
            return app
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def render(answer: Answer, default_headers: list[tuple[bytes, bytes]], keep_alive: bool) -> bytes:
    """The whole HTTP/1.1 response, status line to body."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (answer.status, _REASONS.get(answer.status, b""))]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    lines.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(answer.body))
    lines += [b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers]
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    lines.append(answer.body)
    return b"".join(lines)


class WebhookHttpProtocol(HttpToolsProtocol):
    """``uvicorn.run(..., http=WebhookHttpProtocol)`` with a ``ReceiverApp`` as the app."""

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        self.receiver_app = find_receiver_app(config.loaded_app)
        self.fast_cycle = None
        self.fast_secret: str | None = None

    def _start_asgi_task(self, cycle, app) -> None:
        scope = cycle.scope
        if self.receiver_app is not None and scope["method"] == "POST":
            matched, secret = match_webhook_path(scope["path"], self.receiver_app.path)
            if matched:
                self.fast_cycle, self.fast_secret = cycle, secret
                if cycle.waiting_for_100_continue:
                    cycle.waiting_for_100_continue = False
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if not cycle.more_body:  # a pipelined request, read in full already
                    self._submit(cycle)
                return
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is not self.fast_cycle or cycle is None:
            super().on_body(body)
            return
        if cycle.response_complete:
            return
        cycle.body += body
        if len(cycle.body) > MAX_BODY_BYTES:
            cycle.keep_alive = False  # the rest of the body is not read: the connection cannot go on
            self._respond(cycle, _TOO_LARGE)

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if cycle is None or cycle is not self.fast_cycle:
            super().on_message_complete()
            return
        if cycle.response_complete:
            return
        cycle.more_body = False
        self._submit(cycle)

    def _submit(self, cycle) -> None:
        scope = cycle.scope
        future = self.receiver_app.receiver.submit(
            bytes(cycle.body), scope["headers"], scope["query_string"].decode("latin-1"), self.fast_secret
        )
        future.add_done_callback(lambda done: self._answered(cycle, done))

    def _answered(self, cycle, future: asyncio.Future) -> None:
        if future.cancelled():
            return
        self._respond(cycle, future.result())

    def _respond(self, cycle, answer: Answer) -> None:
        if cycle.response_complete:
            return
        cycle.response_complete = True
        cycle.response_started = True
        if cycle.disconnected or self.transport.is_closing():
            return
        self.transport.write(render(answer, self.server_state.default_headers, cycle.keep_alive))
        if not cycle.keep_alive:
            self.transport.close()
        if cycle is self.fast_cycle:
            self.fast_cycle = None
        cycle.on_response()
