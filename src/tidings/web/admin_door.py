"""The door of a private listener (the receiver's admin): a token, as Jupyter does it.

Whoever holds the token gets in, two ways:

- a browser opens the URL printed at start-up, ``/inbox?token=TOKEN``: the
  door opens a server-side session, sets its opaque id (never the token) in
  an ``HttpOnly``, ``SameSite=Strict`` cookie, and redirects to the same URL
  without the token, so that the token leaves the address bar and history;
- a program sends ``Authorization: Bearer TOKEN`` with each request.

Before anything else the ``Host`` header must name this listener (its host,
``localhost``, ``127.0.0.1`` or ``[::1]`` with its port, or an allowed name):
a page of another site that rebinds its DNS name to this address still
carries its own name, and is refused (DNS rebinding). A request that changes
something with the cookie alone (any method but GET and HEAD) must come from
a page of this listener: its ``Origin`` must be this listener's, and a
missing ``Origin`` is refused (cross-site request forgery). A request with
the bearer token needs no ``Origin``: no browser sends that header by itself.

``decide`` is the whole rule, with no I/O; ``AdminDoor`` is the ASGI
middleware that applies it and keeps the sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import orjson
from starlette.requests import cookie_parser

TOKEN_ENV = "TIDINGS_ADMIN_TOKEN"
TOKEN_PARAMETER = "token"
SESSION_LIFETIME = 12 * 3600.0  # seconds a browser stays signed in after opening the token URL
MAX_SESSIONS = 1000  # the oldest session is closed past this many
SAFE_METHODS = frozenset({"GET", "HEAD"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def new_token() -> str:
    """A token for a listener started without one."""
    return secrets.token_urlsafe(32)


def host_name(host: str) -> str:
    """A host as it appears in a ``Host`` header: an IPv6 address in brackets, lower case.

    >>> host_name("::1"), host_name("LocalHost"), host_name("[::1]"), host_name("inbox.example.com:8443")
    ('[::1]', 'localhost', '[::1]', 'inbox.example.com:8443')
    """
    host = host.strip().lower()
    try:
        is_ipv6 = ipaddress.ip_address(host).version == 6
    except ValueError:
        is_ipv6 = False
    return f"[{host}]" if is_ipv6 else host


def allowed_hosts(host: str, port: int, extra: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` values a listener on ``host:port`` answers to.

    Its own host and the loopback names, with the port; each ``extra`` name as
    given (``inbox.example.com``, behind a proxy on the default port) and with
    the port (``inbox.example.com:8001``).

    >>> sorted(allowed_hosts("127.0.0.1", 8001, ["inbox.example.com", "proxy.example:8443"]))[2:]
    ['inbox.example.com', 'inbox.example.com:8001', 'localhost:8001', 'proxy.example:8443']
    """
    names = {f"{host_name(name)}:{port}" for name in (host, *LOOPBACK_NAMES)}
    for name in extra:
        name = host_name(name)
        if name:
            names.add(name)
            if not _has_port(name):
                names.add(f"{name}:{port}")
    return frozenset(names)


def _has_port(host: str) -> bool:
    return host.rsplit("]", 1)[-1].count(":") == 1 if host.startswith("[") else ":" in host


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, if that is what it holds.

    >>> bearer_token("Bearer abc"), bearer_token("bearer  abc "), bearer_token("Basic abc"), bearer_token(None)
    ('abc', 'abc', None, None)
    """
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def token_matches(given: str, token: str) -> bool:
    """Whether ``given`` is the token, in time that does not depend on where they differ."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape"))


def split_token(query: str) -> tuple[str | None, str]:
    """The token a query string carries, and the query string without it.

    >>> split_token("token=abc&after=3"), split_token("after=3")
    (('abc', 'after=3'), (None, 'after=3'))
    """
    pairs = parse_qsl(query, keep_blank_values=True)
    tokens = [value for name, value in pairs if name == TOKEN_PARAMETER]
    rest = urlencode([(name, value) for name, value in pairs if name != TOKEN_PARAMETER])
    return (tokens[-1] if tokens else None), rest


def same_origin(origin: str | None, host: str) -> bool:
    """Whether ``Origin`` names the listener at ``host``; a missing or opaque ``Origin`` does not.

    The scheme is not compared: behind a proxy that ends TLS the page is
    ``https`` while the listener sees ``http``, and no other server can
    answer on this listener's host and port.

    >>> same_origin("http://127.0.0.1:8001", "127.0.0.1:8001"), same_origin(None, "127.0.0.1:8001")
    (True, False)
    >>> same_origin("null", "127.0.0.1:8001"), same_origin("https://evil.example", "127.0.0.1:8001")
    (False, False)
    """
    if not origin:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()


def same_site_path(path: str) -> str:
    """``path`` as a redirect target that stays on this site: one leading slash, percent-encoded.

    >>> same_site_path("//evil.example/x"), same_site_path("/inbox/threads/7")
    ('/evil.example/x', '/inbox/threads/7')
    """
    return "/" + quote(path.lstrip("/\\"), safe="/")


@dataclass(frozen=True)
class Knock:
    """What a request shows at the door."""

    method: str
    host: str | None
    query_token: str | None
    bearer: str | None
    has_session: bool
    origin: str | None


@dataclass(frozen=True)
class Verdict:
    """``enter``, ``sign_in`` (open a session, then redirect without the token) or ``refuse``."""

    action: str
    status: int = 200
    reason: str = ""


ENTER = Verdict("enter")
SIGN_IN = Verdict("sign_in", 303)
NEEDS_TOKEN = ("open the admin URL printed at start-up (it carries ?token=), "
               "or send Authorization: Bearer TOKEN")


def decide(knock: Knock, token: str, hosts: frozenset[str]) -> Verdict:
    """The door's rule: ``Host`` first, then the bearer token, the URL token, the session cookie."""
    if not knock.host:
        return Verdict("refuse", 400, "a Host header is required")
    if knock.host.lower() not in hosts:
        return Verdict("refuse", 403, "this listener does not answer to that Host")
    if knock.bearer is not None:
        return ENTER if token_matches(knock.bearer, token) else Verdict("refuse", 401, "wrong token")
    if knock.query_token is not None:
        if knock.method not in SAFE_METHODS:
            return Verdict("refuse", 405, "sign in with a GET of the token URL")
        return SIGN_IN if token_matches(knock.query_token, token) else Verdict("refuse", 401, "wrong token")
    if knock.has_session:
        if knock.method not in SAFE_METHODS and not same_origin(knock.origin, knock.host):
            return Verdict("refuse", 403, "this action must come from a page of this listener (Origin)")
        return ENTER
    return Verdict("refuse", 401, NEEDS_TOKEN)


class AdminSessions:
    """Signed-in browsers: opaque ids, kept in memory by their SHA-256, for ``lifetime`` seconds."""

    def __init__(self, lifetime: float = SESSION_LIFETIME, limit: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self.clock = clock
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    @staticmethod
    def _key(session_id: str) -> bytes:
        return hashlib.sha256(session_id.encode("utf-8", "surrogateescape")).digest()

    def open(self) -> str:
        session_id = secrets.token_urlsafe(32)
        self._expiry[self._key(session_id)] = self.clock() + self.lifetime
        while len(self._expiry) > self.limit:
            self._expiry.popitem(last=False)
        return session_id

    def is_open(self, session_id: str | None) -> bool:
        if not session_id:
            return False
        key = self._key(session_id)
        expiry = self._expiry.get(key)
        if expiry is None:
            return False
        if expiry <= self.clock():
            del self._expiry[key]
            return False
        return True

    def __len__(self) -> int:
        return len(self._expiry)


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


class AdminDoor:
    """ASGI middleware: lets a request through to ``app`` only by ``decide``'s rule."""

    def __init__(self, app: Any, *, token: str, hosts: frozenset[str], cookie_name: str = "tidings_admin",
                 sessions: AdminSessions | None = None) -> None:
        if not token:
            raise ValueError("the admin listener needs a token")
        self.app = app
        self.token = token
        self.hosts = hosts
        self.cookie_name = cookie_name
        self.sessions = sessions or AdminSessions()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websocket here
            return
        query_token, rest = split_token(scope.get("query_string", b"").decode("latin-1"))
        cookies = cookie_parser(_header(scope, b"cookie") or "")
        knock = Knock(
            method=scope["method"],
            host=_header(scope, b"host"),
            query_token=query_token,
            bearer=bearer_token(_header(scope, b"authorization")),
            has_session=self.sessions.is_open(cookies.get(self.cookie_name)),
            origin=_header(scope, b"origin"),
        )
        verdict = decide(knock, self.token, self.hosts)
        if verdict.action == "enter":
            await self.app(scope, receive, send)
        elif verdict.action == "sign_in":
            await self._sign_in(scope, send, rest)
        else:
            await _refuse(send, verdict)

    async def _sign_in(self, scope, send, rest: str) -> None:
        session_id = self.sessions.open()
        cookie = (f"{self.cookie_name}={session_id}; Path=/; HttpOnly; SameSite=Strict; "
                  f"Max-Age={int(self.sessions.lifetime)}")
        if scope.get("scheme") == "https":
            cookie += "; Secure"
        location = same_site_path(scope.get("root_path", "") + scope["path"]) + (f"?{rest}" if rest else "")
        await send({"type": "http.response.start", "status": 303, "headers": [
            (b"location", location.encode("latin-1")),
            (b"set-cookie", cookie.encode("latin-1")),
            (b"cache-control", b"no-store"),
            (b"content-length", b"0"),
        ]})
        await send({"type": "http.response.body", "body": b""})


async def _refuse(send, verdict: Verdict) -> None:
    body = orjson.dumps({"error": verdict.reason})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")]
    if verdict.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": verdict.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
