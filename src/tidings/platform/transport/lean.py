"""A lean HTTP/1.1 client for the dispatcher: ``LeanTransport``.

It does the one thing the dispatcher needs, a ``POST`` with a small body and
the status of the answer, on asyncio protocols with keep-alive connections
(one pool per scheme, host and port) and ``httptools`` parsing the answer.
It keeps what ``AiohttpTransport`` guarantees:

- the SSRF guard: a URL is normalised once (``normalize_target``: its host
  as the guard reads it, credentials refused), and every address a new
  connection is about to be opened to, a literal target's or a resolved
  name's, is decided by ``connect_address`` first; the socket is handed that
  numeric address, never the name to resolve a second time;
- one attempt timeout for everything (waiting for a free connection,
  resolving, connecting, TLS, writing, the whole answer);
- no redirect followed (a 3xx is an answer like any other), no cookies, no
  decompression;
- TLS for ``https://`` with the default verification and SNI
  (``server_hostname``);
- the answer: its status, ``Retry-After``, and an excerpt of at most
  ``4 * EXCERPT_CHARACTERS`` bytes of the body. A body framed by
  ``Content-Length``, by chunks, or by the end of the connection is read to
  its end (and the connection kept when the server allows), up to
  ``DRAIN_LIMIT`` bytes; past that the connection is closed rather than
  read. A status that arrived before the body failed or stalled is still the
  endpoint's decision, as with aiohttp.

A connection that already carried a request may have been closed by the
server while idle; when such a connection fails before any byte of an
answer arrives, the request is sent once more on a new connection, within
the same attempt (delivery is at least once, and ``webhook-id`` lets the
receiver drop a copy).

The framing headers (``Host``, ``Content-Length``, ``Transfer-Encoding``,
``Connection``) are the transport's own: a configuration's custom header of
one of those names is not sent. A header name or value that would break the
request's framing (CR, LF or NUL; a name that is not an HTTP token) fails the
attempt without a request.

Why it exists rather than aiohttp: it spends about a quarter of aiohttp's
CPU per request, and the dispatcher's rate is bound by CPU
(``bench/dispatch.py``, docs/PERFORMANCE.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections import deque
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

import httptools

from tidings.platform.retry import ErrorKind
from tidings.platform.transport.guard import (
    RefusedAddress,
    Resolver,
    SystemResolver,
    TargetPolicy,
    TargetRefused,
    connect_address,
    normalize_target,
    scheme_refusal,
)
from tidings.platform.transport.types import EXCERPT_CHARACTERS, USER_AGENT, Answer, describe, excerpt

__all__ = ["DRAIN_LIMIT", "EXCERPT_BYTES", "IDLE_SECONDS", "MAX_HEAD", "LeanTransport"]

EXCERPT_BYTES = 4 * EXCERPT_CHARACTERS  # body bytes kept for the excerpt
DRAIN_LIMIT = 64 * 1024  # body bytes read in all; a longer answer closes its connection
MAX_HEAD = 64 * 1024  # bytes of status line and headers
IDLE_SECONDS = 15.0  # an idle connection older than this is closed, not reused
DNS_TTL = 10.0  # seconds a resolved name is reused for new connections

_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters left as they are in a request target; everything else is percent-encoded
# (an existing %XX stays as it is).
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = "/%:@!$&'()*+,;=-._~?"


class _Broken(Exception):
    """The exchange failed before a status arrived. ``retryable``: nothing of an
    answer came back on a connection that had carried a request before."""

    def __init__(self, reason: str, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class _Stalled(Exception):
    """The attempt timeout passed."""


class _Target:
    """What is known of a URL before any request: where to connect, the
    start of every request's head, and the pool of its connections."""

    __slots__ = ("refusal", "scheme", "host", "port", "literal", "server_hostname", "head_start", "head_lines",
                 "pool")

    def __init__(self) -> None:
        self.refusal: str | None = None
        self.scheme = ""
        self.host = ""  # a name to resolve, or a literal address
        self.port = 0
        self.literal = False
        self.server_hostname: str | None = None
        self.head_start = ""
        self.head_lines = 0  # lines in head_start
        self.pool: _Pool | None = None


class _Slots:
    """A counting semaphore whose free path is two attribute operations
    (``asyncio.Semaphore.locked`` cost more than the rest of a request's bookkeeping)."""

    __slots__ = ("free", "waiters")

    def __init__(self, count: int) -> None:
        self.free = count
        self.waiters: deque[asyncio.Future] = deque()

    def take(self) -> bool:
        if self.free > 0:
            self.free -= 1
            return True
        return False

    async def wait(self, deadline: float) -> None:
        """Waits for a slot until ``deadline`` (loop time); raises ``TimeoutError`` then."""
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self.waiters.append(waiter)
        timer = loop.call_at(deadline, _expire_slot, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # the slot came just as the wait was cancelled: pass it on
            raise
        finally:
            timer.cancel()

    def release(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes straight to the next in line
                return
        self.free += 1


class _Pool:
    """The connections to one scheme, host and port."""

    __slots__ = ("key", "idle", "slots")

    def __init__(self, key: tuple, per_endpoint: int) -> None:
        self.key = key
        self.idle: list[_Connection] = []  # a stack: the most recently used first
        self.slots = _Slots(per_endpoint)


def _target(url: str, policy: TargetPolicy) -> _Target:
    """The URL normalised and its scheme checked; its addresses are decided when connecting."""
    target = _Target()
    try:
        normalized = normalize_target(url)
    except TargetRefused as refused:
        target.refusal = refused.reason
        return target
    target.refusal = scheme_refusal(normalized, policy)
    if target.refusal is not None:
        return target
    parts = urlsplit(normalized)  # canonical: a lowercase A-label name or an IP literal, a valid port
    port = parts.port
    scheme = parts.scheme
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    default_port = _DEFAULT_PORTS[scheme]
    target.scheme = scheme
    target.host = host
    target.port = port or default_port
    target.literal = literal
    target.server_hostname = host if scheme == "https" else None
    shown = f"[{host}]" if ":" in host else host
    authority = shown if target.port == default_port else f"{shown}:{target.port}"
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_QUERY_SAFE)
    target.head_start = f"POST {path} HTTP/1.1\r\nHost: {authority}\r\n"
    target.head_lines = target.head_start.count("\n")
    return target


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one exchange at a time, its answer parsed
    by httptools as it arrives. The exchange's future gets ``(status,
    retry_after, excerpt, error)`` or a ``_Broken``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.usable = True  # no end of stream, no error, no unread answer
        self.exchanges = 0  # completed on this connection
        self.idle_since = 0.0
        self.waiter: asyncio.Future | None = None
        self._reset()

    def _reset(self) -> None:
        self.status: int | None = None
        self.retry_after: str | None = None
        self.framed = False  # Content-Length or Transfer-Encoding: the end is not the connection's end
        self.received = 0  # bytes of this answer so far
        self.body = bytearray()
        self.body_read = 0

    # -------------------------------------------------------------- an exchange

    def send(self, data: bytes) -> asyncio.Future:
        self._reset()
        self.waiter = self.loop.create_future()
        self.transport.write(data)
        return self.waiter

    def abandon(self) -> None:
        """The exchange ended without its answer read (timeout, cancellation): close."""
        self.usable = False
        if self.transport is not None:
            self.transport.abort()

    def _done(self, error: str | None = None) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result((self.status, self.retry_after, bytes(self.body), error))
            self.exchanges += 1

    def _fail(self, reason: str) -> None:
        self.usable = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.status is not None:  # the endpoint's decision arrived; only the body failed
                self._done(reason)
            else:
                waiter.set_exception(_Broken(reason, retryable=self.exchanges > 0 and self.received == 0))
        if self.transport is not None:
            self.transport.abort()

    # -------------------------------------------------------------- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self._fail("the server sent data that answers no request")
            return
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("the server switched protocols")
            return
        except httptools.HttpParserError as exc:
            self._fail(f"a malformed answer: {exc}")
            return
        if self.status is None and self.received > MAX_HEAD and not waiter.done():
            self._fail(f"the answer's head is longer than {MAX_HEAD} bytes")

    def eof_received(self) -> bool:
        self.usable = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.status is not None and not self.framed:
                self._done()  # a body that ends with the connection: this is its end
            else:
                self._fail("the server closed the connection before the answer was complete")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self.transport = None
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if exc is None and self.status is not None and not self.framed:
                self._done()
            else:
                reason = str(exc) or type(exc).__name__ if exc is not None else "the connection was closed"
                self._fail(f"the connection was lost before the answer was complete: {reason}")

    # -------------------------------------------------------------- httptools

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"retry-after":
            self.retry_after = value.decode("latin-1").strip()
        elif name == b"content-length" or name == b"transfer-encoding":
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints); the final one follows
            self.retry_after = None
            self.framed = False
            return
        self.status = status

    def on_body(self, body: bytes) -> None:
        if self.status is None:
            return
        room = EXCERPT_BYTES - len(self.body)
        if room > 0:
            self.body += body[:room]
        self.body_read += len(body)
        if self.body_read > DRAIN_LIMIT:
            # Long enough: the status and the excerpt are all that is kept. Closing costs
            # less than reading the rest.
            self.usable = False
            self._done()
            self.transport.abort()

    def on_message_complete(self) -> None:
        if self.status is None:
            return  # the end of an interim answer
        if not self.parser.should_keep_alive():
            self.usable = False
        self._done()


class LeanTransport:
    """Posts over pooled keep-alive HTTP/1.1 connections (see the module's docstring).

    ``resolver`` resolves names (a ``Resolver``; the system's when ``None``);
    whatever it answers, each address is decided by ``connect_address``
    before a socket is opened to it. ``ssl_context`` replaces the default
    verifying context (tests with their own certificate authority).
    """

    def __init__(self, policy: TargetPolicy, *, attempt_timeout: float, concurrency: int = 256,
                 per_endpoint: int = 32, resolver: Resolver | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.policy = policy
        self.attempt_timeout = attempt_timeout
        self._per_endpoint = max(1, per_endpoint)
        self._slots = _Slots(max(1, concurrency))
        self._resolver: Resolver = resolver if resolver is not None else SystemResolver()
        self._ssl_context = ssl_context
        self._targets: dict[str, _Target] = {}
        self._pools: dict[tuple, _Pool] = {}
        self._names: dict[str, tuple[float, list[tuple[int, str]]]] = {}  # host -> (expires, [(family, address)])
        self._header_kinds: dict[str, str] = {}  # header name -> _header_kind(name)
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    # -------------------------------------------------------------- the request

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        started = time.time()
        clock = time.perf_counter()
        target = self._targets.get(url)
        if target is None:
            target = self._target(url)
        if target.refusal is not None:
            return Answer(started, 0.0, error_kind=ErrorKind.REFUSED_TARGET, error=target.refusal)
        head = self._head(target, headers, len(body))
        if isinstance(head, str):
            return self._failed(started, clock, ErrorKind.CONNECTION, head)
        request = head + body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.attempt_timeout
        pool = target.pool
        acquired = []
        try:
            for slots in (self._slots, pool.slots):
                if not slots.take():
                    await slots.wait(deadline)
                acquired.append(slots)
            return await self._exchange(target, pool, request, loop, deadline, started, clock)
        except TimeoutError:
            return self._failed(started, clock, ErrorKind.TIMEOUT,
                                f"no complete answer within {self.attempt_timeout:g} s")
        finally:
            for slots in acquired:
                slots.release()

    async def _exchange(self, target: _Target, pool: _Pool, request: bytes, loop: asyncio.AbstractEventLoop,
                        deadline: float, started: float, clock: float) -> Answer:
        reuse = True
        for _ in range(2):  # a second time only after a reused connection was found closed
            connection = self._idle_connection(pool, loop.time()) if reuse else None
            if connection is None:
                try:
                    async with asyncio.timeout_at(deadline):
                        connection = await self._connect(target, loop)
                except TimeoutError:
                    raise
                except RefusedAddress as refused:
                    return self._failed(started, clock, ErrorKind.REFUSED_TARGET, refused.reason)
                except (OSError, ssl.SSLError, ssl.CertificateError) as exc:
                    return self._failed(started, clock, ErrorKind.CONNECTION, describe(exc))
            waiter = connection.send(request)
            timer = loop.call_at(deadline, _expire, waiter)
            try:
                status, retry_after, body, error = await waiter
            except _Broken as broken:
                if broken.retryable and loop.time() < deadline:
                    reuse = False
                    continue
                return self._failed(started, clock, ErrorKind.CONNECTION, broken.reason)
            except _Stalled:
                status = connection.status
                connection.abandon()
                reason = f"no complete answer within {self.attempt_timeout:g} s"
                if status is None:
                    return self._failed(started, clock, ErrorKind.TIMEOUT, reason)
                # The status arrived, the body did not: the endpoint decided, as with aiohttp.
                return Answer(started, (time.perf_counter() - clock) * 1000.0, status_code=status,
                              excerpt=excerpt(bytes(connection.body)), retry_after=connection.retry_after,
                              error=reason)
            except BaseException:
                connection.abandon()  # cancelled mid-exchange: its answer will never be read
                raise
            finally:
                timer.cancel()
            self._keep(pool, connection, loop.time())
            return Answer(started, (time.perf_counter() - clock) * 1000.0, status_code=status,
                          excerpt=excerpt(body), retry_after=retry_after, error=error)
        return self._failed(started, clock, ErrorKind.CONNECTION, "the connection was closed twice before an answer")

    # -------------------------------------------------------------- connections

    def _idle_connection(self, pool: _Pool, now: float) -> _Connection | None:
        idle = pool.idle
        while idle:
            connection = idle.pop()
            if connection.usable and connection.transport is not None and now - connection.idle_since < IDLE_SECONDS:
                return connection
            connection.abandon()
        return None

    def _keep(self, pool: _Pool, connection: _Connection, now: float) -> None:
        connection.waiter = None
        if not connection.usable or self._closed or len(pool.idle) >= self._per_endpoint:
            connection.abandon()
            return
        connection.idle_since = now
        pool.idle.append(connection)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._sweep)

    def _sweep(self) -> None:
        """Close idle connections too old to reuse, and forget idle pools."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        remaining = 0
        for key in list(self._pools):
            pool = self._pools[key]
            fresh = []
            for connection in pool.idle:
                if connection.usable and now - connection.idle_since < IDLE_SECONDS:
                    fresh.append(connection)
                else:
                    connection.abandon()
            pool.idle = fresh
            remaining += len(fresh)
        if remaining:
            self._sweeper = asyncio.get_running_loop().call_later(IDLE_SECONDS / 2, self._sweep)

    async def _connect(self, target: _Target, loop: asyncio.AbstractEventLoop) -> _Connection:
        """A new connection to the target. The SSRF decision is made here, on
        each address just before a socket is opened to it (``connect_address``),
        and the socket gets that numeric address (``AI_NUMERICHOST``: nothing
        is resolved again)."""
        if target.literal:
            candidates = [target.host]
        else:
            candidates = [address for _, address in await self._resolve(target)]
        context = None
        if target.scheme == "https":
            context = self._ssl_context or _default_ssl_context()
        failure: BaseException | None = None
        refusals = []
        for candidate in candidates:
            try:
                address = connect_address(candidate, self.policy)
            except RefusedAddress as refused:
                refusals.append(refused.reason)
                continue
            family = socket.AF_INET if address.version == 4 else socket.AF_INET6
            try:
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop), str(address), target.port, family=family,
                    flags=socket.AI_NUMERICHOST, ssl=context, server_hostname=target.server_hostname)
                return connection
            except (OSError, ssl.SSLError, ssl.CertificateError) as exc:
                failure = exc
        if failure is not None:
            raise failure
        if refusals and target.literal:
            raise RefusedAddress(refusals[0])
        if refusals:
            raise RefusedAddress(f"{target.host} resolves to no allowed address ({'; '.join(refusals)})")
        raise OSError(f"{target.host} resolves to no address")

    async def _resolve(self, target: _Target) -> list[tuple[int, str]]:
        now = time.monotonic()
        cached = self._names.get(target.host)
        if cached is not None and cached[0] > now:
            return cached[1]
        addresses = await self._resolver.resolve(target.host, target.port)
        if len(self._names) > 10_000:
            self._names.clear()
        self._names[target.host] = (now + DNS_TTL, addresses)
        return addresses

    # -------------------------------------------------------------- the head

    def _target(self, url: str) -> _Target:
        if len(self._targets) > 10_000:
            self._targets.clear()
        target = self._targets[url] = _target(url, self.policy)
        if target.refusal is None:
            key = (target.scheme, target.host, target.port)
            pool = self._pools.get(key)
            if pool is None:
                pool = self._pools[key] = _Pool(key, self._per_endpoint)
            target.pool = pool
        return target

    def _head(self, target: _Target, headers: Mapping[str, str], length: int) -> bytes | str:
        """The request's head as bytes; or, as a str, why the headers cannot be sent."""
        lines = [target.head_start]
        agent = True
        kinds = self._header_kinds
        for name, value in headers.items():
            kind = kinds.get(name)
            if kind is None:
                kind = _header_kind(name)
                if len(kinds) < 10_000:
                    kinds[name] = kind
            if kind is _SENT:
                lines.append(f"{name}: {value}\r\n")
            elif kind is _AGENT:
                agent = False
                lines.append(f"{name}: {value}\r\n")
            elif kind is not _FRAMING_HEADER:
                return f"the header name {name[:100]!r} is not an HTTP token"
        values = "".join(lines)
        # One CR LF per line, the request line and Host included, and nothing else that ends a line.
        count = len(lines) - 1 + target.head_lines
        if values.count("\n") != count or values.count("\r") != count or "\0" in values:
            return "a header value holds a line break or NUL, which would break the request"
        if agent:
            return f"{values}User-Agent: {USER_AGENT}\r\nAccept: */*\r\nContent-Length: {length}\r\n\r\n".encode()
        return f"{values}Accept: */*\r\nContent-Length: {length}\r\n\r\n".encode()

    # -------------------------------------------------------------- results

    @staticmethod
    def _failed(started: float, clock: float, kind: ErrorKind, error: str) -> Answer:
        return Answer(started, (time.perf_counter() - clock) * 1000.0, error_kind=kind, error=error[:500])

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self._pools.values():
            for connection in pool.idle:
                connection.abandon()
            pool.idle.clear()
        self._pools.clear()
        self._targets.clear()
        await self._resolver.close()


_SENT, _AGENT, _FRAMING_HEADER, _INVALID = "sent", "agent", "framing", "invalid"


def _header_kind(name: str) -> str:
    """How a header name is treated: sent as given, the user agent, one of the
    transport's own framing headers (not sent), or not a valid name."""
    if not name or not _TOKEN.issuperset(name):
        return _INVALID
    lowered = name.lower()
    if lowered in _FRAMING:
        return _FRAMING_HEADER
    return _AGENT if lowered == "user-agent" else _SENT


def _expire_slot(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(_Stalled())




_ssl_context: ssl.SSLContext | None = None


def _default_ssl_context() -> ssl.SSLContext:
    """Verifies the certificate and the host name; made once (it loads the system's CA store)."""
    global _ssl_context
    if _ssl_context is None:
        context = ssl.create_default_context()
        context.set_alpn_protocols(["http/1.1"])
        _ssl_context = context
    return _ssl_context
