"""The applications as the commands serve them, assembled from the layers
below: the platform's ``/v2`` API with its dashboard."""

from __future__ import annotations

from fastapi import FastAPI

from tidings.platform.api.app import create_app
from tidings.platform.api.context import PlatformContext
from tidings.web.dashboard import mount_dashboard

__all__ = ["platform_app"]


def platform_app(context: PlatformContext, *, partner_seed: int | None = None) -> FastAPI:
    """The platform as ``tidings serve`` serves it: the API and, under ``/dashboard``, its dashboard."""
    app = create_app(context, partner_seed=partner_seed)
    mount_dashboard(app)
    return app
