"""The receiver's private side: the inbox, the read API and the repair actions,
on a listener of their own, behind a token.

    admin = AdminListener(host="127.0.0.1", port=8001, token=new_token())
    app = admin_app(receiver, admin)        # serve it on admin.host:admin.port only

A receiver's webhook URL is reachable by the whole internet by design; what
it stores (every customer's messages) must not be. So the public listener
(``asgi.receiver_app``) serves the webhook and ``/health`` and nothing else,
and this app serves the rest on another address and port, by default on
loopback. Its door (``tidings.web.admin_door``) takes the token as a bearer
header or, once, in the URL that signs a browser in; it checks ``Host``
against the listener's own names and the ``Origin`` of every form post. Every
answer carries the pages' security headers (``tidings.web.page_headers``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from tidings.receiver.read_api import read_router
from tidings.web.admin_door import AdminDoor, AdminSessions, allowed_hosts, host_name, new_token
from tidings.web.inbox import PREFIX as INBOX_PATH
from tidings.web.inbox import mount_inbox
from tidings.web.page_headers import PageHeaders

WILDCARD_HOSTS = ("0.0.0.0", "::", "")
MIN_TOKEN_LENGTH = 16  # a generated token has 43 characters


@dataclass(frozen=True)
class AdminListener:
    """Where the admin listener listens, its token, and the extra ``Host`` names it answers to.

    ``token_given``: whether the operator chose the token (then it is not printed).
    """

    port: int
    host: str = "127.0.0.1"
    token: str = field(default_factory=new_token, repr=False)
    allowed_hosts: tuple[str, ...] = ()
    token_given: bool = False

    def with_port(self, port: int) -> AdminListener:
        """The same listener on ``port`` (the one a socket bound to port 0 got)."""
        return AdminListener(port, self.host, self.token, self.allowed_hosts, self.token_given)

    @property
    def base_url(self) -> str:
        """The URL to open on this machine: a wildcard address is reached on loopback."""
        host = "127.0.0.1" if self.host in WILDCARD_HOSTS else host_name(self.host)
        return f"http://{host}:{self.port}"

    def sign_in_url(self, path: str = INBOX_PATH) -> str:
        """The URL that signs a browser in (the token in it is dropped by the redirect)."""
        return f"{self.base_url}{path}?token={self.token}"

    @property
    def hosts(self) -> frozenset[str]:
        return allowed_hosts(self.host, self.port, self.allowed_hosts)


def admin_app(receiver: Any, listener: AdminListener, *, sessions: AdminSessions | None = None,
              lifespan: Any = None) -> FastAPI:
    """The admin listener's app for ``receiver`` (a ``tidings.receiver.Receiver``): read API, inbox, repairs."""
    api = FastAPI(title="tidings receiver (admin)", docs_url=None, redoc_url=None, lifespan=lifespan)
    api.include_router(read_router(receiver.log))
    mount_inbox(api, receiver)

    @api.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse(INBOX_PATH, status_code=303)

    api.add_middleware(AdminDoor, token=listener.token, hosts=listener.hosts,
                       cookie_name=f"tidings_admin_{listener.port}", sessions=sessions)
    api.add_middleware(PageHeaders)  # outermost: the door's refusals carry the headers too
    return api


def admin_listener(port: int, host: str = "127.0.0.1", token: str | None = None,
                   allowed: Iterable[str] = ()) -> AdminListener:
    """An ``AdminListener`` with ``token``, or a new one when none is given."""
    if token is not None and len(token.strip()) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the admin token must have at least {MIN_TOKEN_LENGTH} characters; "
                         "leave it out to have one generated")
    return AdminListener(port, host, token if token is not None else new_token(), tuple(allowed), token is not None)
