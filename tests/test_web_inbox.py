"""The receiver's inbox pages over HTTP, on both engines, on the real
receiver: events are signed, taken in by ``Receiver``, projected by the
receiver's projector and handled by its handler runner; the pages show the
result. The browser tests drive the same pages over a real socket."""

from __future__ import annotations

import re

import httpx
import orjson
import pytest

from tidings.contract import EventError, parse_event
from tidings.contract.samples import SampleFactory
from tidings.receiver.handlers import Handlers
from tidings.web import inbox_queries, live
from tests.browser.servers import ReceiverServer, message_event


class Inbox:
    """A receiver with the inbox mounted, driven step by step; its pages are read over a real socket."""

    def __init__(self, db_url: str, handlers: Handlers | None = None) -> None:
        self.server = ReceiverServer(db_url, handlers)
        self.service = self.server.service
        self.samples = SampleFactory(21)

    def client(self) -> SignedInClient:
        """A browser-like client of the admin app, signed in with the token URL; its form posts carry its Origin."""
        return SignedInClient(self.server)

    def receive(self, body: bytes) -> None:
        answer = self.service.receiver.handle_sync(body, self.server.signed(body))
        assert answer.status == 200, answer.body

    def message(self, **fields) -> dict:
        """Receives one message event and projects it; returns its payload."""
        body = message_event(self.samples, **fields)
        self.receive(body)
        self.service.projector.catch_up()
        return orjson.loads(body)["payload"]


class SignedInClient:
    """``async with``: an ``httpx.AsyncClient`` on the admin app that opened the token URL first."""

    def __init__(self, server: ReceiverServer) -> None:
        origin = server.admin_url
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=server.api), base_url=origin,
                                      headers={"origin": origin})
        self.server = server

    async def __aenter__(self) -> httpx.AsyncClient:
        await self.http.__aenter__()
        signed_in = await self.http.get(self.server.sign_in_url())
        assert signed_in.status_code == 303, signed_in.text
        return self.http

    async def __aexit__(self, *exc) -> None:
        await self.http.__aexit__(*exc)


@pytest.fixture
def inbox(db_url):
    store = Inbox(db_url)
    yield store
    store.server.stop()


def listed(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'<li id="conversation-(\d+)"', html)]


def item(html: str, kind: str, number: int) -> str:
    return re.search(rf'<li id="{kind}-{number}".*?</li>', html, re.S).group(0)


async def test_the_list_shows_each_conversation_newest_first(inbox):
    older = inbox.message(consumer="Ana Martin", text="Are you open on Sunday?", is_read=False,
                          date="2024-03-01 09:00:00.000000+00:00")
    newer = inbox.message(consumer="Jonas Schmidt", text="Size 42 please", is_read=True,
                          date="2024-03-01 10:00:00.000000+00:00")
    async with inbox.client() as client:
        answer = await client.get("/inbox")
    assert answer.status_code == 200
    assert listed(answer.text) == [newer["conversation"]["id"], older["conversation"]["id"]]
    first = item(answer.text, "conversation", older["conversation"]["id"])
    assert "Ana Martin" in first and "Are you open on Sunday?" in first
    assert "data-unread" in first and 'class="conversation unread"' in first
    channel = (older["conversation"].get("custom_channel") or {}).get("name") or older["conversation"]["messaging_partner"]
    assert f'<span class="badge channel">{channel}</span>' in first
    assert older["conversation"]["status"] in first
    assert "2024-03-01 09:00:00" in first
    assert "data-unread" not in item(answer.text, "conversation", newer["conversation"]["id"])


async def test_a_thread_shows_every_message_with_its_merged_status(inbox):
    first = inbox.message(text="Hello", date="2024-03-01 09:00:00.000000+00:00")
    conversation_id = first["conversation"]["id"]
    reply = inbox.message(conversation_id=conversation_id, text="Yes, we are open", sender_type="User",
                          status="Sending", date="2024-03-01 09:05:00.000000+00:00")
    async with inbox.client() as client:
        sending = (await client.get(f"/inbox/threads/{conversation_id}")).text
        assert (await client.get("/inbox/threads/999999999")).status_code == 404
        # The reply's status moves on; an older event arriving late does not move it back.
        delivered = dict(reply["message"], status="Success")
        body = orjson.dumps({"type": "message_updated", "payload": dict(reply, message=delivered)})
        inbox.receive(body)
        inbox.receive(message_event(inbox.samples, conversation_id=conversation_id, text="Yes, we are open",
                                    sender_type="User", status="Sending", date="2024-03-01 09:05:00.000000+00:00"))
        inbox.service.projector.catch_up()
        after = (await client.get(f"/inbox/threads/{conversation_id}")).text
    ids = [int(found) for found in re.findall(r'<li id="message-(\d+)"', sending)]
    assert ids == [first["message"]["id"], reply["message"]["id"]]  # oldest first
    assert re.findall(r"data-message-status>([^<]+)<", sending) == ["Success", "Sending"]
    assert "role-user" in sending and "Yes, we are open" in sending
    assert 'data-status="Success"' in item(after, "message", reply["message"]["id"])


async def test_an_unknown_content_type_shows_the_placeholder(inbox):
    payload = inbox.message(content_type="Hologram", text="https://cdn.example.com/h.holo")
    async with inbox.client() as client:
        listing = (await client.get("/inbox")).text
        thread = (await client.get(f"/inbox/threads/{payload['conversation']['id']}")).text
    for page in (listing, thread):
        assert "Unsupported content (Hologram)" in page
        assert "cdn.example.com/h.holo" not in page


async def test_an_unknown_sender_type_is_shown_as_such(inbox):
    payload = inbox.message(sender_type="Robot", text="beep")
    async with inbox.client() as client:
        thread = (await client.get(f"/inbox/threads/{payload['conversation']['id']}")).text
    message = item(thread, "message", payload["message"]["id"])
    assert "Unknown sender type (Robot)" in message
    assert "role-unknown" in message and "beep" in message


async def test_what_comes_from_the_sender_is_escaped(inbox):
    payload = inbox.message(consumer="<script>alert(1)</script>", text="<img src=x onerror=alert(2)>")
    async with inbox.client() as client:
        pages = [(await client.get("/inbox")).text,
                 (await client.get(f"/inbox/threads/{payload['conversation']['id']}")).text]
    for page in pages:
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;img src=x" in page


async def test_the_quarantine_is_listed_and_reprocessed_with_the_receivers_parser(inbox):
    def older_parser(body: bytes):
        raise EventError("payload.message.content_type", "this version knows no such value")

    good = message_event(inbox.samples, text="kept in quarantine, then parsed")
    inbox.service.receiver.parse = older_parser  # a receiver before an upgrade
    inbox.receive(good)
    inbox.service.receiver.parse = parse_event  # the upgrade
    inbox.receive(b'{"type": "message_created", "payload": {"message": {}}}')
    async with inbox.client() as client:
        page = (await client.get("/inbox/quarantine")).text
        assert len(re.findall(r'<tr id="quarantined-\d+"', page)) == 2
        assert "this version knows no such value" in page
        refused = await client.post("/inbox/quarantine/reprocess", headers={"origin": "https://evil.example"})
        assert refused.status_code == 403
        answer = await client.post("/inbox/quarantine/reprocess")
        assert answer.status_code == 303
        after = (await client.get(answer.headers["location"])).text
    assert "1 quarantined bodies parsed and moved to the log; 1 still do not parse." in after
    assert len(re.findall(r'<tr id="quarantined-\d+"', after)) == 1
    inbox.service.projector.catch_up()
    async with inbox.client() as client:
        assert "kept in quarantine, then parsed" in (await client.get("/inbox")).text


async def test_dead_letters_are_listed_and_replayed(db_url):
    calls = []
    handlers = Handlers()

    @handlers.on("message_created", name="crm_sync", max_tries=1)
    def crm_sync(event) -> None:
        calls.append(event.id)
        if len(calls) == 1:
            raise ConnectionError("crm down")

    inbox = Inbox(db_url, handlers)
    try:
        payload = inbox.message(text="for the CRM")
        await inbox.service.runner.run_until_idle()
        async with inbox.client() as client:
            page = (await client.get("/inbox/dead-letters")).text
            assert "crm_sync" in page and "ConnectionError: crm down" in page
            assert f"conversation {payload['conversation']['id']}" in page
            assert '<span class="count">1</span>' in page
            answer = await client.post("/inbox/dead-letters/replay", data={"id": re.search(
                r'<tr id="dead-letter-(\d+)"', page).group(1)})
            after = (await client.get(answer.headers["location"])).text
        assert "1 dead letters queued to run again." in after
        assert "crm_sync" not in after.split("<tbody>")[1]
        await inbox.service.runner.run_until_idle()
        assert len(calls) == 2  # ran again, and succeeded
    finally:
        inbox.server.stop()


async def test_a_notice_cannot_be_forged_by_a_link(inbox):
    async with inbox.client() as client:
        page = (await client.get("/inbox/quarantine?done=reprocessed&moved=<b>x</b>&failing=1")).text
    assert "quarantined bodies parsed" not in page


async def test_the_live_poll_follows_the_projector_not_the_log(inbox):
    first = inbox.message(text="first")
    with inbox.service.log.engine.connect() as conn:
        start = inbox_queries.projected_position(conn)
    second_body = message_event(inbox.samples, conversation_id=first["conversation"]["id"], text="second",
                                date="2030-01-01 10:00:00.000000+00:00")
    inbox.receive(second_body)
    with inbox.service.log.engine.connect() as conn:
        # In the log, not yet projected: a live page must not be told about it yet.
        assert inbox_queries.projected_position(conn) == start
    inbox.service.projector.catch_up()
    other = inbox.message(text="elsewhere")
    with inbox.service.log.engine.connect() as conn:
        head = inbox_queries.projected_position(conn)
        touched = inbox_queries.touched_between(conn, start, head)
        in_thread = inbox_queries.touched_between(conn, start, head, first["conversation"]["id"])
        (message,) = inbox_queries.messages_by_id(conn, in_thread.message_ids)
        mine, theirs = (inbox_queries.conversations_by_id(conn, [first["conversation"]["id"]])[0],
                        inbox_queries.conversations_by_id(conn, [other["conversation"]["id"]])[0])
    assert head > start
    assert touched.conversation_ids == sorted([first["conversation"]["id"], other["conversation"]["id"]])
    assert message["content"] == "second"

    from tidings.web.inbox import _conversation_change, _message_change

    change = _message_change(message)
    assert isinstance(change, live.Upsert)
    assert change.key == f"message-{message['id']}" and change.container == "thread"
    listed_change = _conversation_change(mine)
    assert listed_change.container == "conversations" and "second" in listed_change.html
    assert listed_change.order > _conversation_change(theirs).order  # newest activity first


def test_mounting_twice_changes_nothing(sqlite_url):
    from tidings.web.inbox import mount_inbox

    store = Inbox(sqlite_url)
    try:
        routes = len(store.server.api.routes)
        mount_inbox(store.server.api, store.service.receiver)
        assert len(store.server.api.routes) == routes
    finally:
        store.server.stop()
