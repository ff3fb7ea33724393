"""One stalled endpoint does not hold up the others: over real sockets on
127.0.0.1, an endpoint that holds every request it gets and one that answers
at once, with the stalled endpoint's deliveries due first and more of them
than the dispatcher may hold in all."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from sqlalchemy import func, select

from tests.dispatcher_support import add_configuration, add_events, add_organization, database, fast_settings, new_signer
from tests.loopback import serve_aiohttp, serve_connections
from tidings.platform.dispatcher import Dispatcher
from tidings.store.platform_tables import deliveries

pytestmark = pytest.mark.timeout(90)

STALLED_DELIVERIES = 300  # more than the dispatcher holds at once (capacity 8 + 8 * 16 = 136)
FAST_DELIVERIES = 40
MAX_PER_ENDPOINT = 2
CONCURRENCY = 8
BOUND = 10.0  # seconds for every delivery to the answering endpoint


@dataclass
class StalledEndpoint:
    """Reads each request and answers it only once ``release`` is set."""

    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0
    most_held: int = 0
    requests: int = 0

    async def on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            self.requests += 1
            self.held += 1
            self.most_held = max(self.most_held, self.held)
            try:
                await self.release.wait()
            finally:
                self.held -= 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()


async def delivered_to(engine, config_id: int) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(deliveries).where(
            deliveries.c.webhook_config_id == config_id, deliveries.c.status == "delivered"))).scalar_one()


def answering_app(answered: list[float]) -> web.Application:
    """An endpoint at ``/hook`` that answers 200 and notes when, in ``answered``."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        answered.append(time.monotonic())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", answer)
    return app


async def test_a_stalled_endpoint_does_not_hold_up_deliveries_to_another(db_url):
    """Killed by the mutations "no per-endpoint limit" (the stalled endpoint takes every
    connection) and "no queue budget" (its queue takes everything the dispatcher may hold)."""
    signer = new_signer()
    stalled = StalledEndpoint()
    answered: list[float] = []
    app = answering_app(answered)
    settings = fast_settings(attempt_timeout=60.0, max_per_endpoint=MAX_PER_ENDPOINT, batch_size=16)
    async with serve_connections(stalled.on_connection) as stalled_url, serve_aiohttp(app) as fast_url, \
            database(db_url) as engine:
        slow_org, fast_org = await add_organization(engine, "Slow"), await add_organization(engine, "Fast")
        slow_config = await add_configuration(engine, slow_org, stalled_url + "/hook")
        fast_config = await add_configuration(engine, fast_org, fast_url + "/hook")
        await add_events(engine, signer, slow_org, STALLED_DELIVERIES)  # due first
        await add_events(engine, signer, fast_org, FAST_DELIVERIES)
        dispatcher = Dispatcher(engine, signer, settings, concurrency=CONCURRENCY, poll_interval=0.1)
        stop = asyncio.Event()
        started = time.monotonic()
        running = asyncio.create_task(dispatcher.run(stop))
        try:
            while await delivered_to(engine, fast_config) < FAST_DELIVERIES:
                assert time.monotonic() - started < BOUND, (
                    f"{await delivered_to(engine, fast_config)} of {FAST_DELIVERIES} delivered to the answering "
                    f"endpoint within {BOUND} s; the stalled one holds {stalled.held} requests")
                assert not running.done(), running.exception()
                await asyncio.sleep(0.05)
            assert len(answered) == FAST_DELIVERIES
            # Meanwhile the stalled endpoint held at most its share, and nothing of it was delivered.
            assert 0 < stalled.most_held <= MAX_PER_ENDPOINT
            assert await delivered_to(engine, slow_config) == 0
        finally:
            stalled.release.set()
            stop.set()
            await asyncio.wait_for(running, 30)


IDLE_SPELL = 0.8  # seconds: more than two of the dispatcher's pace windows (RATE_WINDOW)
BURST = 120  # deliveries at once after the spell: many more than MAX_PER_ENDPOINT


async def test_a_burst_after_an_idle_spell_is_sent_not_handed_back(db_url):
    """An endpoint that was idle has no pace yet: the burst that follows is
    held and sent, not handed back to the database for a second as if the
    endpoint were slow (its pace read as zero over the idle spell)."""
    signer = new_signer()
    answered: list[float] = []
    app = answering_app(answered)
    settings = fast_settings(max_per_endpoint=MAX_PER_ENDPOINT, batch_size=BURST)
    async with serve_aiohttp(app) as url, database(db_url) as engine:
        org = await add_organization(engine)
        config = await add_configuration(engine, org, url + "/hook")
        dispatcher = Dispatcher(engine, signer, settings, concurrency=CONCURRENCY, poll_interval=0.05)
        stop = asyncio.Event()
        running = asyncio.create_task(dispatcher.run(stop))
        try:
            await add_events(engine, signer, org, 3, seed=1)
            started = time.monotonic()
            while await delivered_to(engine, config) < 3:
                assert time.monotonic() - started < BOUND and not running.done()
                await asyncio.sleep(0.02)
            await asyncio.sleep(IDLE_SPELL)
            await add_events(engine, signer, org, BURST, seed=2)
            started = time.monotonic()
            while await delivered_to(engine, config) < 3 + BURST:
                assert time.monotonic() - started < BOUND and not running.done()
                await asyncio.sleep(0.02)
            assert dispatcher.stats.handed_back == 0
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)
