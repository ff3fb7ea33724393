"""uvicorn's httptools protocol with the limits it lacks (``tidings.serving.limits``).

    uvicorn.Server(limited_config(app, limits, http=BoundedHttpProtocol))

- a request's head must be read within ``head_timeout`` of its first byte
  (of the connection's opening, for the first request), and its body within
  ``body_timeout`` of its head, or the connection is closed: one timer per
  connection, armed once and moved forward only when it fires;
- a head past ``max_head_bytes`` or ``max_headers`` gets ``431``;
- a ``Content-Length`` past ``max_body_bytes`` gets ``413`` before any of
  the body is read, and a chunked body is cut with ``413`` at the limit.

A refusal closes the connection. Everything else stays uvicorn's.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from tidings.serving.limits import DEFAULT_LIMITS, body_too_large, declared_too_large, head_too_large

__all__ = ["BoundedHttpProtocol", "RequestRefused"]


class RequestRefused(Exception):
    """Raised in a parser callback to stop parsing and answer ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BoundedHttpProtocol(HttpToolsProtocol):
    """``http=BoundedHttpProtocol``; reads its limits from ``config.limits`` (``limited_config``)."""

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        self.limits = getattr(config, "limits", DEFAULT_LIMITS)
        self.read_deadline: float | None = None  # when the head or body being read must be complete
        self.deadline_timer = None  # pending whenever read_deadline is set
        self.reading_head = True
        self.unfinished_head_bytes = 0  # received while a head is unfinished (the parser buffers a partial header)
        self.body_bytes = 0
        self.refusal: RequestRefused | None = None

    # ---------------------------------------------------------------- the deadline

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._expect_by(self.limits.head_timeout)

    def connection_lost(self, exc) -> None:
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
            self.deadline_timer = None
        super().connection_lost(exc)

    def _expect_by(self, seconds: float) -> None:
        self.read_deadline = self.loop.time() + seconds
        if self.deadline_timer is None:
            self.deadline_timer = self.loop.call_at(self.read_deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        """Closes a connection whose head or body is late; else waits for the deadline now set, if any."""
        self.deadline_timer = None
        if self.read_deadline is None or self.transport.is_closing():
            return
        if self.loop.time() >= self.read_deadline:
            self.transport.close()
            return
        self.deadline_timer = self.loop.call_at(self.read_deadline, self._on_deadline)

    # ---------------------------------------------------------------- uvicorn's callbacks

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.reading_head and self.refusal is None:  # a head still unfinished after this chunk
            self.unfinished_head_bytes += len(data)
            if head_too_large(self.unfinished_head_bytes, 0, self.limits):
                self._refuse(RequestRefused(431, "request header fields too large"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_head = True
        self.unfinished_head_bytes = self.body_bytes = 0
        if self.read_deadline is None:  # a later request on a kept-alive connection
            self._expect_by(self.limits.head_timeout)

    def on_headers_complete(self) -> None:
        self.reading_head = False
        # One pass over the head here costs less than a check in each on_header.
        head_bytes, declared = len(self.url), None
        for name, value in self.headers:
            head_bytes += len(name) + len(value)
            if name == b"content-length":
                declared = value
        if head_too_large(head_bytes, len(self.headers), self.limits):
            raise self._refused(431, "request header fields too large")
        if declared is not None and declared_too_large(declared, self.limits):
            raise self._refused(413, "body too large")
        self.read_deadline = self.loop.time() + self.limits.body_timeout  # the timer is pending: see _expect_by
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if body_too_large(self.body_bytes, self.limits):
            raise self._refused(413, "body too large")
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.read_deadline = None
        super().on_message_complete()

    # ---------------------------------------------------------------- refusing

    def _refused(self, status: int, message: str) -> RequestRefused:
        self.refusal = RequestRefused(status, message)
        return self.refusal

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error, which a refusal raised in a callback is."""
        if self.refusal is None:
            super().send_400_response(msg)
            return
        self._refuse(self.refusal)

    def _refuse(self, refusal: RequestRefused) -> None:
        self.refusal = refusal
        self.read_deadline = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.keep_alive = False
            if cycle.response_started:  # an answer is on its way: cut it
                self.transport.close()
                return
            cycle.response_started = cycle.response_complete = cycle.disconnected = True  # the app's sends are dropped
            cycle.message_event.set()
        if not self.transport.is_closing():
            self.transport.write(self.refusal_response(refusal.status, refusal.message))
            self.transport.close()

    def refusal_response(self, status: int, message: str) -> bytes:
        """The whole response to a refused request: JSON ``{"detail": message}``, connection closed."""
        body = json.dumps({"detail": message}, separators=(",", ":")).encode()  # as FastAPI words an error
        return refusal_bytes(status, body, self.server_state.default_headers)


def refusal_bytes(status: int, body: bytes, default_headers) -> bytes:
    """A JSON response that closes the connection, with uvicorn's default headers."""
    lines = [STATUS_LINE[status], *(name + b": " + value + b"\r\n" for name, value in default_headers),
             b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
             b"connection: close\r\n\r\n", body]
    return b"".join(lines)
