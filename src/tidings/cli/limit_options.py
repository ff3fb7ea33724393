"""The connection-limit flags that ``tidings serve`` and ``tidings receive``
share, declared once (``tidings.serving.limits`` holds the defaults)."""

from __future__ import annotations

from typing import Annotated

import typer

from tidings.serving.limits import DEFAULT_LIMITS, ConnectionLimits

MaxConnections = Annotated[int, typer.Option(
    "--max-connections", min=1, help="open connections per process (each listener); past it, 503")]
MaxBodyBytes = Annotated[int, typer.Option(
    "--max-body-bytes", min=1, help="largest request body; a larger Content-Length gets 413 unread, a chunked one is cut")]
HeadTimeout = Annotated[float, typer.Option(
    "--head-timeout", min=0.1, help="seconds a request's headers may take to arrive before the connection closes")]
BodyTimeout = Annotated[float, typer.Option(
    "--body-timeout", min=0.1, help="seconds a request's body may take to arrive, after its headers")]

__all__ = ["DEFAULT_LIMITS", "BodyTimeout", "HeadTimeout", "MaxBodyBytes", "MaxConnections", "connection_limits"]


def connection_limits(max_connections: int, max_body_bytes: int, head_timeout: float,
                      body_timeout: float) -> ConnectionLimits:
    """The limits the flags ask for, the others at their defaults."""
    return ConnectionLimits(max_connections=max_connections, max_body_bytes=max_body_bytes,
                            head_timeout=head_timeout, body_timeout=body_timeout)
