"""Signing in to the dashboard with an API key.

The sign-in form checks the key with the API's own ``org_context`` (so the
rules, which key belongs to which organization and what a PROVIDER key may
manage, live in one place) and opens a server-side session
(``tidings.platform.api_keys``): the HttpOnly cookie holds a random id, the
database only its hash, with the key's id and the organization. Signing out
deletes the session; revoking the key ends it. The cookie is
``SameSite=Strict`` and scoped to the dashboard's path; actions also refuse a
foreign ``Origin`` (``tidings.web.origin``).
"""

from __future__ import annotations

import time
from urllib.parse import quote, urlsplit

from fastapi import HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from tidings.contract import utcnow
from tidings.platform import api_keys
from tidings.platform.api.auth import OrgContext, org_context
from tidings.platform.api.context import platform_context
from tidings.store.engine import begin_write

SESSION_COOKIE = "tidings_session"
COOKIE_PATH = "/dashboard"
COOKIE_MAX_AGE = int(api_keys.SESSION_LIFETIME)


class SignInRequired(Exception):
    """The request carries no key, or one that does not open the organization it asks for."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_org_id(text: str | None) -> int | None:
    """The organization a PROVIDER key acts for, from a form field or a cookie.

    >>> parse_org_id(" 12 "), parse_org_id(""), parse_org_id("x")
    (12, None, None)
    """
    text = (text or "").strip()
    if not text.isdigit() or len(text) > 18:
        return None
    number = int(text)
    return number if number >= 1 else None


async def resolve_org(request: Request, key: str | None, org_id: int | None) -> OrgContext:
    """The organization ``key`` acts for, by the API's rules; ``SignInRequired`` if none."""
    try:
        return await org_context(request, key=key, org_id=org_id, platform=await platform_context(request))
    except HTTPException as refused:
        raise SignInRequired(str(refused.detail)) from None


async def signed_in_org(request: Request) -> OrgContext:
    """The organization of the session that ``request`` belongs to."""
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id or len(session_id) > 100:
        raise SignInRequired("sign in with an API key")
    platform = await platform_context(request)
    async with platform.engine.connect() as conn:
        found = await api_keys.find_session(conn, session_id, time.time())
    if found is None:
        raise SignInRequired("your session has ended: sign in again")
    return OrgContext(org_id=found.org_id, api_key_id=found.api_key_id, key_kind=found.kind)


async def start_session(response: Response, request: Request, org: OrgContext) -> None:
    """Opens a session for ``org`` and sets its id, never the key, in the cookie."""
    platform = await platform_context(request)
    async with begin_write(platform.engine) as conn:
        session_id = await api_keys.open_session(conn, api_key_id=org.api_key_id, org_id=org.org_id,
                                                 now=utcnow(), now_epoch=time.time())
    response.set_cookie(SESSION_COOKIE, session_id, path=COOKIE_PATH, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", max_age=COOKIE_MAX_AGE)


async def end_session(response: Response, request: Request) -> None:
    """Deletes the session of ``request`` on the server and its cookie."""
    session_id = request.cookies.get(SESSION_COOKIE)
    if session_id:
        platform = await platform_context(request)
        async with begin_write(platform.engine) as conn:
            await api_keys.end_session(conn, session_id)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)


def sign_in_redirect(request: Request) -> RedirectResponse:
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    return RedirectResponse(f"{COOKIE_PATH}/sign-in?next={quote(target, safe='')}", status_code=303)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: only a dashboard path of this server.

    >>> safe_next("/dashboard/deliveries?status=failed"), safe_next("//evil.example/x"), safe_next(None)
    ('/dashboard/deliveries?status=failed', '/dashboard', '/dashboard')
    """
    if not target or not target.startswith(COOKIE_PATH) or target.startswith("//") or "\\" in target:
        return COOKIE_PATH
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return COOKIE_PATH
    return target

