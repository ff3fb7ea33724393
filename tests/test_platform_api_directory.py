"""The organization's directory (businesses, custom channels) and the
simulated partners' inbound messages, each scoped to the key's organization."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from tests.platform_support import running_platform, serve
from tidings.contract import parse_event
from tidings.platform.api import directory_routes
from tidings.store.platform_tables import events, messages


@pytest.fixture
async def served(db_url):
    async with running_platform(db_url) as platform:
        async with serve(platform.app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            yield platform, client


async def test_each_organization_sees_only_its_own_directory(served):
    platform, client = served
    a, b = await platform.tenant("A"), await platform.tenant("B")
    businesses = (await client.get("/v2/businesses", headers=a.headers)).json()["items"]
    assert [item["id"] for item in businesses] == [a.business_id]
    channels = (await client.get("/v2/custom-channels", headers=a.headers)).json()["items"]
    assert {(item["id"], item["is_readonly"]) for item in channels} == {(a.channel_id, False),
                                                                         (a.readonly_channel_id, True)}
    for path in ("/v2/businesses", "/v2/custom-channels"):
        refused = await client.get(path, headers=a.headers, params={"org_id": b.org_id})
        assert refused.status_code == 403


async def test_a_partner_message_opens_or_continues_a_conversation_and_records_its_event(served):
    platform, client = served
    a = await platform.tenant("A")
    first = await client.post("/v2/partners/Instagram/messages", headers=a.headers, json={
        "business_id": a.business_id, "content": "https://cdn.example.com/s.jpg", "content_type": "IgStoryMention",
        "consumer_name": "@ana"})
    assert first.status_code == 200, first.text
    again = await client.post("/v2/partners/Instagram/messages", headers=a.headers, json={
        "business_id": a.business_id, "content": "hello", "conversation_id": first.json()["conversation_id"]})
    assert again.json()["conversation_id"] == first.json()["conversation_id"]
    bodies = [row.body for row in await platform.rows(select(events.c.body).order_by(events.c.id))]
    recorded = [parse_event(body) for body in bodies]
    assert [(e.payload.message.content_type, e.payload.conversation.messaging_partner) for e in recorded] == [
        ("IgStoryMention", "Instagram"), ("Text", "Instagram")]
    assert recorded[0].payload.conversation.consumer_name == "@ana"


async def test_a_partner_message_cannot_reach_another_organization(served):
    platform, client = served
    a, b = await platform.tenant("A"), await platform.tenant("B")
    theirs = (await client.post("/v2/partners/SMS/messages", headers=b.headers,
                                json={"business_id": b.business_id, "content": "hi"})).json()
    before = await platform.count(messages)
    with_their_business = await client.post("/v2/partners/SMS/messages", headers=a.headers,
                                            json={"business_id": b.business_id, "content": "x"})
    assert with_their_business.status_code == 404
    into_their_conversation = await client.post("/v2/partners/SMS/messages", headers=a.headers, json={
        "business_id": a.business_id, "content": "x", "conversation_id": theirs["conversation_id"]})
    assert into_their_conversation.status_code == 404
    naming_them = await client.post("/v2/partners/SMS/messages", headers=a.headers, params={"org_id": b.org_id},
                                    json={"business_id": b.business_id, "content": "x"})
    assert naming_them.status_code == 403
    assert await platform.count(messages) == before


@pytest.mark.parametrize("partner, body, status", [
    ("Telegram", {"content": "x"}, 404),  # not a simulated partner
    ("SMS", {"content": "x", "colour": "red"}, 422),  # a misspelt field is refused
    ("SMS", {}, 422),
])
async def test_bad_partner_messages_are_refused_and_store_nothing(served, partner, body, status):
    platform, client = served
    a = await platform.tenant("A")
    answer = await client.post(f"/v2/partners/{partner}/messages", headers=a.headers,
                               json={"business_id": a.business_id, **body})
    assert answer.status_code == status
    assert answer.json()["detail"]
    assert await platform.count(messages) == 0


def test_every_directory_route_is_covered_here():
    paths = {route.path for route in directory_routes.router.routes}
    assert paths == {"/v2/businesses", "/v2/custom-channels", "/v2/partners/{partner}/messages"}
