"""Custom-channel ingestion, conversations and messages, on both engines;
ingestion over a real uvicorn server on loopback."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from sqlalchemy import select

from tests.platform_support import running_platform, serve
from tidings.contract import MessageCreated, parse_event
from tidings.platform.conversations import decode_cursor, encode_cursor
from tidings.store.platform_tables import conversations, deliveries, events, messages

CONTRACT_DATE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}\+00:00$")
HOOK = "https://hooks.example.com/tidings"


def incoming(tenant, conversation: str = "conv-1", message: str = "msg-1", **extra):
    return {"business_id": tenant.business_id, "external_conversation_id": conversation,
            "external_message_id": message, "content": f"hello from {message}", "sender_type": "Consumer",
            "consumer_name": "John Doe", **extra}


async def recorded_events(platform, org_id=None):
    query = select(events.c.event_type, events.c.body, events.c.org_id).order_by(events.c.id)
    if org_id is not None:
        query = query.where(events.c.org_id == org_id)
    return [(row.event_type, parse_event(row.body)) for row in await platform.rows(query)]


@pytest.fixture
async def platform(db_url):
    async with running_platform(db_url) as running:
        yield running


@pytest.fixture
async def served(platform):
    """The platform behind a real socket, and a client for it."""
    async with serve(platform.app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        yield platform, client


async def subscribe(client, tenant, *event_types: str) -> list[int]:
    answer = await client.post("/v2/webhooks", headers=tenant.headers,
                               json={"items": [{"url": HOOK, "event_type": t} for t in event_types]})
    assert answer.status_code == 200, answer.text
    return [config["id"] for config in answer.json()["items"]]


# ---------------------------------------------------------------- ingestion (real socket)


async def test_an_ingested_message_is_stored_and_announced(served):
    platform, client = served
    a = await platform.tenant("A")
    [config_id] = await subscribe(client, a, "message_created")
    answer = await client.post(f"/v2/custom-channels/{a.channel_id}/messages", headers=a.headers,
                               json=incoming(a, consumer_img="https://cdn.example.com/j.png"))
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["duplicate"] is False
    [(event_type, event)] = await recorded_events(platform)
    assert event_type == "message_created" and isinstance(event, MessageCreated)
    payload = event.payload
    assert payload.org_id == a.org_id
    assert (payload.message.id, payload.conversation.id) == (result["message_id"], result["conversation_id"])
    assert payload.message.sender_type == "Consumer" and payload.message.status == "Success"
    assert payload.message.content == "hello from msg-1" and payload.message.sender_label == "John Doe"
    assert payload.message.custom_channel.external_message_id == "msg-1"
    assert payload.conversation.last_message == payload.message
    assert payload.conversation.custom_channel.id == a.channel_id
    assert payload.conversation.custom_channel.external_conversation_id == "conv-1"
    assert payload.conversation.custom_channel.is_readonly is False
    assert payload.conversation.business.id == a.business_id and payload.conversation.business.city == "Lyon"
    assert payload.conversation.consumer_name == "John Doe"
    assert payload.conversation.consumer_img == "https://cdn.example.com/j.png"
    assert payload.conversation.messaging_partner == "Custom" and payload.conversation.status == "Open"
    body = (await platform.rows(select(events.c.body)))[0].body.decode()
    for date in re.findall(r'"(?:date|created_at|first_message_date)":"([^"]+)"', body):
        assert CONTRACT_DATE.match(date), date
    [delivery] = await platform.rows(select(deliveries))
    assert (delivery.webhook_config_id, delivery.org_id, delivery.status) == (config_id, a.org_id, "pending")


async def test_the_same_external_message_id_twice_is_stored_and_announced_once(served):
    platform, client = served
    a = await platform.tenant("A")
    await subscribe(client, a, "message_created", "message_updated")
    first = await client.post(f"/v2/custom-channels/{a.channel_id}/messages", headers=a.headers, json=incoming(a))
    again = await client.post(f"/v2/custom-channels/{a.channel_id}/messages", headers=a.headers,
                              json=incoming(a, content="changed text"))
    assert first.status_code == again.status_code == 200
    assert again.json() == {**first.json(), "duplicate": True}
    assert await platform.count(messages) == 1 and await platform.count(events) == 1
    assert await platform.count(deliveries) == 1
    # The same external id on another channel is another message.
    elsewhere = await client.post(f"/v2/custom-channels/{a.readonly_channel_id}/messages", headers=a.headers,
                                  json=incoming(a))
    assert elsewhere.json()["duplicate"] is False and await platform.count(messages) == 2


async def test_concurrent_copies_of_one_message_store_one(served):
    platform, client = served
    a = await platform.tenant("A")
    answers = await asyncio.gather(*[
        client.post(f"/v2/custom-channels/{a.channel_id}/messages", headers=a.headers, json=incoming(a))
        for _ in range(12)])
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    assert sum(not answer.json()["duplicate"] for answer in answers) == 1
    assert len({answer.json()["message_id"] for answer in answers}) == 1
    assert await platform.count(messages) == 1 and await platform.count(events) == 1
    assert await platform.count(conversations) == 1


async def test_messages_of_one_external_conversation_share_it(served):
    platform, client = served
    a = await platform.tenant("A")
    ids = []
    for conversation, message in [("c1", "m1"), ("c1", "m2"), ("c2", "m3"), ("c1", "m4")]:
        answer = await client.post(f"/v2/custom-channels/{a.channel_id}/messages", headers=a.headers,
                                   json=incoming(a, conversation, message))
        ids.append(answer.json()["conversation_id"])
    assert ids[0] == ids[1] == ids[3] != ids[2]
    assert await platform.count(conversations) == 2
    stored = await platform.rows(select(conversations.c.id, conversations.c.last_message_id).order_by(conversations.c.id))
    last_of = {row.id: row.last_message_id for row in stored}
    created = [event for _, event in await recorded_events(platform)]
    assert [e.payload.conversation.id for e in created] == ids
    assert last_of[ids[0]] == created[3].payload.message.id and last_of[ids[2]] == created[2].payload.message.id


async def test_concurrent_first_messages_of_one_conversation_create_it_once(served):
    platform, client = served
    a = await platform.tenant("A")
    answers = await asyncio.gather(*[
        client.post(f"/v2/custom-channels/{a.channel_id}/messages", headers=a.headers, json=incoming(a, "c", f"m{i}"))
        for i in range(10)])
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    assert len({answer.json()["conversation_id"] for answer in answers}) == 1
    assert await platform.count(conversations) == 1 and await platform.count(messages) == 10


@pytest.mark.parametrize("case", ["unknown channel", "other organization's channel"])
async def test_an_unknown_channel_is_refused_and_nothing_is_stored(served, case):
    platform, client = served
    a, b = await platform.tenant("A"), await platform.tenant("B")
    channel = "f" * 24 if case == "unknown channel" else b.channel_id
    answer = await client.post(f"/v2/custom-channels/{channel}/messages", headers=a.headers, json=incoming(a))
    assert answer.status_code == 404
    assert answer.json()["detail"] == f"no custom channel '{channel}' in this organization"
    assert await platform.count(messages) == await platform.count(conversations) == await platform.count(events) == 0


async def test_a_business_of_another_organization_is_refused_and_nothing_is_stored(served):
    platform, client = served
    a, b = await platform.tenant("A"), await platform.tenant("B")
    answer = await client.post(f"/v2/custom-channels/{a.channel_id}/messages", headers=a.headers,
                               json=incoming(a, business_id=b.business_id))
    assert answer.status_code == 422
    assert answer.json()["detail"] == f"no business '{b.business_id}' in this organization"
    assert await platform.count(messages) == await platform.count(conversations) == await platform.count(events) == 0


async def test_a_conversation_keeps_its_business(served):
    platform, client = served
    a = await platform.tenant("A")
    async with platform.engine.begin() as conn:
        from tidings.platform import tenants

        other_business = await tenants.create_business(conn, a.org_id, "Second shop")
    await client.post(f"/v2/custom-channels/{a.channel_id}/messages", headers=a.headers, json=incoming(a, "c", "m1"))
    moved = await client.post(f"/v2/custom-channels/{a.channel_id}/messages", headers=a.headers,
                              json=incoming(a, "c", "m2", business_id=other_business))
    assert moved.status_code == 409 and a.business_id in moved.json()["detail"]
    assert await platform.count(messages) == 1 and await platform.count(events) == 1


@pytest.mark.parametrize("body, why", [
    ("MISSING", "body.business_id: Field required"),
    ("SENDER", "sender_type must be User or Consumer, not 'Robot'"),
    ("EMPTY_ID", "body.external_message_id: String should have at least 1 character"),
    ("NUL", "NUL"),
    ("EXTRA", "body.colour: Extra inputs are not permitted"),
    ("LONG", "body.external_conversation_id: String should have at most 500 characters"),
])
async def test_a_malformed_body_is_refused_with_the_reason_and_nothing_is_stored(served, body, why):
    platform, client = served
    a = await platform.tenant("A")
    bodies = {
        "SENDER": incoming(a, sender_type="Robot"), "EMPTY_ID": incoming(a, message=""),
        "NUL": incoming(a, content="a\x00b"), "EXTRA": incoming(a, colour="red"),
        "LONG": incoming(a, conversation="c" * 501),
        "MISSING": {k: v for k, v in incoming(a).items() if k != "business_id"},
    }
    answer = await client.post(f"/v2/custom-channels/{a.channel_id}/messages", headers=a.headers,
                               json=bodies[body])
    assert answer.status_code == 422 and why in answer.json()["detail"]
    assert await platform.count(messages) == await platform.count(conversations) == await platform.count(events) == 0


async def test_a_body_that_is_not_json_is_refused(served):
    platform, client = served
    a = await platform.tenant("A")
    answer = await client.post(f"/v2/custom-channels/{a.channel_id}/messages",
                               headers={**a.headers, "content-type": "application/json"}, content=b"{not json")
    assert answer.status_code == 422 and "JSON decode error" in answer.json()["detail"]
    assert await platform.count(messages) == 0


async def test_a_business_users_message_from_the_channel_is_stored_as_sent(served):
    platform, client = served
    a = await platform.tenant("A")
    await client.post(f"/v2/custom-channels/{a.channel_id}/messages", headers=a.headers, json=incoming(a, message="m1"))
    await client.post(f"/v2/custom-channels/{a.channel_id}/messages", headers=a.headers,
                      json=incoming(a, message="m2", sender_type="User", consumer_name=None))
    created = [event for _, event in await recorded_events(platform)]
    user_message = created[1].payload.message
    assert user_message.sender_type == "User" and user_message.status == "Success"
    assert user_message.sender_label == "A shop"
    assert created[0].payload.conversation.has_one_user_message is False
    assert created[1].payload.conversation.has_one_user_message is True
    assert created[1].payload.conversation.consumer_name == "John Doe"  # kept when not given


# ---------------------------------------------------------------- conversations and messages


async def test_conversations_page_by_cursor_newest_first(platform):
    a = await platform.tenant("A")
    async with platform.engine.begin() as conn:
        from tidings.platform import tenants

        second_business = await tenants.create_business(conn, a.org_id, "Second")
    async with platform.client() as client:
        for i in range(7):
            business = second_business if i % 3 == 0 else a.business_id
            await client.post(f"/v2/custom-channels/{a.channel_id}/messages", headers=a.headers,
                              json=incoming(a, f"c{i}", f"m{i}", business_id=business))
        seen, cursor, pages = [], None, 0
        while True:
            params = {"per_page": 3, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/v2/conversations", headers=a.headers, params=params)).json()
            assert page["count"] == 7 and len(page["conversations"]) <= 3
            seen += [c["id"] for c in page["conversations"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
        only_second = (await client.get("/v2/conversations", headers=a.headers,
                                        params={"business_id": second_business})).json()
        bad_cursor = await client.get("/v2/conversations", headers=a.headers, params={"cursor": "garbage!"})
        too_many = await client.get("/v2/conversations", headers=a.headers, params={"per_page": 101})
    assert pages == 3 and seen == sorted(seen, reverse=True) and len(set(seen)) == 7
    assert only_second["count"] == 3 and len(only_second["conversations"]) == 3
    assert {c["business"]["id"] for c in only_second["conversations"]} == {second_business}
    assert bad_cursor.status_code == 422 and "cursor" in bad_cursor.json()["detail"]
    assert too_many.status_code == 422 and "per_page" in too_many.json()["detail"]


async def test_a_conversation_and_its_messages(platform):
    a = await platform.tenant("A")
    async with platform.client() as client:
        for i in range(5):
            answer = await client.post(f"/v2/custom-channels/{a.channel_id}/messages", headers=a.headers,
                                       json=incoming(a, "c", f"m{i}"))
        conversation_id = answer.json()["conversation_id"]
        conversation = (await client.get(f"/v2/conversations/{conversation_id}", headers=a.headers)).json()
        missing = await client.get("/v2/conversations/999999", headers=a.headers)
        first = (await client.get("/v2/messages", headers=a.headers,
                                  params={"conversation_id": conversation_id, "per_page": 2})).json()
        rest, cursor = [], first["next_cursor"]
        while cursor:
            page = (await client.get("/v2/messages", headers=a.headers,
                                     params={"conversation_id": conversation_id, "per_page": 2, "cursor": cursor})).json()
            rest += page["messages"]
            cursor = page["next_cursor"]
        no_conversation = await client.get("/v2/messages", headers=a.headers, params={"conversation_id": 999999})
    assert conversation["id"] == conversation_id and conversation["last_message"]["content"] == "hello from m4"
    assert CONTRACT_DATE.match(conversation["created_at"]) and CONTRACT_DATE.match(conversation["first_message_date"])
    assert missing.status_code == 404
    assert first["count"] == 5
    contents = [m["content"] for m in first["messages"] + rest]
    assert contents == [f"hello from m{i}" for i in range(4, -1, -1)]
    assert all(CONTRACT_DATE.match(m["date"]) for m in first["messages"])
    assert no_conversation.status_code == 404


def test_cursors_round_trip_and_refuse_forgeries():
    for value in (1, 42, 2**62):
        assert decode_cursor(encode_cursor(value)) == value
    for forged in ("", "!!!", "YWZ0ZXI6", "bm90OjE", encode_cursor(1) + "x", "YWZ0ZXI6LTE"):
        with pytest.raises(ValueError):
            decode_cursor(forged)
