"""The operator's routes over the delivery log, and the tryout, through the
platform's app; every route stays within the key's organization."""

from __future__ import annotations

import asyncio

import pytest

from tests.dispatcher_support import add_events, fast_settings, scripted_endpoint
from tests.platform_support import running_platform
from tidings.contract.signing import Verifier
from tidings.platform.dispatcher import Dispatcher

pytestmark = pytest.mark.timeout(60)


async def create_config(client, tenant, url: str) -> int:
    answer = await client.post("/v2/webhooks", headers=tenant.headers,
                               json={"items": [{"url": url, "event_type": "message_created"}]})
    assert answer.status_code == 200, answer.text
    return answer.json()["items"][0]["id"]


async def deliver(platform) -> None:
    await asyncio.wait_for(Dispatcher(platform.engine, platform.signer, fast_settings()).run_until_idle(), 30)


async def test_deliveries_attempts_resend_recover_pause_and_resume(sqlite_url):
    async with running_platform(sqlite_url) as platform, scripted_endpoint(hook=[500, 404, 200]) as endpoint:
        tenant = await platform.tenant("Acme")
        stranger = await platform.tenant("Other")
        async with platform.client() as client:
            config_id = await create_config(client, tenant, endpoint.url("/hook"))
            await add_events(platform.engine, platform.signer, tenant.org_id, 1)
            await deliver(platform)

            page = (await client.get(f"/v2/webhooks/{config_id}/deliveries", headers=tenant.headers)).json()
            assert page["count"] == 1 and page["items"][0]["status"] == "failed"
            delivery_id = page["items"][0]["id"]
            failed = await client.get(f"/v2/webhooks/{config_id}/deliveries?status=failed&per_page=5",
                                      headers=tenant.headers)
            assert failed.json()["count"] == 1
            assert (await client.get(f"/v2/webhooks/{config_id}/deliveries?status=delivered",
                                     headers=tenant.headers)).json()["count"] == 0
            assert (await client.get(f"/v2/webhooks/{config_id}/deliveries?status=nonsense",
                                     headers=tenant.headers)).status_code == 422

            detail = (await client.get(f"/v2/deliveries/{delivery_id}", headers=tenant.headers)).json()
            assert [a["status_code"] for a in detail["attempts"]] == [500, 404]
            assert detail["attempts"][0]["response_excerpt"] == "answer 500"
            assert detail["attempts"][0]["request_headers"]["webhook-id"] == detail["webhook_id"]
            assert detail["attempts"][0]["started_at"].endswith("Z")

            resent = await client.post(f"/v2/deliveries/{delivery_id}/resend", headers=tenant.headers)
            assert resent.status_code == 202 and resent.json()["status"] == "pending"
            again = await client.post(f"/v2/deliveries/{delivery_id}/resend", headers=tenant.headers)
            assert again.status_code == 409
            await deliver(platform)
            detail = (await client.get(f"/v2/deliveries/{delivery_id}", headers=tenant.headers)).json()
            assert detail["status"] == "delivered"
            assert [a["status_code"] for a in detail["attempts"]] == [500, 404, 200]

            paused = (await client.post(f"/v2/webhooks/{config_id}/pause", headers=tenant.headers)).json()
            assert paused["paused"] is True
            await add_events(platform.engine, platform.signer, tenant.org_id, 2, seed=5)
            held = await client.get(f"/v2/webhooks/{config_id}/deliveries?status=held", headers=tenant.headers)
            assert held.json()["count"] == 2
            resumed = (await client.post(f"/v2/webhooks/{config_id}/resume", headers=tenant.headers)).json()
            assert resumed == {"id": config_id, "paused": False, "paused_reason": None, "deliveries_moved": 2}
            await deliver(platform)
            assert (await client.get(f"/v2/webhooks/{config_id}/deliveries?status=delivered",
                                     headers=tenant.headers)).json()["count"] == 3

            recovered = await client.post(f"/v2/webhooks/{config_id}/recover", headers=tenant.headers,
                                          json={"since": "2000-01-01T00:00:00Z"})
            assert recovered.json() == {"recovered": 0, "held": False}

            # Another organization sees none of it.
            for method, path in [("GET", f"/v2/webhooks/{config_id}/deliveries"),
                                 ("GET", f"/v2/deliveries/{delivery_id}"),
                                 ("POST", f"/v2/deliveries/{delivery_id}/resend"),
                                 ("POST", f"/v2/webhooks/{config_id}/pause"),
                                 ("POST", f"/v2/webhooks/{config_id}/resume")]:
                answer = await client.request(method, path, headers=stranger.headers)
                assert answer.status_code == 404, (method, path)
            answer = await client.post(f"/v2/webhooks/{config_id}/recover", headers=stranger.headers,
                                       json={"since": "2000-01-01T00:00:00Z"})
            assert answer.status_code == 404
            assert (await client.get(f"/v2/deliveries/{delivery_id}")).status_code == 401


async def test_recover_requeues_failed_deliveries_since_a_date(sqlite_url):
    async with running_platform(sqlite_url) as platform, scripted_endpoint(hook=[400, 400, 200]) as endpoint:
        tenant = await platform.tenant("Acme")
        async with platform.client() as client:
            config_id = await create_config(client, tenant, endpoint.url("/hook"))
            await add_events(platform.engine, platform.signer, tenant.org_id, 2)
            await deliver(platform)
            future = await client.post(f"/v2/webhooks/{config_id}/recover", headers=tenant.headers,
                                       json={"since": "2999-01-01T00:00:00Z"})
            assert future.json()["recovered"] == 0
            answer = await client.post(f"/v2/webhooks/{config_id}/recover", headers=tenant.headers,
                                       json={"since": "2000-01-01T00:00:00Z"})
            assert answer.json() == {"recovered": 2, "held": False}
            await deliver(platform)
            page = (await client.get(f"/v2/webhooks/{config_id}/deliveries", headers=tenant.headers)).json()
            assert sorted(item["status"] for item in page["items"]) == ["delivered", "delivered"]
            assert len(endpoint.on("/hook")) == 4


async def test_tryout_sends_a_sample_or_the_newest_event_with_the_tryout_header(sqlite_url):
    async with running_platform(sqlite_url) as platform, scripted_endpoint(try_=[503]) as endpoint:
        tenant = await platform.tenant("Acme")
        async with platform.client() as client:
            item = {"url": endpoint.url("/try_"), "event_type": "message_created",
                    "custom_headers": {"X-Shop": "1"}}
            first = (await client.post("/v2/webhooks/test", headers=tenant.headers, json={"items": [item]})).json()
            assert first["sample"] == "default_sample" and first["status_code"] == 503
            assert first["delivered"] is False and first["response_excerpt"] == "answer 503"
            [request] = endpoint.on("/try_")
            assert request.headers["X-Tidings-Tryout"] == "true" and request.headers["X-Shop"] == "1"
            Verifier(public_keys=[platform.signer.private_key.public_key()]).verify(request.body, request.headers)

            await add_events(platform.engine, platform.signer, tenant.org_id, 3)  # no configuration: no delivery
            second = (await client.post("/v2/webhooks/test", headers=tenant.headers, json={"items": [item]})).json()
            assert second["sample"] == "newest_event"
            refused = await client.post("/v2/webhooks/test", headers=tenant.headers,
                                        json={"items": [{"url": "ftp://x", "event_type": "message_created"}]})
            assert refused.status_code == 422
