"""Signing in to the dashboard with an API key.

The sign-in form puts the key in an HttpOnly cookie (and, for a PROVIDER key,
the organization chosen in a second one). Every page, stream and action then
resolves the organization with the API's own ``org_context``, so the rules
(which key belongs to which organization, what a PROVIDER key may manage)
live in one place. The cookies are ``SameSite=Strict`` and scoped to the
dashboard's path; actions also refuse a foreign ``Origin`` (``tidings.web.origin``).
"""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from fastapi import HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from tidings.platform.api.auth import OrgContext, org_context
from tidings.platform.api.context import platform_context

KEY_COOKIE = "tidings_key"
ORG_COOKIE = "tidings_org"
COOKIE_PATH = "/dashboard"
COOKIE_MAX_AGE = 12 * 3600


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
    key = request.cookies.get(KEY_COOKIE)
    if not key:
        raise SignInRequired("sign in with an API key")
    return await resolve_org(request, key, parse_org_id(request.cookies.get(ORG_COOKIE)))


def start_session(response: Response, request: Request, key: str, org_id: int | None) -> None:
    secure = request.url.scheme == "https"
    common = {"path": COOKIE_PATH, "httponly": True, "samesite": "strict", "secure": secure, "max_age": COOKIE_MAX_AGE}
    response.set_cookie(KEY_COOKIE, key, **common)
    if org_id is None:
        response.delete_cookie(ORG_COOKIE, path=COOKIE_PATH)
    else:
        response.set_cookie(ORG_COOKIE, str(org_id), **common)


def end_session(response: Response) -> None:
    response.delete_cookie(KEY_COOKIE, path=COOKIE_PATH)
    response.delete_cookie(ORG_COOKIE, path=COOKIE_PATH)


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

