"""Deleting a webhook configuration while its deliveries are being sent: the
engine goes on for everybody, the results of the deleted configuration's
attempts are dropped, counted and never retried, and what is left of it goes.

Over real sockets: the platform's API served by uvicorn on loopback, a
subscriber that is slow for the deleted configuration, and the dispatcher as
``tidings serve`` builds it."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
from sqlalchemy import func, select

from tests.dispatcher_support import scripted_endpoint
from tests.platform_support import running_platform, serve
from tidings.platform.workers import build_dispatcher
from tidings.store.platform_tables import attempts, deliveries, webhook_configs

pytestmark = pytest.mark.timeout(120)


async def wait_for(condition, *, seconds: float = 30.0, what: str = "a condition") -> None:
    """Polls ``condition()`` (an async callable) until it is true, for at most ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def dispatching(platform):
    dispatcher = build_dispatcher(platform.engine, platform.signer, platform.context.settings.delivery,
                                  poll_interval=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        yield dispatcher
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def subscribe(client: httpx.AsyncClient, tenant, url: str) -> int:
    answer = await client.post("/v2/webhooks", headers=tenant.headers, json={"items": [
        {"url": url, "event_type": "message_created", "ordering": "conversation"}]})
    assert answer.status_code == 200, answer.text
    return answer.json()["items"][0]["id"]


async def post_messages(client: httpx.AsyncClient, tenant, prefix: str, count: int) -> None:
    for n in range(count):
        answer = await client.post(f"/v2/custom-channels/{tenant.channel_id}/messages", headers=tenant.headers, json={
            "business_id": tenant.business_id, "external_conversation_id": f"{prefix}-{n % 3}",
            "external_message_id": f"{prefix}-{n}", "content": f"message {n}", "sender_type": "Consumer"})
        assert answer.status_code == 200, answer.text


async def test_deleting_a_configuration_with_deliveries_in_flight_stops_nobody(db_url):
    async with (running_platform(db_url) as platform,
                scripted_endpoint(slow=[("hang", 1.5)], fast=[200], again=[200]) as subscriber):
        a, b = await platform.tenant("A"), await platform.tenant("B")
        async with serve(platform.app) as base, httpx.AsyncClient(base_url=base) as client, \
                dispatching(platform) as dispatcher:
            doomed = await subscribe(client, a, subscriber.url("/slow"))
            await subscribe(client, b, subscriber.url("/fast"))
            await post_messages(client, a, "a", 9)

            async def in_flight() -> bool:
                async with platform.engine.connect() as conn:
                    sending = (await conn.execute(select(func.count()).select_from(deliveries).where(
                        deliveries.c.webhook_config_id == doomed, deliveries.c.status == "delivering"))).scalar_one()
                return sending > 0 and len(subscriber.on("/slow")) > 0

            await wait_for(in_flight, what="deliveries of the doomed configuration in flight")
            assert (await client.delete(f"/v2/webhooks/{doomed}", headers=a.headers)).status_code == 204
            # The event type is free at once, and the organization subscribes again elsewhere.
            await subscribe(client, a, subscriber.url("/again"))
            await post_messages(client, b, "b", 20)
            await post_messages(client, a, "a-again", 20)

            async def everything_else_delivered() -> bool:
                return len(subscriber.on("/fast")) == 20 and len(subscriber.on("/again")) == 20

            await wait_for(everything_else_delivered, what="every event of the other configurations")

            async def doomed_gone() -> bool:
                async with platform.engine.connect() as conn:
                    left = (await conn.execute(select(func.count()).select_from(deliveries).where(
                        deliveries.c.webhook_config_id == doomed))).scalar_one()
                    row = (await conn.execute(select(webhook_configs.c.id).where(
                        webhook_configs.c.id == doomed))).first()
                return left == 0 and row is None

            # The slow answers end; their results are dropped, and the purge takes the configuration's row.
            await wait_for(doomed_gone, what="the deleted configuration's last rows to go")
            assert dispatcher.stats.dropped >= 1
            requests_when_gone = len(subscriber.on("/slow"))
            await asyncio.sleep(0.5)
            assert len(subscriber.on("/slow")) == requests_when_gone  # nothing of it is retried

        async with platform.engine.connect() as conn:
            statuses = dict((await conn.execute(select(deliveries.c.status, func.count())
                                                .group_by(deliveries.c.status))).all())
            orphans = (await conn.execute(select(func.count()).select_from(attempts).where(
                attempts.c.delivery_id.not_in(select(deliveries.c.id))))).scalar_one()
        assert statuses == {"delivered": 40}
        assert orphans == 0
