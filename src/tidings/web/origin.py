"""Form posts of the dashboard and the inbox must come from their own pages.

Browsers send ``Origin`` with every cross-site form post; a post whose
``Origin`` names another site is refused. (The dashboard's cookie is also
``SameSite=Strict``. The inbox's door, ``admin_door``, is stricter still: a
post with its session cookie and no ``Origin`` is refused there.)
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import HTTPException, Request


def is_same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a post with this ``Origin`` comes from a page of the server at ``host``.

    No ``Origin`` at all is a client that is not a browser page (curl, a test): allowed.

    >>> is_same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    True
    >>> is_same_origin("https://evil.example", "127.0.0.1:8000")
    False
    >>> is_same_origin("null", "127.0.0.1:8000")
    False
    """
    if origin is None:
        return True
    if not host:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


def check_same_origin(request: Request) -> None:
    if not is_same_origin(request.headers.get("origin"), request.headers.get("host")):
        raise HTTPException(403, "this action must come from a page of this server")
