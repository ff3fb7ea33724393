"""The security headers of every page of both dashboards, as one small ASGI middleware.

    app.add_middleware(PageHeaders)                          # every answer of the app
    app.add_middleware(PageHeaders, prefix="/dashboard")     # only under a path

The Content-Security-Policy allows scripts, styles, images and connections
(the live stream) from the page's own origin only, no inline script or
style, no plugin, no framing, and forms that post to the same origin:
``static/live.js`` is a file, and the templates carry no inline code. A page
is never framed (``frame-ancestors 'none'``, and ``X-Frame-Options`` for
older browsers), a response is never sniffed into another type, and no
referrer leaves for another site (the pages' URLs name conversations and
deliveries). ``Referrer-Policy: same-origin`` rather than ``no-referrer``:
under ``no-referrer`` a browser sends ``Origin: null`` with the page's own
form posts, which the Origin check must refuse.
"""

from __future__ import annotations

from typing import Any

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "form-action 'self'",
    "base-uri 'none'",
    "frame-ancestors 'none'",
])

PAGE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
)


def with_page_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` with the page headers in place of any of the same names.

    >>> [name for name, _ in with_page_headers([(b"content-type", b"text/html"), (b"X-Frame-Options", b"SAMEORIGIN")])]
    [b'content-type', b'content-security-policy', b'x-content-type-options', b'x-frame-options', b'referrer-policy']
    """
    ours = {name for name, _ in PAGE_HEADERS}
    return [(name, value) for name, value in headers if name.lower() not in ours] + list(PAGE_HEADERS)


def under_prefix(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or below it (``/dashboard``, ``/dashboard/x``; not ``/dashboards``).

    >>> under_prefix("/dashboard/deliveries", "/dashboard"), under_prefix("/dashboards", "/dashboard"), under_prefix("/x", "")
    (True, False, True)
    """
    prefix = prefix.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


class PageHeaders:
    """Adds ``PAGE_HEADERS`` to every HTTP answer of ``app`` whose path is under ``prefix``."""

    def __init__(self, app: Any, prefix: str = "") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not under_prefix(scope["path"], self.prefix):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": with_page_headers(list(message.get("headers", [])))}
            await send(message)

        await self.app(scope, receive, send_with_headers)
