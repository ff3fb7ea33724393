"""uvicorn's httptools protocol with some requests answered without ASGI.

    uvicorn.run(app, http=SubclassOfFastPathProtocol)

Everything about connections stays uvicorn's (keep-alive, pipelining, flow
control, shutdown) or ``BoundedHttpProtocol``'s (the limits), and so does
every request the subclass does not ``take``. A request it takes skips the
ASGI machinery: its body is buffered (at most ``max_body_bytes`` of the
limits), handed to ``submit``, and the answer
written in one ``write`` when the returned future resolves. Both fast paths
(custom-channel ingestion on the platform, webhook POSTs on the receiver)
are subclasses; ``bench/ingest.py`` and ``bench/receive.py`` measure them
against the ASGI path.

This relies on uvicorn's private ``HttpToolsProtocol._start_asgi_task`` and
the attributes of its ``RequestResponseCycle`` (pinned in pyproject.toml;
``tests/test_pins.py`` fails at once if they go).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import STATUS_LINE
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from tidings.serving.bounded_http import BoundedHttpProtocol
from tidings.serving.limits import body_too_large

__all__ = ["FastPathProtocol", "http_response"]

Headers = list[tuple[bytes, bytes]]


def http_response(status: int, headers: Headers, body: bytes, default_headers: Headers, keep_alive: bool) -> bytes:
    """A whole HTTP/1.1 response, status line to body, as uvicorn writes one:
    its default headers (``server``, ``date``), then ``headers``."""
    lines = [STATUS_LINE[status]]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    lines += [name + b": " + value + b"\r\n" for name, value in headers]
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


class FastPathProtocol(BoundedHttpProtocol):
    """The base of the fast paths; a subclass says which requests it takes,
    starts their work, and renders their answers."""

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        self.fast_cycle = None  # the request being answered without ASGI
        self.fast_app = None  # the ASGI app it goes to if the fast path lets it go

    # ---------------------------------------------------------------- what a subclass decides

    def take(self, cycle) -> bool:
        """Whether this request, its head read, is answered here (the body is not read yet)."""
        return False

    def submit(self, cycle) -> asyncio.Future | None:
        """Starts the work for a taken request whose body (``cycle.body``) is
        complete; ``None`` hands it to the ASGI app instead, body and all."""
        raise NotImplementedError

    def render(self, cycle, outcome: object) -> tuple[bytes, bool]:
        """The response for the future's result (or its exception), and
        whether the connection must close after it."""
        raise NotImplementedError

    # ---------------------------------------------------------------- uvicorn's callbacks

    def _start_asgi_task(self, cycle, app) -> None:
        if app is self.app and self.take(cycle):  # not uvicorn's own 503 past its concurrency limit
            self.fast_cycle, self.fast_app = cycle, app
            if cycle.waiting_for_100_continue:
                cycle.waiting_for_100_continue = False
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if not cycle.more_body:  # a pipelined request, read in full already
                self._submit(cycle)
            return
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is None or cycle is not self.fast_cycle:
            super().on_body(body)
            return
        if cycle.response_complete:
            return
        cycle.body += body
        if body_too_large(len(cycle.body), self.limits):
            raise self._refused(413, "body too large")  # answered and closed by BoundedHttpProtocol

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if cycle is None or cycle is not self.fast_cycle:
            super().on_message_complete()
            return
        self.read_deadline = None
        if cycle.response_complete:
            return
        cycle.more_body = False
        self._submit(cycle)

    # ---------------------------------------------------------------- answering

    def _submit(self, cycle) -> None:
        future = self.submit(cycle)
        if future is None:
            self._let_go(cycle)
            return
        future.add_done_callback(lambda done: self._answered(cycle, done))

    def _let_go(self, cycle) -> None:
        """Hands the request, its body read in full, to the ASGI app."""
        app = self.fast_app
        self.fast_cycle = self.fast_app = None
        cycle.message_event.set()  # the body is there for the app's first receive()
        super()._start_asgi_task(cycle, app)

    def _answered(self, cycle, future: asyncio.Future) -> None:
        if future.cancelled():  # the server stops: as uvicorn does with a cancelled request task, no answer
            self._finish(cycle)
            if not self.transport.is_closing():
                self.transport.close()
            return
        error = future.exception()
        try:
            response, close = self.render(cycle, error if error is not None else future.result())
        except Exception as failure:  # as uvicorn does when an ASGI app raises: log it, 500, close
            self.logger.error("Exception in ASGI application\n", exc_info=failure)
            body = b"Internal Server Error"
            response, close = http_response(500, [(b"content-type", b"text/plain; charset=utf-8"),
                                                  (b"content-length", b"%d" % len(body))], body,
                                            self.server_state.default_headers, keep_alive=False), True
        self._respond(cycle, response, close=close)

    def _respond(self, cycle, response: bytes, *, close: bool = False) -> None:
        if cycle.response_complete:
            return
        if cycle.disconnected or self.transport.is_closing():
            self._finish(cycle)
            return
        self.transport.write(response)
        if cycle.access_log:
            scope = cycle.scope
            cycle.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(scope), scope["method"],
                                     get_path_with_query_string(scope), scope["http_version"],
                                     int(response[9:12]))
        if close or not cycle.keep_alive:
            self.transport.close()
        self._finish(cycle)
        cycle.on_response()

    def _finish(self, cycle) -> None:
        cycle.response_complete = True
        cycle.response_started = True
        if cycle is self.fast_cycle:
            self.fast_cycle = self.fast_app = None
