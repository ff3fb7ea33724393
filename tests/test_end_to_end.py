"""The platform and a receiver talking over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import func, select

from tests.loopback import base_url, command_on_socket, loopback_socket, port_of
from tests.platform_support import running_platform, serve
from tidings.contract import MessageCreated, MessageUpdated, parse_event
from tidings.contract.signing import Verifier, public_key_pem
from tidings.platform.conversations import delivery_final_callback
from tidings.platform.dispatcher import Dispatcher
from tidings.store.platform_tables import deliveries

pytestmark = pytest.mark.timeout(240)


@contextlib.asynccontextmanager
async def dispatching(platform):
    """A dispatcher delivering the platform's deliveries, as ``tidings serve`` runs one."""
    stop = asyncio.Event()
    dispatcher = Dispatcher(platform.engine, platform.signer, platform.context.settings.delivery,
                            on_final=delivery_final_callback(platform.signer), poll_interval=0.05)
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        yield dispatcher
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def recording_receiver():
    """A subscriber's endpoint that answers 200 and keeps every request."""
    received: list[tuple[bytes, dict]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append((await request.read(), dict(request.headers)))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook", received
    finally:
        await runner.cleanup()


async def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def subscribe(session, api, tenant, url) -> list[dict]:
    items = [{"url": url, "event_type": t} for t in ("message_created", "message_updated")]
    async with session.post(f"{api}/v2/webhooks", json={"items": items}, headers=tenant.headers) as answer:
        assert answer.status == 200, await answer.text()
        return (await answer.json())["items"]


async def test_messages_and_replies_arrive_signed_and_parsed(db_url):
    async with running_platform(db_url) as platform, recording_receiver() as (hook, received), \
            serve(platform.app) as api, dispatching(platform), aiohttp.ClientSession() as session:
        tenant = await platform.tenant("Acme")
        configs = await subscribe(session, api, tenant, hook)
        secrets = []
        for config in configs:
            async with session.get(f"{api}/v2/webhooks/{config['id']}/secret", headers=tenant.headers) as answer:
                secrets.append((await answer.json())["secret"])

        # a consumer writes through the custom channel
        async with session.post(f"{api}/v2/custom-channels/{tenant.channel_id}/messages", headers=tenant.headers, json={
            "business_id": tenant.business_id, "external_conversation_id": "thread-1",
            "external_message_id": "m-1", "content": "Hello, are you open today?", "sender_type": "Consumer",
            "consumer_name": "Ana Martin"}) as answer:
            assert answer.status == 200, await answer.text()
            ingested = await answer.json()
        await wait_for(lambda: asyncio.sleep(0, len(received) >= 1), 20, "the consumer's message")
        body, headers = received[0]
        event = parse_event(body)
        assert isinstance(event, MessageCreated)
        assert event.payload.message.id == ingested["message_id"]
        assert event.payload.message.content == "Hello, are you open today?"
        assert event.payload.message.sender_type == "Consumer" and event.payload.message.status == "Success"
        assert event.payload.message.custom_channel.external_message_id == "m-1"
        assert event.payload.conversation.custom_channel.external_conversation_id == "thread-1"
        assert event.payload.org_id == tenant.org_id
        public = Verifier(public_keys=[platform.signer.private_key.public_key()])
        assert public.verify(body, headers) == "vendor"
        assert public.verify(body, {k: v for k, v in headers.items() if not k.startswith("X-Tidings")}) == "v1a"
        assert Verifier(secrets=secrets).verify(body, headers) == "v1"

        # a business user replies: created Sending, then updated Success once the channel's webhook took it
        async with session.post(f"{api}/v2/messages", headers=tenant.headers, json={
                "conversation_id": ingested["conversation_id"], "content": "Yes, until 7pm."}) as answer:
            assert answer.status == 200, await answer.text()
            reply = await answer.json()
        await wait_for(lambda: asyncio.sleep(0, len(received) >= 3), 20, "the reply's two events")
        reply_events = [parse_event(b) for b, _ in received[1:]]
        # message_updated follows the delivery of message_created, so it comes second
        assert [(type(e), e.payload.message.id, e.payload.message.status) for e in reply_events] == [
            (MessageCreated, reply["id"], "Sending"), (MessageUpdated, reply["id"], "Success")]
        for body, headers in received:
            assert public.verify(body, headers) == "vendor"

        # a reply through a (simulated) built-in partner ends Success or Failed
        async with session.post(f"{api}/v2/partners/Facebook/messages", headers=tenant.headers, json={
                "business_id": tenant.business_id, "content": "Hi!", "consumer_name": "Ben"}) as answer:
            facebook = await answer.json()
        async with session.post(f"{api}/v2/messages", headers=tenant.headers, json={
                "conversation_id": facebook["conversation_id"], "content": "Hello Ben"}) as answer:
            partner_reply = await answer.json()
        await wait_for(lambda: asyncio.sleep(0, len(received) >= 6), 20, "the partner reply's events")
        events = [parse_event(b) for b, _ in received[3:]]
        # The two events go to two configurations (one per event type), each
        # ordered on its own: they may arrive in either order.
        mine = {(e.type, str(e.payload.message.status)) for e in events if e.payload.message.id == partner_reply["id"]}
        assert ("message_created", "Sending") in mine and len(mine) == 2
        assert mine & {("message_updated", "Success"), ("message_updated", "Failed")}


def start_receiver(db_url: str, sock, public_key: Path) -> subprocess.Popen:
    """``tidings receive`` in a process of its own, serving on ``sock``."""
    command, options = command_on_socket(sock, ["receive", "--db", db_url, "--public-key", str(public_key),
                                                "--host", "127.0.0.1", "--port", str(port_of(sock))])
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **options)


async def all_pages(session, url: str, key: str, headers=None, params=None) -> list[dict]:
    items, cursor = [], None
    while True:
        query = {**(params or {}), "per_page": "100", **({"cursor": cursor} if cursor else {})}
        async with session.get(url, headers=headers, params=query) as answer:
            assert answer.status == 200, await answer.text()
            page = await answer.json()
        items += page[key]
        cursor = page["next_cursor"]
        if not cursor:
            return items


async def test_a_thousand_messages_reach_the_receivers_inbox_as_the_platform_has_them(tmp_path, db_url):
    async with running_platform(db_url, latency=0.01, failure_rate=0.2) as platform, serve(platform.app) as api, \
            dispatching(platform), aiohttp.ClientSession() as session:
        tenant = await platform.tenant("Acme")
        key_file = tmp_path / "platform.pub.pem"
        key_file.write_bytes(public_key_pem(platform.signer.private_key.public_key()))
        listening = loopback_socket()
        receiver_db = f"sqlite:///{tmp_path / 'receiver.db'}"
        receiver = start_receiver(receiver_db, listening, key_file)
        inbox = base_url(listening)
        try:
            async def receiver_up():
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{inbox}/health") as answer:
                        return answer.status == 200
                return False

            await wait_for(receiver_up, 30, "the receiver")
            await subscribe(session, api, tenant, f"{inbox}/webhook")
            sent = 0
            conversations = []
            for n in range(1_000):  # consumers write in 40 threads; a user answers every fifth message
                if sent >= 1_000:
                    break
                async with session.post(f"{api}/v2/custom-channels/{tenant.channel_id}/messages",
                                        headers=tenant.headers, json={
                                            "business_id": tenant.business_id,
                                            "external_conversation_id": f"thread-{n % 40}",
                                            "external_message_id": f"m-{n}", "content": f"message {n}",
                                            "sender_type": "Consumer", "consumer_name": f"Consumer {n % 40}"}) as answer:
                    assert answer.status == 200, await answer.text()
                    conversations.append((await answer.json())["conversation_id"])
                sent += 1
                if n % 5 == 4:
                    async with session.post(f"{api}/v2/messages", headers=tenant.headers, json={
                            "conversation_id": conversations[-1], "content": f"reply {n}"}) as answer:
                        assert answer.status == 200, await answer.text()
                    sent += 1

            async def platform_settled():
                async with platform.engine.connect() as conn:
                    open_ = (await conn.execute(select(func.count()).select_from(deliveries).where(
                        deliveries.c.status.not_in(["delivered", "failed"])))).scalar_one()
                    statuses = (await conn.execute(select(func.count()).select_from(deliveries))).scalar_one()
                return open_ == 0 and statuses >= 1_000

            await wait_for(platform_settled, 120, "every delivery")
            assert await platform.count(deliveries, deliveries.c.status == "failed") == 0

            platform_conversations = await all_pages(session, f"{api}/v2/conversations", "conversations",
                                                     headers=tenant.headers)
            expected = {}
            for conversation in platform_conversations:
                for message in await all_pages(session, f"{api}/v2/messages", "messages", headers=tenant.headers,
                                               params={"conversation_id": str(conversation["id"])}):
                    expected[message["id"]] = (conversation["id"], message["status"], message["content"],
                                               message["sender_type"], message["content_type"])
            assert len(platform_conversations) == 40 and len(expected) == 1_000

            async def inbox_has_everything():
                async with session.get(f"{inbox}/inbox/conversations", params={"limit": "500"}) as answer:
                    listed = (await answer.json())["conversations"]
                found = {}
                for conversation in listed:
                    async with session.get(f"{inbox}/inbox/conversations/{conversation['id']}/messages",
                                           params={"limit": "5000"}) as answer:
                        for message in (await answer.json())["messages"]:
                            found[message["id"]] = (conversation["id"], message["status"], message["content"],
                                                    message["sender_type"], message["content_type"])
                return found if found == expected else None

            found = await wait_for(inbox_has_everything, 60, "the inbox to equal the platform")
            assert {c for c, *_ in found.values()} == {c["id"] for c in platform_conversations}
        finally:
            receiver.terminate()
            receiver.wait(20)
            listening.close()
