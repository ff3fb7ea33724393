"""The limits both servers put on every connection, in one place.

    limits = ConnectionLimits(max_connections=500)
    uvicorn.Server(limited_config(app, limits, http=SomeBoundedProtocol))

``ConnectionLimits`` holds the numbers with their defaults; the functions
below decide (without I/O) what a request's head, its declared length and
the bytes read so far call for. uvicorn applies the limits it owns
(``limit_concurrency``, ``timeout_keep_alive``, h11's
``h11_max_incomplete_event_size``); ``tidings.serving.bounded_http`` applies
the others (time to read a head and a body, head size, body size), which
uvicorn's httptools protocol lacks. ``docs/SECURITY.md`` ("Limits") lists
each with its test.
"""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["ConnectionLimits", "DEFAULT_LIMITS", "body_too_large", "declared_too_large", "head_too_large",
           "limited_config", "raise_open_file_limit", "uvicorn_options"]


@dataclass(frozen=True)
class ConnectionLimits:
    """What one server process allows a connection; the defaults suit both servers."""

    head_timeout: float = 5.0  # seconds from a request's first byte (or the connection's) to its last header
    body_timeout: float = 15.0  # seconds from the last header to the body's last byte
    keep_alive_timeout: int = 5  # seconds an idle keep-alive connection stays open (uvicorn's)
    max_head_bytes: int = 32 * 1024  # the request line and the headers, names and values
    max_headers: int = 100
    max_body_bytes: int = 1 << 20  # declared (Content-Length: 413 before reading) or read (chunked: cut)
    max_connections: int = 1000  # per process; past it, 503 (uvicorn's limit_concurrency)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_LIMITS = ConnectionLimits()


def head_too_large(head_bytes: int, header_count: int, limits: ConnectionLimits) -> bool:
    """Whether a head read so far passes the size or count cap (pure)."""
    return head_bytes > limits.max_head_bytes or header_count > limits.max_headers


def declared_too_large(content_length: bytes, limits: ConnectionLimits) -> bool:
    """Whether a ``Content-Length`` value announces a body past the cap (pure;
    a malformed value is the parser's to refuse)."""
    return content_length.isdigit() and int(content_length) > limits.max_body_bytes


def body_too_large(body_bytes: int, limits: ConnectionLimits) -> bool:
    """Whether the bytes of a body read so far pass the cap (pure)."""
    return body_bytes > limits.max_body_bytes


def uvicorn_options(limits: ConnectionLimits) -> dict[str, Any]:
    """The ``uvicorn.Config`` settings for the limits uvicorn applies itself (pure)."""
    return {"limit_concurrency": limits.max_connections, "timeout_keep_alive": limits.keep_alive_timeout,
            "h11_max_incomplete_event_size": limits.max_head_bytes}


def limited_config(app: Any, limits: ConnectionLimits = DEFAULT_LIMITS, **options: Any):
    """A ``uvicorn.Config`` for ``app`` with ``limits``: uvicorn's own settings,
    and ``.limits`` for the protocol (``bounded_http``) to read."""
    import uvicorn

    config = uvicorn.Config(app, **uvicorn_options(limits), **options)
    config.limits = limits  # read by BoundedHttpProtocol; travels with the config to worker processes
    return config


def raise_open_file_limit() -> int:
    """Raises this process's soft limit of open files to its hard limit, so that
    ``max_connections``, not EMFILE, decides; returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # e.g. macOS refuses an unlimited soft limit: keep the one there is
        return soft
    return hard
