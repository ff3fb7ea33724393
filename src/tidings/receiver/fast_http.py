"""The receiver's HTTP protocol: uvicorn's own, with webhook POSTs answered
without ASGI (a ``tidings.serving.FastPathProtocol``).

Every other request still goes to the ASGI app (a GET on the webhook path,
the health answer). A ``POST`` to the webhook path goes to
``Receiver.submit`` and its answer is written in one ``write``: uvicorn with
an ASGI app spends about three times the CPU per request (``bench/receive.py``).
The answers are the same bytes either way (``tests/test_receiver_fast_http.py``).
"""

from __future__ import annotations

import asyncio
import json

from tidings.receiver.answers import Answer
from tidings.receiver.asgi import ReceiverApp, match_webhook_path
from tidings.serving.fast_path import FastPathProtocol, http_response


def find_receiver_app(app) -> ReceiverApp | None:
    """The ``ReceiverApp`` inside uvicorn's wrappers, if the app is one."""
    for _ in range(10):
        if isinstance(app, ReceiverApp):
            return app
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


def answer_headers(answer: Answer) -> list[tuple[bytes, bytes]]:
    """The headers of an answer, in the order the receiver's ASGI app sends them."""
    return [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer.body)),
            *((name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers)]


class WebhookHttpProtocol(FastPathProtocol):
    """``uvicorn.run(..., http=WebhookHttpProtocol)`` with a ``ReceiverApp`` as the app."""

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        self.receiver_app = find_receiver_app(config.loaded_app)
        self.fast_secret: str | None = None

    def take(self, cycle) -> bool:
        scope = cycle.scope
        if self.receiver_app is None or scope["method"] != "POST":
            return False
        matched, self.fast_secret = match_webhook_path(scope["path"], self.receiver_app.path)
        return matched

    def submit(self, cycle) -> asyncio.Future:
        scope = cycle.scope
        return self.receiver_app.receiver.submit(bytes(cycle.body), scope["headers"],
                                                 scope["query_string"].decode("latin-1"), self.fast_secret)

    def render(self, cycle, outcome: object) -> tuple[bytes, bool]:
        if not isinstance(outcome, Answer):
            raise outcome if isinstance(outcome, BaseException) else TypeError(f"not an Answer: {outcome!r}")
        return http_response(outcome.status, answer_headers(outcome), outcome.body,
                             self.server_state.default_headers, cycle.keep_alive), False

    def refusal_response(self, status: int, message: str) -> bytes:
        """A refusal in the receiver's words: ``{"error": message}``, as its ASGI app answers."""
        answer = Answer(status, json.dumps({"error": message}, separators=(",", ":")).encode())
        return http_response(status, answer_headers(answer), answer.body, self.server_state.default_headers,
                             keep_alive=False)
