"""Tenancy, over a real uvicorn server on loopback, on both engines: for every
route of the /v2 API, a key of organization A neither reads nor changes
anything of organization B, and B's events reach only B's webhooks."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from tests.platform_support import running_platform, serve
from tidings.platform import tenants
from tidings.platform.api import conversation_routes, webhook_routes
from tidings.platform.conversations import receive_partner_message
from tidings.store.platform_tables import deliveries, events, messages, webhook_configs

HOOK = "https://hooks.example.com/tidings"


def my_routes() -> set[tuple[str, str]]:
    routes = set()
    for router in (webhook_routes.router, conversation_routes.router):
        for route in router.routes:
            for method in route.methods:
                routes.add((method, route.path))
    return routes


async def populate(platform, client, tenant) -> dict:
    """Two webhook configurations, a custom-channel conversation, a partner
    conversation with a Failed reply: something behind every route."""
    configs = (await client.post("/v2/webhooks", headers=tenant.headers, json={"items": [
        {"url": HOOK + f"/{tenant.org_id}", "event_type": "message_created"},
        {"url": HOOK + f"/{tenant.org_id}", "event_type": "message_updated"}]})).json()["items"]
    ingested = (await client.post(f"/v2/custom-channels/{tenant.channel_id}/messages", headers=tenant.headers, json={
        "business_id": tenant.business_id, "external_conversation_id": "same-id", "external_message_id": "same-id",
        "content": f"hello {tenant.org_id}", "sender_type": "Consumer"})).json()
    async with platform.engine.begin() as conn:
        partner_conversation, _ = await receive_partner_message(
            conn, platform.signer, org_id=tenant.org_id, business_id=tenant.business_id, partner="SMS", content="hi")
    platform.partners.settings = platform.partners.settings.__class__(latency=0.0, failure_rate=1.0)
    failed = (await client.post("/v2/messages", headers=tenant.headers,
                                json={"conversation_id": partner_conversation, "content": "reply"})).json()
    await platform.partners.drain()
    return {"config_id": configs[0]["id"], "conversation_id": ingested["conversation_id"],
            "partner_conversation_id": partner_conversation, "failed_message_id": failed["id"]}


async def snapshot(platform, org_id) -> dict:
    configs = await platform.rows(select(webhook_configs).where(webhook_configs.c.org_id == org_id)
                                  .order_by(webhook_configs.c.id))
    stored = await platform.rows(select(messages).where(messages.c.org_id == org_id).order_by(messages.c.id))
    return {"configs": [tuple(row) for row in configs], "messages": [tuple(row) for row in stored],
            "events": await platform.count(events, events.c.org_id == org_id)}


@pytest.fixture
async def served(db_url):
    async with running_platform(db_url) as platform:
        async with serve(platform.app) as base_url, httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            yield platform, client


async def test_a_key_of_one_organization_reaches_nothing_of_another(served):
    platform, client = served
    a, b = await platform.tenant("A"), await platform.tenant("B")
    await populate(platform, client, a)
    theirs = await populate(platform, client, b)
    before = await snapshot(platform, b.org_id)
    own_a = await snapshot(platform, a.org_id)

    covered: set[tuple[str, str]] = set()

    async def attempt(method: str, template: str, *, expect: int, path_args: dict | None = None, **kwargs):
        covered.add((method, template))
        answer = await client.request(method, template.format(**(path_args or {})), headers=a.headers, **kwargs)
        assert answer.status_code == expect, (method, template, answer.status_code, answer.text)
        return answer

    config = {"webhook_id": theirs["config_id"]}
    await attempt("GET", "/v2/webhooks/{webhook_id}", path_args=config, expect=404)
    await attempt("PUT", "/v2/webhooks/{webhook_id}", path_args=config, expect=404,
                  json={"url": "https://attacker.example.com/steal"})
    await attempt("DELETE", "/v2/webhooks/{webhook_id}", path_args=config, expect=404)
    await attempt("GET", "/v2/webhooks/{webhook_id}/secret", path_args=config, expect=404)
    await attempt("POST", "/v2/webhooks/{webhook_id}/secret/rotate", path_args=config, expect=404)
    listed = (await attempt("GET", "/v2/webhooks", expect=200, params={"per_page": 100})).json()
    assert listed["count"] == 2 and {c["org_id"] for c in listed["items"]} == {a.org_id}
    assert "message_created" in (await attempt("GET", "/v2/webhooks/events", expect=200)).text
    # Creating is only ever for one's own organization; naming B is refused.
    await attempt("POST", "/v2/webhooks", expect=403, params={"org_id": b.org_id},
                  json={"items": [{"url": HOOK, "event_type": "message_created"}]})

    incoming = {"external_conversation_id": "same-id", "external_message_id": "other-id", "content": "x",
                "sender_type": "Consumer"}
    await attempt("POST", "/v2/custom-channels/{channel_id}/messages", path_args={"channel_id": b.channel_id},
                  expect=404, json={**incoming, "business_id": a.business_id})
    await attempt("POST", "/v2/custom-channels/{channel_id}/messages", path_args={"channel_id": b.channel_id},
                  expect=404, json={**incoming, "business_id": b.business_id})
    await attempt("POST", "/v2/custom-channels/{channel_id}/messages", path_args={"channel_id": a.channel_id},
                  expect=422, json={**incoming, "business_id": b.business_id})

    for conversation_id in (theirs["conversation_id"], theirs["partner_conversation_id"]):
        await attempt("GET", "/v2/conversations/{conversation_id}", path_args={"conversation_id": conversation_id},
                      expect=404)
        await attempt("GET", "/v2/messages", expect=404, params={"conversation_id": conversation_id})
        await attempt("POST", "/v2/messages", expect=404, json={"conversation_id": conversation_id, "content": "x"})
    listed = (await attempt("GET", "/v2/conversations", expect=200, params={"per_page": 100})).json()
    assert listed["count"] == 2 and {c["business"]["id"] for c in listed["conversations"]} == {a.business_id}
    filtered = (await attempt("GET", "/v2/conversations", expect=200, params={"business_id": b.business_id})).json()
    assert filtered == {"conversations": [], "count": 0, "next_cursor": None}
    await attempt("POST", "/v2/messages/{message_id}/retry", path_args={"message_id": theirs["failed_message_id"]},
                  expect=404)

    assert covered == my_routes(), my_routes() - covered
    assert await snapshot(platform, b.org_id) == before
    after_a = await snapshot(platform, a.org_id)
    assert after_a["configs"] == own_a["configs"] and after_a["events"] == own_a["events"]


async def test_an_organization_key_naming_another_organization_is_refused_on_every_route(served):
    platform, client = served
    a, b = await platform.tenant("A"), await platform.tenant("B")
    theirs = await populate(platform, client, b)
    async with platform.engine.begin() as conn:
        provider_of_a = await tenants.create_provider_key(conn, "agency", [a.org_id])
    values = {"webhook_id": theirs["config_id"], "channel_id": b.channel_id,
              "conversation_id": theirs["conversation_id"], "message_id": theirs["failed_message_id"]}
    before = await snapshot(platform, b.org_id)
    for method, template in sorted(my_routes()):
        path = template.format(**values)
        for key in (a.api_key, provider_of_a):
            answer = await client.request(method, path, headers={"x-APIKey": key}, params={"org_id": b.org_id},
                                          json={} if method in ("POST", "PUT") else None)
            assert answer.status_code == 403, (method, template, answer.status_code, answer.text)
    assert await snapshot(platform, b.org_id) == before


async def test_events_of_one_organization_reach_only_its_own_webhooks(served):
    platform, client = served
    a, b = await platform.tenant("A"), await platform.tenant("B")
    for tenant in (a, b):
        await populate(platform, client, tenant)
    config_org = {row.id: row.org_id for row in await platform.rows(select(webhook_configs.c.id, webhook_configs.c.org_id))}
    rows = await platform.rows(select(deliveries.c.webhook_config_id, deliveries.c.org_id, events.c.org_id.label("event_org"),
                                      events.c.body)
                               .select_from(deliveries.join(events, events.c.id == deliveries.c.event_id)))
    assert {row.event_org for row in rows} == {a.org_id, b.org_id}
    # Each tenant: created + created(reply) + updated(Failed) + created(consumer SMS) = one delivery per event.
    assert len(rows) == 2 * 4
    for row in rows:
        assert config_org[row.webhook_config_id] == row.event_org == row.org_id
        assert f'"org_id":{row.event_org}'.encode() in row.body
