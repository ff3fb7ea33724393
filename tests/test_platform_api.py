"""``/v2/webhooks`` and API keys, on both engines (httpx over ASGI; the
socket paths are in test_platform_api_tenancy.py and _conversations.py)."""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest
from sqlalchemy import select, update

from tests.platform_support import running_platform, with_settings
from tidings.contract import EVENT_TYPES, SenderType
from tidings.contract.signing import SECRET_PREFIX, secret_bytes
from tidings.platform import configurations, tenants
from tidings.platform.deliveries import actions
from tidings.platform.ingestion import IncomingMessage, ingest_custom_message
from tidings.platform.settings import DeliverySettings
from tidings.store.platform_tables import deliveries, webhook_configs

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
HOOK = "https://hooks.example.com/tidings"


def item(event_type: str = "message_created", url: str = HOOK, **extra):
    return {"url": url, "event_type": event_type, **extra}


@pytest.fixture
async def platform(db_url):
    async with running_platform(db_url) as running:
        yield running


async def test_create_returns_each_configuration_with_its_own_secret(platform):
    a = await platform.tenant("A")
    async with platform.client() as client:
        answer = await client.post("/v2/webhooks", headers=a.headers, json={"items": [
            item("message_created", custom_headers={"X-Shop-Token": "t1"}),
            item("message_updated", ordering="none"),
        ]})
    assert answer.status_code == 200, answer.text
    created = answer.json()["items"]
    assert [c["event_type"] for c in created] == ["message_created", "message_updated"]
    # A custom header's value is never shown, not even on creation: its name only.
    assert created[0]["custom_headers"] == {"X-Shop-Token": "********"} and created[1]["custom_headers"] == {}
    assert created[0]["ordering"] == "conversation" and created[1]["ordering"] == "none"
    for config in created:
        assert config["org_id"] == a.org_id and config["url"] == HOOK
        assert ISO_Z.match(config["created_at"]) and ISO_Z.match(config["updated_at"])
        assert config["secret"].startswith(SECRET_PREFIX) and len(secret_bytes(config["secret"])) == 24
    assert created[0]["secret"] != created[1]["secret"]
    stored = await platform.rows(select(webhook_configs.c.id, webhook_configs.c.secret).order_by(webhook_configs.c.id))
    # Stored encrypted, never in clear.
    assert [(row.id, configurations.clear_secret(row.secret)) for row in stored] == [(c["id"], c["secret"]) for c in created]
    assert all(row.secret.startswith("fernet:") and c["secret"] not in row.secret for row, c in zip(stored, created))


async def test_one_configuration_per_organization_and_event_type(platform):
    a, b = await platform.tenant("A"), await platform.tenant("B")
    async with platform.client() as client:
        first = (await client.post("/v2/webhooks", headers=a.headers, json={"items": [item()]})).json()["items"][0]
        again = await client.post("/v2/webhooks", headers=a.headers,
                                  json={"items": [item(url="https://other.example.com/h")]})
        twice = await client.post("/v2/webhooks", headers=a.headers,
                                  json={"items": [item("message_updated"), item("message_updated")]})
        other_type = await client.post("/v2/webhooks", headers=a.headers, json={"items": [item("message_updated")]})
        other_org = await client.post("/v2/webhooks", headers=b.headers, json={"items": [item()]})
    assert again.status_code == 409
    assert f"configuration {first['id']}" in again.json()["detail"]
    assert twice.status_code == 409 and "twice" in twice.json()["detail"]
    assert other_type.status_code == 200 and other_org.status_code == 200
    assert await platform.count(webhook_configs, webhook_configs.c.org_id == a.org_id) == 2


async def test_a_refused_item_creates_none_of_the_request(platform):
    a = await platform.tenant("A")
    async with platform.client() as client:
        answer = await client.post("/v2/webhooks", headers=a.headers, json={"items": [
            item("message_created"), item("message_updated", custom_headers={"Authorization": "x"})]})
    assert answer.status_code == 422 and "must start with 'X-'" in answer.json()["detail"]
    assert await platform.count(webhook_configs) == 0


@pytest.mark.parametrize("headers, why", [
    ({f"X-H{i}": "v" for i in range(6)}, "at most 5 custom headers"),
    ({"Authorization": "Bearer x"}, "must start with 'X-'"),
    ({"X-Tidings-Signature-v1": "forged"}, "reserved prefix 'X-Tidings'"),
    ({"X-" + "a" * 127: "v"}, "at most 128"),
    ({"X-A:B": "v"}, "forbidden characters: :"),
    ({"X-A": "v" * 513}, "at most 512"),
    ({"X-A": "a\r\nX-Evil: 1"}, "control character"),
])
async def test_custom_header_rules_are_enforced_with_the_reason(platform, headers, why):
    a = await platform.tenant("A")
    async with platform.client() as client:
        created = await client.post("/v2/webhooks", headers=a.headers, json={"items": [item(custom_headers=headers)]})
        ok = (await client.post("/v2/webhooks", headers=a.headers, json={"items": [item("message_updated")]})).json()
        updated = await client.put(f"/v2/webhooks/{ok['items'][0]['id']}", headers=a.headers,
                                   json={"custom_headers": headers})
    for answer in (created, updated):
        assert answer.status_code == 422
        assert why in answer.json()["detail"] and answer.json()["detail"].startswith("custom_headers: ")
    assert await platform.count(webhook_configs) == 1


async def test_https_is_required_unless_http_is_allowed(platform):
    strict = with_settings(platform, delivery=DeliverySettings(allow_http=False, allow_private_targets=True))
    a = await platform.tenant("A")
    async with strict.client() as client:
        refused = await client.post("/v2/webhooks", headers=a.headers,
                                    json={"items": [item(url="http://hooks.example.com/x")]})
        accepted = await client.post("/v2/webhooks", headers=a.headers, json={"items": [item()]})
        config_id = accepted.json()["items"][0]["id"]
        refused_update = await client.put(f"/v2/webhooks/{config_id}", headers=a.headers,
                                          json={"url": "http://hooks.example.com/x"})
    assert refused.status_code == 422 and "https://" in refused.json()["detail"]
    assert refused_update.status_code == 422 and "https://" in refused_update.json()["detail"]
    async with platform.client() as client:  # allow_http=True
        allowed = await client.put(f"/v2/webhooks/{config_id}", headers=a.headers,
                                   json={"url": "http://hooks.example.com/x"})
    assert allowed.status_code == 200 and allowed.json()["url"] == "http://hooks.example.com/x"


@pytest.mark.parametrize("url, why", [
    ("https://127.0.0.1/hook", "loopback"),
    ("https://localhost:8443/hook", "loopback"),
    ("https://10.1.2.3/hook", "private"),
    ("https://192.168.0.10/hook", "private"),
    ("https://169.254.169.254/latest/meta-data", "link-local"),
    ("https://[::1]/hook", "loopback"),
    ("https://[::ffff:10.0.0.1]/hook", "private"),
])
async def test_private_targets_are_refused_unless_allowed(platform, url, why):
    strict = with_settings(platform, delivery=DeliverySettings(allow_http=True, allow_private_targets=False))
    a = await platform.tenant("A")
    async with strict.client() as client:
        refused = await client.post("/v2/webhooks", headers=a.headers, json={"items": [item(url=url)]})
    assert refused.status_code == 422
    assert refused.json()["detail"].startswith("url: the target is refused") and why in refused.json()["detail"]
    async with platform.client() as client:  # allow_private_targets=True
        assert (await client.post("/v2/webhooks", headers=a.headers, json={"items": [item(url=url)]})).status_code == 200


@pytest.mark.parametrize("body, why", [
    ({"items": [item("message_deleted")]}, "unknown event type 'message_deleted'"),
    ({"items": [item(ordering="global")]}, "ordering must be one of"),
    ({"items": [item(url="ftp://example.com/x")]}, "https://"),
    ({"items": []}, "items"),
    ({"items": [{"event_type": "message_created"}]}, "body.items.0.url: Field required"),
    ({"items": [item(colour="red")]}, "colour: Extra inputs are not permitted"),
    ({"item": [item()]}, "body.items: Field required"),
])
async def test_malformed_configurations_are_refused_with_the_reason(platform, body, why):
    a = await platform.tenant("A")
    async with platform.client() as client:
        answer = await client.post("/v2/webhooks", headers=a.headers, json=body)
    assert answer.status_code == 422 and why in answer.json()["detail"]
    assert await platform.count(webhook_configs) == 0


async def test_get_update_and_delete(platform):
    a = await platform.tenant("A")
    async with platform.client() as client:
        created = (await client.post("/v2/webhooks", headers=a.headers, json={"items": [item()]})).json()["items"][0]
        got = (await client.get(f"/v2/webhooks/{created['id']}", headers=a.headers)).json()
        assert "secret" not in got and got == {k: v for k, v in created.items() if k != "secret"}
        time.sleep(0.002)
        updated = await client.put(f"/v2/webhooks/{created['id']}", headers=a.headers, json={
            "url": "https://new.example.com/h", "custom_headers": {"X-New": "1"}, "ordering": "none"})
        assert updated.status_code == 200
        changed = updated.json()
        assert (changed["url"], changed["custom_headers"], changed["ordering"]) == (
            "https://new.example.com/h", {"X-New": "********"}, "none")
        assert changed["created_at"] == created["created_at"]
        assert datetime.fromisoformat(changed["updated_at"]) > datetime.fromisoformat(created["updated_at"])
        # Fields left out keep their value; the event type cannot change.
        kept = (await client.put(f"/v2/webhooks/{created['id']}", headers=a.headers, json={"ordering": "conversation"})).json()
        assert kept["url"] == "https://new.example.com/h" and kept["custom_headers"] == {"X-New": "********"}
        moved = await client.put(f"/v2/webhooks/{created['id']}", headers=a.headers, json={"event_type": "message_updated"})
        assert moved.status_code == 422 and "event_type" in moved.json()["detail"]
        deleted = await client.delete(f"/v2/webhooks/{created['id']}", headers=a.headers)
        assert deleted.status_code == 204
        assert (await client.get(f"/v2/webhooks/{created['id']}", headers=a.headers)).status_code == 404
        assert (await client.delete(f"/v2/webhooks/{created['id']}", headers=a.headers)).status_code == 404
        assert (await client.put(f"/v2/webhooks/{created['id']}", headers=a.headers, json={})).status_code == 404
        recreated = await client.post("/v2/webhooks", headers=a.headers, json={"items": [item()]})
    assert recreated.status_code == 200  # the event type is free again


async def test_deleting_a_configuration_drops_its_pending_deliveries(platform):
    a = await platform.tenant("A")
    async with platform.client() as client:
        created = (await client.post("/v2/webhooks", headers=a.headers, json={"items": [item()]})).json()["items"][0]
    async with platform.engine.begin() as conn:
        await ingest_custom_message(conn, platform.signer, org_id=a.org_id, channel_id=a.channel_id, incoming=IncomingMessage(
            business_id=a.business_id, external_conversation_id="c", external_message_id="m", content="hi",
            sender_type=str(SenderType.CONSUMER)))
    assert await platform.count(deliveries, deliveries.c.webhook_config_id == created["id"]) == 1
    async with platform.client() as client:
        assert (await client.delete(f"/v2/webhooks/{created['id']}", headers=a.headers)).status_code == 204
    assert await platform.count(deliveries) == 0
    # Marked deleted at once; its row goes with the next purge (nothing of it is being sent).
    assert await platform.count(webhook_configs, webhook_configs.c.deleted_at.is_not(None)) == 1
    async with platform.engine.begin() as conn:
        assert await actions.purge_deleted_configurations(conn) == 1
    assert await platform.count(webhook_configs) == 0


async def test_turning_ordering_off_lets_waiting_deliveries_go(platform):
    a = await platform.tenant("A")
    async with platform.client() as client:
        created = (await client.post("/v2/webhooks", headers=a.headers, json={"items": [item()]})).json()["items"][0]
        assert created["ordering"] == "conversation"
        for external_id in ("m1", "m2", "m3"):
            answer = await client.post(f"/v2/custom-channels/{a.channel_id}/messages", headers=a.headers, json={
                "business_id": a.business_id, "external_conversation_id": "c", "external_message_id": external_id,
                "content": "hi", "sender_type": "Consumer"})
            assert answer.status_code == 200
        statuses = [row.status for row in await platform.rows(select(deliveries.c.status).order_by(deliveries.c.id))]
        assert statuses == ["pending", "queued", "queued"]  # one conversation's events wait for their turn
        same = await client.put(f"/v2/webhooks/{created['id']}", headers=a.headers, json={"ordering": "conversation"})
        assert same.status_code == 200
        assert [row.status for row in await platform.rows(select(deliveries.c.status))].count("queued") == 2
        off = await client.put(f"/v2/webhooks/{created['id']}", headers=a.headers, json={"ordering": "none"})
    assert off.status_code == 200 and off.json()["ordering"] == "none"
    statuses = [row.status for row in await platform.rows(select(deliveries.c.status).order_by(deliveries.c.id))]
    assert statuses == ["pending", "pending", "pending"]


async def test_pagination(platform):
    a = await platform.tenant("A")
    async with platform.client() as client:
        await client.post("/v2/webhooks", headers=a.headers, json={"items": [item("message_created"), item("message_updated")]})
        first = (await client.get("/v2/webhooks", headers=a.headers, params={"page": 1, "per_page": 1})).json()
        second = (await client.get("/v2/webhooks", headers=a.headers, params={"page": 2, "per_page": 1})).json()
        beyond = (await client.get("/v2/webhooks", headers=a.headers, params={"page": 3, "per_page": 1})).json()
        default = (await client.get("/v2/webhooks", headers=a.headers)).json()
        refusals = [await client.get("/v2/webhooks", headers=a.headers, params=params)
                    for params in ({"per_page": 0}, {"per_page": 101}, {"page": 0}, {"page": "one"})]
    assert (first["page"], first["max_page"], first["count"], len(first["items"])) == (1, 2, 2, 1)
    assert (second["page"], second["max_page"], len(second["items"])) == (2, 2, 1)
    assert first["items"][0]["id"] != second["items"][0]["id"]
    assert beyond["items"] == [] and beyond["max_page"] == 2
    assert default["page"] == 1 and default["count"] == 2 and len(default["items"]) == 2
    for answer, why in zip(refusals, ["per_page: Input should be greater than or equal to 1",
                                      "per_page: Input should be less than or equal to 100",
                                      "page: Input should be greater than or equal to 1",
                                      "page: Input should be a valid integer"]):
        assert answer.status_code == 422 and why in answer.json()["detail"]


async def test_event_types(platform):
    a = await platform.tenant("A")
    async with platform.client() as client:
        answer = await client.get("/v2/webhooks/events", headers=a.headers)
    assert answer.status_code == 200 and answer.json() == {"items": list(EVENT_TYPES)}
    assert set(EVENT_TYPES) == {"message_created", "message_updated"}


async def test_secret_is_readable_and_rotates_with_an_overlap(platform):
    a = await platform.tenant("A")
    async with platform.client() as client:
        created = (await client.post("/v2/webhooks", headers=a.headers, json={"items": [item()]})).json()["items"][0]
        read = (await client.get(f"/v2/webhooks/{created['id']}/secret", headers=a.headers)).json()
        assert read == {"secret": created["secret"], "previous_secret": None, "previous_secret_expires_at": None}
        before = time.time()
        rotated = (await client.post(f"/v2/webhooks/{created['id']}/secret/rotate", headers=a.headers)).json()
        assert rotated["secret"] != created["secret"] and rotated["secret"].startswith(SECRET_PREFIX)
        assert rotated["previous_secret"] == created["secret"]
        assert ISO_Z.match(rotated["previous_secret_expires_at"])
        expires = datetime.fromisoformat(rotated["previous_secret_expires_at"]).timestamp()
        assert before + 3600 - 5 <= expires <= time.time() + 3600 + 5  # secret_overlap is 3600 s here
        assert (await client.get(f"/v2/webhooks/{created['id']}/secret", headers=a.headers)).json() == rotated
    row = (await platform.rows(select(webhook_configs).where(webhook_configs.c.id == created["id"])))[0]
    assert (configurations.clear_secret(row.secret), configurations.clear_secret(row.previous_secret)) == (
        rotated["secret"], created["secret"])
    assert abs(row.previous_secret_expires_at - expires) < 1e-3
    # Once the overlap is over, only the new secret is shown.
    async with platform.engine.begin() as conn:
        await conn.execute(update(webhook_configs).values(previous_secret_expires_at=time.time() - 1))
    async with platform.client() as client:
        later = (await client.get(f"/v2/webhooks/{created['id']}/secret", headers=a.headers)).json()
    assert later == {"secret": rotated["secret"], "previous_secret": None, "previous_secret_expires_at": None}


async def test_api_keys(platform):
    a, b, c = await platform.tenant("A"), await platform.tenant("B"), await platform.tenant("C")
    async with platform.engine.begin() as conn:
        provider = await tenants.create_provider_key(conn, "agency", [a.org_id, b.org_id])
    async with platform.client() as client:
        missing = await client.get("/v2/webhooks")
        unknown = await client.get("/v2/webhooks", headers={"x-APIKey": "tdk_nope"})
        as_b = await client.post("/v2/webhooks", headers={"x-APIKey": provider}, params={"org_id": b.org_id},
                                 json={"items": [item()]})
        no_org = await client.get("/v2/webhooks", headers={"x-APIKey": provider})
        unmanaged = await client.get("/v2/webhooks", headers={"x-APIKey": provider}, params={"org_id": c.org_id})
        own_org_named = await client.get("/v2/webhooks", headers=a.headers, params={"org_id": a.org_id})
        other_org_named = await client.get("/v2/webhooks", headers=a.headers, params={"org_id": b.org_id})
        b_sees = (await client.get("/v2/webhooks", headers=b.headers)).json()
    assert missing.status_code == 401 and "x-APIKey" in missing.json()["detail"]
    assert unknown.status_code == 401
    assert as_b.status_code == 200 and as_b.json()["items"][0]["org_id"] == b.org_id
    assert b_sees["count"] == 1 and b_sees["items"][0]["id"] == as_b.json()["items"][0]["id"]
    assert no_org.status_code == 400 and "org_id" in no_org.json()["detail"]
    assert unmanaged.status_code == 403
    assert own_org_named.status_code == 200 and other_org_named.status_code == 403
