"""Business users' replies: creation, refusals, the simulated partners,
retries and the delivery callback of custom channels, on both engines."""

from __future__ import annotations

import dataclasses

from types import SimpleNamespace

import pytest

from sqlalchemy import select, update

from tests.platform_support import running_platform
from tidings.contract import parse_event
from tidings.platform.conversations import (
    receive_partner_message,
    replies_settled_by,
    reply_refusal,
    retry_refusal,
    settle_replies,
)
from tidings.platform.deliveries.cycle import FinishedDelivery
from tidings.platform.partners import PartnerSimulator, partner_accepts
from tidings.platform.settings import PartnerSettings
from tidings.store.platform_tables import conversations, deliveries, events, messages

HOOK = "https://hooks.example.com/tidings"


@pytest.fixture
async def platform(db_url):
    async with running_platform(db_url) as running:
        yield running


async def partner_conversation(platform, tenant, partner="Facebook", **extra) -> int:
    async with platform.engine.begin() as conn:
        conversation_id, _ = await receive_partner_message(
            conn, platform.signer, org_id=tenant.org_id, business_id=tenant.business_id, partner=partner,
            content="Is the shop open on Sunday?", consumer_name="Jane", **extra)
    return conversation_id


async def custom_conversation(client, tenant, channel_id=None) -> int:
    answer = await client.post(f"/v2/custom-channels/{channel_id or tenant.channel_id}/messages", headers=tenant.headers,
                               json={"business_id": tenant.business_id, "external_conversation_id": "c",
                                     "external_message_id": "m", "content": "hi", "sender_type": "Consumer"})
    assert answer.status_code == 200, answer.text
    return answer.json()["conversation_id"]


async def subscribe(client, tenant, *event_types):
    answer = await client.post("/v2/webhooks", headers=tenant.headers,
                               json={"items": [{"url": HOOK, "event_type": t} for t in event_types]})
    assert answer.status_code == 200, answer.text


async def events_of(platform, message_id):
    rows = await platform.rows(select(events.c.event_type, events.c.body)
                               .where(events.c.message_id == message_id).order_by(events.c.id))
    return [(row.event_type, parse_event(row.body).payload.message.status) for row in rows]


async def status_of(platform, message_id) -> str:
    return (await platform.rows(select(messages.c.status).where(messages.c.id == message_id)))[0].status


async def reply(client, tenant, conversation_id, content="We open at 10.", **extra):
    return await client.post("/v2/messages", headers=tenant.headers,
                             json={"conversation_id": conversation_id, "content": content, **extra})


def set_partner(platform, **settings):
    simulator: PartnerSimulator = platform.partners
    simulator.settings = dataclasses.replace(simulator.settings, **settings)


# ---------------------------------------------------------------- built-in partners


async def test_a_reply_is_created_sending_then_the_partner_accepts_it(platform):
    a = await platform.tenant("A")
    conversation_id = await partner_conversation(platform, a)
    async with platform.client() as client:
        answer = await reply(client, a, conversation_id, content_type="Text")
        assert answer.status_code == 200, answer.text
        sent = answer.json()
        assert (sent["status"], sent["sender_type"], sent["content"]) == ("Sending", "User", "We open at 10.")
        assert sent["sender_label"] == "admin" and len(sent["user_id"]) == 24 and sent["custom_channel"] is None
        await platform.partners.drain()
        got = (await client.get(f"/v2/conversations/{conversation_id}", headers=a.headers)).json()
    assert await status_of(platform, sent["id"]) == "Success"
    assert await events_of(platform, sent["id"]) == [("message_created", "Sending"), ("message_updated", "Success")]
    assert got["has_one_user_message"] is True and got["last_message"]["id"] == sent["id"]
    assert got["last_message"]["status"] == "Success"


async def test_a_partner_that_refuses_fails_the_reply_and_a_retry_sends_it_again(platform):
    a = await platform.tenant("A")
    conversation_id = await partner_conversation(platform, a, partner="Whatsapp")
    set_partner(platform, failure_rate=1.0)
    async with platform.client() as client:
        sent = (await reply(client, a, conversation_id)).json()
        await platform.partners.drain()
        assert await status_of(platform, sent["id"]) == "Failed"
        set_partner(platform, failure_rate=0.0)
        retried = await client.post(f"/v2/messages/{sent['id']}/retry", headers=a.headers)
        assert retried.status_code == 200 and retried.json()["status"] == "Sending"
        await platform.partners.drain()
        again = await client.post(f"/v2/messages/{sent['id']}/retry", headers=a.headers)
    assert await status_of(platform, sent["id"]) == "Success"
    assert await events_of(platform, sent["id"]) == [
        ("message_created", "Sending"), ("message_updated", "Failed"),
        ("message_updated", "Sending"), ("message_updated", "Success")]
    assert again.status_code == 409 and "only a Failed message can be retried; this one is Success" in again.json()["detail"]


async def test_retry_is_refused_for_what_is_not_a_failed_reply(platform):
    a = await platform.tenant("A")
    conversation_id = await partner_conversation(platform, a)
    set_partner(platform, latency=30.0)  # stays Sending during the test
    async with platform.client() as client:
        sending = (await reply(client, a, conversation_id)).json()
        consumers = (await client.get("/v2/messages", headers=a.headers,
                                      params={"conversation_id": conversation_id})).json()["messages"]
        consumer_message = next(m for m in consumers if m["sender_type"] == "Consumer")
        of_sending = await client.post(f"/v2/messages/{sending['id']}/retry", headers=a.headers)
        of_consumer = await client.post(f"/v2/messages/{consumer_message['id']}/retry", headers=a.headers)
        of_nothing = await client.post("/v2/messages/987654/retry", headers=a.headers)
    assert of_sending.status_code == 409 and "this one is Sending" in of_sending.json()["detail"]
    assert of_consumer.status_code == 409 and "business user's message" in of_consumer.json()["detail"]
    assert of_nothing.status_code == 404
    assert await events_of(platform, sending["id"]) == [("message_created", "Sending")]


@pytest.mark.parametrize("state, why", [
    ({"status": "Closed"}, "the conversation is Closed"),
    ({"issues": ["facebook_no_page_linked"]}, "set-up issues that block sending: facebook_no_page_linked"),
])
async def test_a_reply_is_refused_in_a_closed_conversation_or_one_with_issues(platform, state, why):
    a = await platform.tenant("A")
    conversation_id = await partner_conversation(platform, a, **state)
    async with platform.client() as client:
        answer = await reply(client, a, conversation_id)
    assert answer.status_code == 409 and why in answer.json()["detail"]
    assert await platform.count(messages, messages.c.sender_type == "User") == 0
    assert await platform.count(events) == 1  # the consumer's message only


async def test_a_failed_reply_cannot_be_retried_once_the_conversation_is_closed(platform):
    a = await platform.tenant("A")
    conversation_id = await partner_conversation(platform, a)
    set_partner(platform, failure_rate=1.0)
    async with platform.client() as client:
        sent = (await reply(client, a, conversation_id)).json()
        await platform.partners.drain()
        async with platform.engine.begin() as conn:
            await conn.execute(update(conversations).values(status="Closed"))
        answer = await client.post(f"/v2/messages/{sent['id']}/retry", headers=a.headers)
    assert answer.status_code == 409 and "Closed" in answer.json()["detail"]
    assert await status_of(platform, sent["id"]) == "Failed"


async def test_a_reply_to_a_missing_conversation_or_a_bad_body_is_refused(platform):
    a = await platform.tenant("A")
    async with platform.client() as client:
        missing = await reply(client, a, 424242)
        empty = await reply(client, a, 1, content="")
        no_id = await client.post("/v2/messages", headers=a.headers, json={"content": "x"})
    assert missing.status_code == 404 and "no conversation 424242" in missing.json()["detail"]
    assert empty.status_code == 422 and "body.content" in empty.json()["detail"]
    assert no_id.status_code == 422 and "body.conversation_id: Field required" in no_id.json()["detail"]


async def test_replies_left_sending_are_answered_when_a_process_starts(platform):
    a = await platform.tenant("A")
    conversation_id = await partner_conversation(platform, a)
    set_partner(platform, latency=3600.0)  # this process never answers
    async with platform.client() as client:
        sent = (await reply(client, a, conversation_id)).json()
    await platform.partners.stop()
    restarted = PartnerSimulator(platform.engine, platform.signer, PartnerSettings(latency=0.0, failure_rate=0.0), seed=1)
    await restarted.start()
    try:
        await restarted.drain()
    finally:
        await restarted.stop()
    assert await status_of(platform, sent["id"]) == "Success"


async def test_a_repeated_partner_answer_changes_and_emits_nothing(platform):
    a = await platform.tenant("A")
    conversation_id = await partner_conversation(platform, a)
    set_partner(platform, latency=3600.0)
    async with platform.client() as client:
        sent = (await reply(client, a, conversation_id)).json()
    simulator = PartnerSimulator(platform.engine, platform.signer, PartnerSettings(failure_rate=0.0), seed=1)
    assert await simulator.answer(sent["id"]) is True
    assert await simulator.answer(sent["id"]) is True
    assert await events_of(platform, sent["id"]) == [("message_created", "Sending"), ("message_updated", "Success")]


def test_the_partner_decision_is_pure_and_follows_the_failure_rate():
    assert partner_accepts(3, 10, 1, 0.3) == partner_accepts(3, 10, 1, 0.3)
    assert all(partner_accepts(1, m, 1, 0.0) for m in range(500))
    assert not any(partner_accepts(1, m, 1, 1.0) for m in range(500))
    refused = sum(not partner_accepts(5, m, 1, 0.2) for m in range(5000))
    assert 850 <= refused <= 1150  # 20% of 5000, within about 5 standard deviations
    # A retry is a new draw, and another seed another sequence.
    assert [partner_accepts(5, 1, n, 0.5) for n in range(1, 40)] != [partner_accepts(5, 1, 1, 0.5)] * 39
    assert [partner_accepts(1, m, 1, 0.5) for m in range(64)] != [partner_accepts(2, m, 1, 0.5) for m in range(64)]


# ---------------------------------------------------------------- custom channels


async def test_a_reply_on_a_bidirectional_channel_waits_for_its_webhook_delivery(platform, monkeypatch):
    a = await platform.tenant("A")
    handed_to_partner = []
    submit = platform.partners.submit  # the real simulator, watched: a reply would be handed to it in the request
    monkeypatch.setattr(platform.partners, "submit", lambda message_id: (handed_to_partner.append(message_id),
                                                                         submit(message_id))[1])
    async with platform.client() as client:
        conversation_id = await custom_conversation(client, a)
        without_webhook = await reply(client, a, conversation_id)
        await subscribe(client, a, "message_created", "message_updated")
        answer = await reply(client, a, conversation_id)
    assert without_webhook.status_code == 409 and "message_created webhook" in without_webhook.json()["detail"]
    sent = answer.json()
    assert answer.status_code == 200 and sent["status"] == "Sending"
    assert sent["custom_channel"]["external_message_id"].startswith("reply_")
    assert handed_to_partner == []  # no partner simulation for custom channels
    assert await status_of(platform, sent["id"]) == "Sending"
    assert await events_of(platform, sent["id"]) == [("message_created", "Sending")]


async def test_a_reply_on_a_read_only_channel_is_refused(platform):
    a = await platform.tenant("A")
    async with platform.client() as client:
        await subscribe(client, a, "message_created")
        conversation_id = await custom_conversation(client, a, a.readonly_channel_id)
        answer = await reply(client, a, conversation_id)
    assert answer.status_code == 409 and "read-only" in answer.json()["detail"]
    assert await platform.count(messages, messages.c.sender_type == "User") == 0


async def delivery_of(platform, message_id, event_type="message_created"):
    rows = await platform.rows(select(deliveries).select_from(deliveries.join(events, events.c.id == deliveries.c.event_id))
                               .where(events.c.message_id == message_id, events.c.event_type == event_type)
                               .order_by(deliveries.c.id))
    return rows[-1]


async def test_settling_a_custom_channel_reply_happens_exactly_once(platform):
    a = await platform.tenant("A")
    async with platform.client() as client:
        conversation_id = await custom_conversation(client, a)
        await subscribe(client, a, "message_created", "message_updated")
        delivered_reply = (await reply(client, a, conversation_id, content="one")).json()
        failed_reply = (await reply(client, a, conversation_id, content="two")).json()
    on_finished = replies_settled_by(platform.signer)
    for _ in range(2):  # called twice: the second call changes nothing
        async with platform.engine.begin() as conn:
            await on_finished(conn, [FinishedDelivery(await delivery_of(platform, delivered_reply["id"]), True)])
        async with platform.engine.begin() as conn:
            await settle_replies(conn, [FinishedDelivery(await delivery_of(platform, failed_reply["id"]), False)],
                                 signer=platform.signer)
    assert await status_of(platform, delivered_reply["id"]) == "Success"
    assert await status_of(platform, failed_reply["id"]) == "Failed"
    assert await events_of(platform, delivered_reply["id"]) == [("message_created", "Sending"), ("message_updated", "Success")]
    assert await events_of(platform, failed_reply["id"]) == [("message_created", "Sending"), ("message_updated", "Failed")]
    # The message_updated of the status change is itself delivered: that final outcome changes nothing.
    async with platform.engine.begin() as conn:
        await on_finished(conn, [FinishedDelivery(await delivery_of(platform, failed_reply["id"], "message_updated"),
                                                  True)])
    assert await status_of(platform, failed_reply["id"]) == "Failed"


async def test_settling_ignores_consumer_messages_and_tryouts(platform):
    a = await platform.tenant("A")
    async with platform.client() as client:
        await subscribe(client, a, "message_created")
        conversation_id = await custom_conversation(client, a)
        sent = (await reply(client, a, conversation_id)).json()
    consumer_message_id = (await platform.rows(select(messages.c.id).where(messages.c.sender_type == "Consumer")))[0].id
    async with platform.engine.begin() as conn:
        await settle_replies(conn, [FinishedDelivery(await delivery_of(platform, consumer_message_id), False)],
                             signer=platform.signer)
        tryout = SimpleNamespace(**{**(await delivery_of(platform, sent["id"]))._mapping, "is_tryout": True})
        await settle_replies(conn, [FinishedDelivery(tryout, False)], signer=platform.signer)
    assert await status_of(platform, consumer_message_id) == "Success"
    assert await status_of(platform, sent["id"]) == "Sending"
    assert await platform.count(events) == 2


async def test_a_failed_custom_channel_reply_is_retried_through_the_webhook(platform):
    a = await platform.tenant("A")
    async with platform.client() as client:
        await subscribe(client, a, "message_created")
        conversation_id = await custom_conversation(client, a)
        sent = (await reply(client, a, conversation_id)).json()
        first = await delivery_of(platform, sent["id"])
        async with platform.engine.begin() as conn:  # as a dispatcher would have: earlier ones sent, this one failed
            await conn.execute(update(deliveries).where(deliveries.c.id < first.id).values(status="delivered"))
            await conn.execute(update(deliveries).where(deliveries.c.id == first.id).values(status="failed"))
            await settle_replies(conn, [FinishedDelivery(first, False)], signer=platform.signer)
        retried = await client.post(f"/v2/messages/{sent['id']}/retry", headers=a.headers)
    assert retried.status_code == 200 and retried.json()["status"] == "Sending"
    assert await events_of(platform, sent["id"]) == [
        ("message_created", "Sending"), ("message_updated", "Failed"),
        ("message_updated", "Sending"), ("message_created", "Sending")]
    second = await delivery_of(platform, sent["id"])
    assert second.status == "pending"
    async with platform.engine.begin() as conn:
        await settle_replies(conn, [FinishedDelivery(second, True)], signer=platform.signer)
    assert await status_of(platform, sent["id"]) == "Success"


def test_reply_refusal_rules():
    def refusal(**overrides):
        state = {"conversation_status": "Open", "issues": [], "partner": "Facebook", "channel_is_readonly": None}
        return reply_refusal(**{**state, **overrides})

    assert refusal() is None
    assert refusal(partner="Custom", channel_is_readonly=False) is None
    assert "Closed" in refusal(conversation_status="Closed")
    assert "'Snoozed'" in refusal(conversation_status="Snoozed")
    assert "issues" in refusal(issues=["facebook_no_page_linked"])
    assert "read-only" in refusal(partner="Custom", channel_is_readonly=True)
    assert "Telegram" in refusal(partner="Telegram")
    assert retry_refusal("Failed", "User") is None
    assert "Sending" in retry_refusal("Sending", "User")
    assert "business user" in retry_refusal("Failed", "Consumer")
