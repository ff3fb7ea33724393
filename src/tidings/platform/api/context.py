"""What every request handler of the platform can reach: ``app.state.platform``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncEngine

from tidings.contract.signing import Signer
from tidings.platform.ingest_queue import HandOff
from tidings.platform.settings import PlatformSettings


class KnownKeys:
    """Keys found recently, so that a busy client does not cost a query per
    request. Only hits are kept, for ``ttl`` seconds: a new key works at once.
    A revocation empties the cache: at once in the process that revoked, and
    within ``auth.REVOCATION_CHECK_INTERVAL`` in every other one (``auth.watch_revocations``)."""

    def __init__(self, ttl: float = 30.0, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._found: dict[tuple, tuple[float, object]] = {}

    def get(self, key: tuple) -> object | None:
        hit = self._found.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def forget_all(self) -> None:
        """Drops every key found (this process revoked one)."""
        self._found.clear()

    def put(self, key: tuple, value: object) -> None:
        if len(self._found) >= self.size:
            self._found.clear()  # rare, and cheap to fill again
        self._found[key] = (time.monotonic() + self.ttl, value)


@dataclass
class PlatformContext:
    settings: PlatformSettings
    engine: AsyncEngine
    signer: Signer
    known_keys: KnownKeys = field(default_factory=KnownKeys)  # API keys found recently
    dispatcher: HandOff | None = None  # this process's, when it delivers too: ingestion claims for it


async def platform_context(request: Request) -> PlatformContext:
    # async: FastAPI runs a plain function dependency in a thread pool, per request.
    return request.app.state.platform
