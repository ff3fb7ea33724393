"""A subscriber that misbehaves now and then: errors, rate limits, hangs.

The demo points one organization's webhooks at it so that the dashboard
shows retries, backoff and the circuit breaker at work on real requests.
"""

from __future__ import annotations

import asyncio
import random
import socket
from dataclasses import dataclass

from aiohttp import web


@dataclass(frozen=True)
class FlakyBehaviour:
    error_share: float = 0.25  # answer 503
    rate_limit_share: float = 0.05  # answer 429 with Retry-After: 1
    hang_share: float = 0.02  # answer only after hang_seconds
    hang_seconds: float = 15.0


def flaky_answer(draw: float, behaviour: FlakyBehaviour) -> str:
    """What to do with one request, from a uniform draw in [0, 1): pure."""
    if draw < behaviour.error_share:
        return "error"
    draw -= behaviour.error_share
    if draw < behaviour.rate_limit_share:
        return "rate_limit"
    draw -= behaviour.rate_limit_share
    if draw < behaviour.hang_share:
        return "hang"
    return "ok"


class FlakyEndpoint:
    """An aiohttp server on loopback that answers as ``flaky_answer`` says."""

    def __init__(self, behaviour: FlakyBehaviour = FlakyBehaviour(), seed: int = 0) -> None:
        self.behaviour = behaviour
        self.random = random.Random(seed)
        self.counts: dict[str, int] = {"ok": 0, "error": 0, "rate_limit": 0, "hang": 0}
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        answer = flaky_answer(self.random.random(), self.behaviour)
        self.counts[answer] += 1
        if answer == "error":
            return web.Response(status=503, text="temporarily unavailable")
        if answer == "rate_limit":
            return web.Response(status=429, text="slow down", headers={"Retry-After": "1"})
        if answer == "hang":
            await asyncio.sleep(self.behaviour.hang_seconds)
        return web.Response(status=200, text="ok")

    async def start(self, sock: socket.socket) -> int:
        """Serves on ``sock`` (bound, kept until ``stop``); returns its port."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        return sock.getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
