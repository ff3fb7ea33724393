"""A delivery leaves as soon as its transaction commits: with the safety-net
poll set to 60 s, each event reaches a subscriber on loopback within 100 ms
of its commit, in one process on both engines (the commit wakes the
dispatcher) and across two processes on PostgreSQL (NOTIFY, LISTEN)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import web
from sqlalchemy import func, select

from tests.loopback import serving_hook
from tests.dispatcher_support import add_configuration, add_organization, database, fast_settings, new_signer
from tidings.contract.samples import SampleFactory
from tidings.contract.signing import private_key_whsk
from tidings.platform.deliveries.outbox import record_event
from tidings.platform.sealed import new_key
from tidings.platform.workers import build_dispatcher
from tidings.store.platform_tables import workers

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent
POLL = 60.0  # the safety net, far longer than the test
BOUND = 0.100  # seconds from a commit to the subscriber
EVENTS = 5
SETTLE = 0.3  # seconds between an arrival and the next commit: more than the dispatcher's flush interval


class Subscriber:
    """Answers 200 and notes when each event arrived (on this process's clock)."""

    def __init__(self) -> None:
        self.arrivals: asyncio.Queue[float] = asyncio.Queue()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.arrivals.put_nowait(time.perf_counter())
        return web.Response(status=200)

    def serving(self):
        return serving_hook(self.handle)


async def commit_events_one_by_one(engine, signer, org_id: int, subscriber: Subscriber) -> list[float]:
    """Commits one event at a time and waits for it; returns each one's time from commit to subscriber."""
    factory = SampleFactory(3)
    delays = []
    for _ in range(EVENTS):
        # Once the dispatcher has recorded the last delivery and looked again for more,
        # it sleeps: only a wake-up can bring the next one within the bound.
        await asyncio.sleep(SETTLE)
        async with engine.begin() as conn:
            await record_event(conn, org_id=org_id, event=factory.message_created(org_id=org_id), signer=signer)
        committed = time.perf_counter()
        arrived = await asyncio.wait_for(subscriber.arrivals.get(), 10)  # not POLL: the wake-up must do it
        delays.append(arrived - committed)
    return delays


async def test_a_commit_wakes_the_dispatcher_of_its_process(db_url):
    signer = new_signer()
    subscriber = Subscriber()
    async with subscriber.serving() as url, database(db_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, url)
        dispatcher = build_dispatcher(engine, signer, fast_settings(poll_interval=POLL))
        stop = asyncio.Event()
        running = asyncio.create_task(dispatcher.run(stop))
        try:
            await asyncio.sleep(0.2)  # its first look found nothing: from now on only a wake-up helps
            delays = await commit_events_one_by_one(engine, signer, org_id, subscriber)
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)
    assert max(delays) < BOUND, [f"{delay * 1000:.1f} ms" for delay in delays]


async def test_a_commit_in_one_process_wakes_a_worker_in_another_on_postgresql(postgres_url):
    signer = new_signer()
    subscriber = Subscriber()
    async with subscriber.serving() as url, database(postgres_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, url)
        worker = subprocess.Popen(
            [sys.executable, "-m", "tidings.cli.worker", "--db", postgres_url,
             "--signing-key", private_key_whsk(signer.private_key), "--allow-private-targets", "--allow-http",
             "--no-migrate", "--poll-interval", str(POLL)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "TIDINGS_SECRETS_KEY": new_key()})
        try:
            deadline = time.monotonic() + 30
            while True:  # registered: it listens a moment later, and looks once when it starts to
                async with engine.connect() as conn:
                    if (await conn.execute(select(func.count()).select_from(workers))).scalar_one():
                        break
                assert worker.poll() is None and time.monotonic() < deadline, "the worker did not start"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            delays = await commit_events_one_by_one(engine, signer, org_id, subscriber)
        finally:
            worker.terminate()
            assert worker.wait(20) == 0, worker.stderr.read()[-2000:]
    assert max(delays) < BOUND, [f"{delay * 1000:.1f} ms" for delay in delays]
