"""What every request handler of the platform can reach: ``app.state.platform``."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.contract.signing import Signer
from tidings.platform.settings import PlatformSettings


@dataclass
class PlatformContext:
    settings: PlatformSettings
    engine: AsyncEngine
    signer: Signer


def platform_context(request: Request) -> PlatformContext:
    return request.app.state.platform
