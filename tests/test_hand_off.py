"""On SQLite, the ingestion's transaction claims the deliveries it writes for
the dispatcher of its process (``IngestQueue(hand_off=...)``), which sends
them once it commits; what it has no room to claim is left to the commit's
wake-up. Over real sockets, with the safety-net poll set far beyond the test."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web
from sqlalchemy import func, select

from tests.dispatcher_support import add_configuration, fast_settings
from tests.loopback import serving_hook
from tests.platform_support import running_platform
from tidings.platform.ingest_queue import IngestQueue
from tidings.platform.ingestion import ChannelMessage, IncomingMessage
from tidings.platform.workers import build_dispatcher
from tidings.store.platform_tables import deliveries

pytestmark = pytest.mark.timeout(60)
POLL = 60.0  # the dispatcher's own poll: never reached here
BOUND = 5.0  # seconds for every event to arrive
HOLD = 1.0  # seconds the subscriber takes to answer, in the test of the room


class Subscriber:
    """Counts the events as they arrive, and answers each ``hold`` seconds later."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.arrived = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrived += 1
        await asyncio.sleep(self.hold)
        return web.Response(status=200)


def message(tenant, number: int) -> ChannelMessage:
    return ChannelMessage(tenant.org_id, tenant.channel_id, IncomingMessage(
        business_id=tenant.business_id, external_conversation_id=f"c{number}", external_message_id=f"m{number}",
        content=f"text {number}"))


async def ingest_and_wait(sqlite_url: str, count: int, *, hold: float = 0.0, **dispatcher_settings):
    """Ingests ``count`` messages at once through a queue that hands off to a
    running dispatcher; returns the dispatcher's stats, the queue's batches
    and the seconds until every event arrived."""
    subscriber = Subscriber(hold)
    async with serving_hook(subscriber.handle) as url, running_platform(sqlite_url) as platform:
        tenant = await platform.tenant("A")
        await add_configuration(platform.engine, tenant.org_id, url)
        dispatcher = build_dispatcher(platform.engine, platform.signer,
                                      fast_settings(poll_interval=POLL, **dispatcher_settings))
        queue = IngestQueue(platform.engine, platform.signer, hand_off=dispatcher)
        stop = asyncio.Event()
        running = asyncio.create_task(dispatcher.run(stop))
        try:
            started = time.monotonic()
            while not dispatcher.room_to_hand_off():  # registered and delivering
                assert time.monotonic() - started < BOUND and not running.done()
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # its first look found nothing
            await asyncio.gather(*[queue.ingest(message(tenant, number)) for number in range(count)])
            started = time.monotonic()
            while subscriber.arrived < count:
                assert time.monotonic() - started < BOUND, (
                    f"{subscriber.arrived} of {count} arrived within {BOUND} s; {dispatcher.stats}")
                await asyncio.sleep(0.01)
            took = time.monotonic() - started
        finally:
            await queue.stop()
            stop.set()
            await asyncio.wait_for(running, 30)
        async with platform.engine.connect() as conn:
            delivered = (await conn.execute(select(func.count()).select_from(deliveries)
                                            .where(deliveries.c.status == "delivered"))).scalar_one()
        assert delivered == count
        return dispatcher.stats, queue.batches, took


async def test_the_ingestion_hands_its_deliveries_to_the_dispatcher_of_its_process(sqlite_url):
    stats, _, _ = await ingest_and_wait(sqlite_url, 20)
    assert stats.taken == stats.claimed == 20  # the dispatcher claimed none itself


async def test_what_the_ingestion_has_no_room_for_is_left_to_the_wake_up(sqlite_url):
    # One batch of 12; the dispatcher takes at most batch_size (4) from a writer at
    # a time. The other 8 leave at the commit's wake-up, not once the first 4 are
    # answered (HOLD later), when the dispatcher would look for more anyway.
    stats, batches, took = await ingest_and_wait(sqlite_url, 12, hold=HOLD, batch_size=4)
    assert batches == 1 and stats.taken == 4 and stats.claimed == 12
    assert took < HOLD / 2
