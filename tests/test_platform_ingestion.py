"""Batched ingestion, group commit and the batched outbox, on both engines."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select, update

from tests.platform_support import running_platform
from tidings.contract import parse_event
from tidings.contract.samples import SampleFactory
from tidings.platform import ingest_queue as ingest_queue_module
from tidings.platform.conversations import MessagingError, NotFound, Refused
from tidings.platform.ingest_queue import IngestQueue
from tidings.platform.ingestion import ChannelMessage, IncomingMessage, IngestResult, ingest_messages
from tidings.platform.deliveries.outbox import record_event
from tidings.platform.deliveries.outbox import record_events
from tidings.store.platform_tables import conversations, deliveries, events, messages, webhook_configs

HOOK = "https://hooks.example.com/tidings"


def sample_event(samples: SampleFactory, kind: str, org_id: int, conversation_id: int):
    """A sample event of ``org_id`` in conversation ``conversation_id``."""
    event = samples.event(kind, org_id=org_id)
    conversation = event.payload.conversation.model_copy(update={"id": conversation_id})
    return event.model_copy(update={"payload": event.payload.model_copy(update={"conversation": conversation})})


@pytest.fixture
async def platform(db_url):
    async with running_platform(db_url) as running:
        yield running


async def subscribe(platform, tenant, *event_types):
    async with platform.client() as client:
        answer = await client.post("/v2/webhooks", headers=tenant.headers,
                                   json={"items": [{"url": HOOK, "event_type": t} for t in event_types]})
    assert answer.status_code == 200, answer.text
    return [config["id"] for config in answer.json()["items"]]


def message(tenant, conversation: str, external_id: str, **extra) -> ChannelMessage:
    incoming = IncomingMessage(business_id=tenant.business_id, external_conversation_id=conversation,
                               external_message_id=external_id, content=f"text of {external_id}", **extra)
    return ChannelMessage(tenant.org_id, tenant.channel_id, incoming)


async def test_a_batch_decides_each_message_on_its_own(platform):
    a, b = await platform.tenant("A"), await platform.tenant("B")
    [config_id] = await subscribe(platform, a, "message_created")
    async with platform.engine.begin() as conn:
        [earlier] = await ingest_messages(conn, platform.signer, [message(a, "c1", "stored")])
    other_business = ChannelMessage(a.org_id, a.channel_id, IncomingMessage(
        business_id=b.business_id, external_conversation_id="c9", external_message_id="x", content="?"))
    batch = [
        message(a, "c1", "m1", consumer_name="Ann"),        # 0: joins the stored conversation
        message(a, "c2", "m2"),                             # 1: opens c2
        message(a, "c1", "stored"),                         # 2: duplicate of a stored message
        message(a, "c2", "m3", sender_type="User"),         # 3: second message of the new c2
        message(a, "c1", "m1"),                             # 4: duplicate of message 0, same batch
        message(a, "c3", "m4", sender_type="Robot"),        # 5: refused
        ChannelMessage(a.org_id, b.channel_id, message(a, "c1", "m5").incoming),  # 6: another org's channel
        other_business,                                     # 7: another org's business
        message(a, "c1", "m6", consumer_img="https://cdn.example.com/a.png"),  # 8: c1 again
    ]
    async with platform.engine.begin() as conn:
        outcomes = await ingest_messages(conn, platform.signer, batch)

    assert isinstance(outcomes[2], IngestResult) and outcomes[2] == IngestResult(
        earlier.message_id, earlier.conversation_id, duplicate=True)
    assert outcomes[4] == IngestResult(outcomes[0].message_id, outcomes[0].conversation_id, duplicate=True)
    assert isinstance(outcomes[5], MessagingError) and "Robot" in str(outcomes[5])
    assert isinstance(outcomes[6], NotFound) and isinstance(outcomes[7], MessagingError)
    new = [outcomes[i] for i in (0, 1, 3, 8)]
    assert all(isinstance(o, IngestResult) and not o.duplicate for o in new)
    assert outcomes[0].conversation_id == outcomes[8].conversation_id == earlier.conversation_id
    assert outcomes[1].conversation_id == outcomes[3].conversation_id != earlier.conversation_id
    assert [o.message_id for o in new] == sorted(o.message_id for o in new)  # stored in the order given

    assert await platform.count(messages) == 5 and await platform.count(conversations) == 2
    rows = await platform.rows(select(events.c.body).order_by(events.c.id))
    created = [parse_event(row.body).payload for row in rows][1:]
    assert [p.message.id for p in created] == [o.message_id for o in new]
    # Each event shows its conversation as of that message.
    for payload in created:
        assert payload.conversation.last_message == payload.message
    c1_first, c2_first, c2_second, c1_second = created
    assert c1_first.conversation.consumer_name == "Ann" and c1_first.conversation.consumer_img is None
    assert c1_second.conversation.consumer_img == "https://cdn.example.com/a.png"
    assert c1_second.conversation.consumer_name == "Ann"
    assert (c2_first.conversation.has_one_user_message, c2_second.conversation.has_one_user_message) == (False, True)
    assert (c2_first.conversation.is_read, c2_second.conversation.is_read) == (False, True)
    # The stored conversations hold the state after the last message.
    stored = {row.id: row for row in await platform.rows(select(conversations))}
    assert stored[earlier.conversation_id].last_message_id == outcomes[8].message_id
    assert stored[earlier.conversation_id].consumer_name == "Ann"
    assert stored[outcomes[1].conversation_id].last_message_id == outcomes[3].message_id
    assert stored[outcomes[1].conversation_id].has_one_user_message is True
    # One delivery per new message, numbered per conversation in order.
    numbered = await platform.rows(select(deliveries.c.conversation_id, deliveries.c.sequence, events.c.message_id)
                                   .select_from(deliveries.join(events, events.c.id == deliveries.c.event_id))
                                   .where(deliveries.c.webhook_config_id == config_id).order_by(deliveries.c.id))
    assert [(row.conversation_id, row.sequence) for row in numbered] == [
        (earlier.conversation_id, 1), (earlier.conversation_id, 2), (outcomes[1].conversation_id, 1),
        (outcomes[1].conversation_id, 2), (earlier.conversation_id, 3)]


async def test_a_conversation_keeps_its_business_within_a_batch(platform):
    a = await platform.tenant("A")
    async with platform.engine.begin() as conn:
        from tidings.platform import tenants

        second = await tenants.create_business(conn, a.org_id, "Second")
        outcomes = await ingest_messages(conn, platform.signer, [
            message(a, "c", "m1"),
            ChannelMessage(a.org_id, a.channel_id, IncomingMessage(
                business_id=second, external_conversation_id="c", external_message_id="m2", content="x")),
        ])
    assert isinstance(outcomes[0], IngestResult) and isinstance(outcomes[1], Refused)
    assert await platform.count(messages) == 1


async def test_the_conversation_update_never_moves_back(platform):
    """A message stored meanwhile by another writer with a higher id stays the last one."""
    a = await platform.tenant("A")
    async with platform.engine.begin() as conn:
        [first] = await ingest_messages(conn, platform.signer, [message(a, "c", "m1")])
        await conn.execute(update(conversations).values(last_message_id=first.message_id + 1000, is_read=True,
                                                        has_one_user_message=True))
        await ingest_messages(conn, platform.signer, [message(a, "c", "m2")])
    [row] = await platform.rows(select(conversations))
    assert (row.last_message_id, row.is_read, row.has_one_user_message) == (first.message_id + 1000, True, True)


async def test_batched_events_get_the_same_rows_as_one_by_one(platform):
    a, b = await platform.tenant("A"), await platform.tenant("B")
    await subscribe(platform, a, "message_created", "message_updated")
    [b_config] = await subscribe(platform, b, "message_created")
    async with platform.engine.begin() as conn:
        await conn.execute(update(webhook_configs).where(webhook_configs.c.id == b_config).values(paused=True))
    samples = SampleFactory(3)
    items = [(org, sample_event(samples, kind, org, conversation))
             for org, kind, conversation in [(a.org_id, "message_created", 1), (a.org_id, "message_updated", 1),
                                             (b.org_id, "message_created", 2), (a.org_id, "message_created", 1),
                                             (a.org_id, "message_created", 3), (b.org_id, "message_updated", 2)]]

    async def record(batched: bool) -> list[tuple]:
        async with platform.engine.begin() as conn:
            await conn.execute(deliveries.delete())
            await conn.execute(events.delete())
            from tidings.store.platform_tables import delivery_sequences

            await conn.execute(delivery_sequences.delete())
            if batched:
                ids = await record_events(conn, items, signer=platform.signer, now=100.0)
            else:
                ids = [await record_event(conn, org_id=org, event=event, signer=platform.signer, now=100.0)
                       for org, event in items]
        assert ids == sorted(ids) and len(ids) == len(items)
        rows = await platform.rows(
            select(events.c.org_id, events.c.event_type, events.c.body, events.c.message_id, deliveries.c.webhook_config_id,
                   deliveries.c.org_id.label("delivery_org"), deliveries.c.conversation_id, deliveries.c.sequence,
                   deliveries.c.status, deliveries.c.signature, deliveries.c.next_attempt_at, deliveries.c.attempt_count)
            .select_from(events.outerjoin(deliveries, deliveries.c.event_id == events.c.id))
            .order_by(events.c.id, deliveries.c.webhook_config_id))
        return [tuple(row) for row in rows]

    one_by_one = await record(batched=False)
    batched = await record(batched=True)
    assert batched == one_by_one
    # Every rule took part: ordered (the second event of conversation 1 waits), paused, unsubscribed.
    assert [row[8] for row in batched] == ["pending", "pending", "held", "queued", "pending", None]
    assert [row[8] for row in batched if row[4] == b_config] == ["held"]
    assert sum(1 for row in batched if row[4] is None) == 1  # B has no message_updated configuration


async def test_sequences_continue_across_batched_and_single_recording(platform):
    a = await platform.tenant("A")
    [config_id] = await subscribe(platform, a, "message_created")
    samples = SampleFactory(5)
    batch = [(a.org_id, sample_event(samples, "message_created", a.org_id, 7)) for _ in range(3)]
    async with platform.engine.begin() as conn:
        await record_event(conn, org_id=a.org_id, event=batch[0][1], signer=platform.signer)
        await record_events(conn, batch, signer=platform.signer)
        await record_event(conn, org_id=a.org_id, event=batch[0][1], signer=platform.signer)
    numbers = await platform.rows(select(deliveries.c.sequence).where(deliveries.c.webhook_config_id == config_id)
                                  .order_by(deliveries.c.id))
    assert [row.sequence for row in numbers] == [1, 2, 3, 4, 5]


async def test_the_queue_commits_concurrent_messages_together_and_answers_each(platform):
    a = await platform.tenant("A")
    queue = IngestQueue(platform.engine, platform.signer)
    try:
        results = await asyncio.gather(*[queue.ingest(message(a, f"c{i % 3}", f"m{i}")) for i in range(40)],
                                       queue.ingest(message(a, "c0", "m0")), return_exceptions=True)
        refused = await asyncio.gather(queue.ingest(message(a, "c0", "bad", sender_type="Robot")),
                                       return_exceptions=True)
    finally:
        await queue.stop()
    assert all(isinstance(result, IngestResult) for result in results)
    assert sum(result.duplicate for result in results) == 1 and results[-1].message_id == results[0].message_id
    stored = {row.external_message_id: row.id for row in await platform.rows(select(messages))}
    assert [result.message_id for result in results[:40]] == [stored[f"m{i}"] for i in range(40)]
    assert 1 <= queue.batches < 40  # group commit: fewer transactions than messages
    assert isinstance(refused[0], MessagingError) and "Robot" in str(refused[0])


async def test_a_failing_batch_is_retried_message_by_message(platform, monkeypatch):
    a = await platform.tenant("A")
    # The queue writes with ingest_batch on SQLite (a thread of its own) and ingest_messages on PostgreSQL.
    real_batch, real_messages = ingest_queue_module.ingest_batch, ingest_queue_module.ingest_messages

    def refuse_poison(batch):
        if any(item.incoming.content == "poison" for item in batch):
            raise RuntimeError("the database refused the poison")

    def batch_failing_on_poison(conn, signer, batch):
        refuse_poison(batch)
        return real_batch(conn, signer, batch)

    async def messages_failing_on_poison(conn, signer, batch):
        refuse_poison(batch)
        return await real_messages(conn, signer, batch)

    monkeypatch.setattr(ingest_queue_module, "ingest_batch", batch_failing_on_poison)
    monkeypatch.setattr(ingest_queue_module, "ingest_messages", messages_failing_on_poison)
    queue = IngestQueue(platform.engine, platform.signer)
    poison = ChannelMessage(a.org_id, a.channel_id, IncomingMessage(
        business_id=a.business_id, external_conversation_id="c", external_message_id="p", content="poison"))
    try:
        results = await asyncio.gather(*[queue.ingest(message(a, "c", f"m{i}")) for i in range(5)],
                                       queue.ingest(poison), *[queue.ingest(message(a, "c", f"n{i}")) for i in range(5)],
                                       return_exceptions=True)
    finally:
        await queue.stop()
    assert isinstance(results[5], RuntimeError)
    assert all(isinstance(result, IngestResult) and not result.duplicate for i, result in enumerate(results) if i != 5)
    assert await platform.count(messages) == 10 and await platform.count(events) == 10


def test_plan_batch_decides_without_a_database():
    from datetime import UTC, datetime

    from tidings.platform.ingestion import plan_batch

    def item(conversation, external_id, business="b1", channel="ch", org=1, sender="Consumer"):
        return ChannelMessage(org, channel, IncomingMessage(business_id=business, external_conversation_id=conversation,
                                                            external_message_id=external_id, content="x",
                                                            sender_type=sender))

    channels = {"ch": {"id": "ch", "org_id": 1}, "other": {"id": "other", "org_id": 2}}
    owners = {"b1": {"id": "b1", "org_id": 1, "name": "Shop"}, "b2": {"id": "b2", "org_id": 1, "name": "Other"},
              "b9": {"id": "b9", "org_id": 2, "name": "Theirs"}}
    stored_messages = {("ch", "old"): (10, 3)}
    stored_conversations = {("ch", "c1"): {"id": 3, "business_id": "b1"}}
    batch = [item("c1", "old"), item("c1", "new"), item("c2", "a"), item("c2", "a"), item("c2", "b", business="b2"),
             item("c1", "z", channel="other"), item("c3", "y", business="b9"), item("c3", "w", sender="Metadata"),
             item("c1", "c", business="b2")]
    now = datetime(2024, 1, 1, tzinfo=UTC)
    plan = plan_batch(batch, channels, owners, stored_messages, stored_conversations, now)
    assert plan.outcomes[0] == IngestResult(10, 3, duplicate=True)
    assert plan.accepted == [1, 2]
    assert plan.repeated == [(3, 2)]
    # c2 is opened by b1 earlier in the same batch
    assert isinstance(plan.outcomes[4], Refused) and "'c2' of this channel belongs to business b1, not b2" in str(
        plan.outcomes[4])
    assert isinstance(plan.outcomes[5], NotFound)
    assert isinstance(plan.outcomes[6], MessagingError) and "b9" in str(plan.outcomes[6])
    assert "Metadata" in str(plan.outcomes[7])
    assert isinstance(plan.outcomes[8], Refused) and "belongs to business b1" in str(plan.outcomes[8])
    assert list(plan.new_conversations) == [("ch", "c2")]
    opened = plan.new_conversations[("ch", "c2")]
    assert (opened["business_id"], opened["org_id"], opened["created_at"], opened["messaging_partner"]) == (
        "b1", 1, now, "Custom")


def test_each_request_in_its_own_event_loop_still_ingests_and_replies(sqlite_url):
    """Starlette's test client runs every request in a new event loop: the
    ingestion queue and the simulated partners follow it there."""
    from starlette.testclient import TestClient
    from sqlalchemy.pool import NullPool

    from tests.platform_support import Platform, create_schema, platform_settings
    from tidings.contract.signing import Signer, generate_private_key
    from tidings.platform.api.context import PlatformContext
    from tidings.platform import tenants
    from tidings.store.engine import create_engine

    create_schema(sqlite_url)
    engine = create_engine(sqlite_url, poolclass=NullPool)  # no connection outlives its loop
    platform = Platform(PlatformContext(platform_settings(sqlite_url), engine, Signer(generate_private_key())))

    async def setup():
        async with engine.begin() as conn:
            org_id, key = await tenants.create_organization(conn, "A")
            business_id = await tenants.create_business(conn, org_id, "Shop")
            channel_id = await tenants.create_custom_channel(conn, org_id, "Chat")
            from tidings.platform.conversations import receive_partner_message

            conversation_id, _ = await receive_partner_message(
                conn, platform.signer, org_id=org_id, business_id=business_id, partner="SMS", content="hi")
        return key, business_id, channel_id, conversation_id

    key, business_id, channel_id, conversation_id = asyncio.run(setup())
    client = TestClient(platform.app)  # not entered: no lifespan, one loop per request
    for number in range(3):
        answer = client.post(f"/v2/custom-channels/{channel_id}/messages", headers={"x-APIKey": key}, json={
            "business_id": business_id, "external_conversation_id": "c", "external_message_id": f"m{number}",
            "content": "hi", "sender_type": "Consumer"})
        assert answer.status_code == 200, answer.text
        reply = client.post("/v2/messages", headers={"x-APIKey": key},
                            json={"conversation_id": conversation_id, "content": "ok"})
        assert reply.status_code == 200, reply.text
    listed = client.get("/v2/messages", headers={"x-APIKey": key},
                        params={"conversation_id": conversation_id, "per_page": 100}).json()
    assert listed["count"] == 4


@given(writing=st.integers(0, 4), waiting=st.integers(0, 600), writers=st.integers(1, 3))
def test_a_batch_starts_at_once_alone_and_beside_another_only_for_a_backlog(writing, waiting, writers):
    from tidings.platform.ingest_queue import OVERLAP_AT, may_start_batch

    starts = may_start_batch(writing, waiting, writers)
    if starts:
        assert waiting > 0 and writing < writers  # never more batches at once than writers
    if writing == 0 and waiting > 0:
        assert starts  # no fixed wait to gather a burst
    if writing > 0 and waiting < OVERLAP_AT:
        assert not starts  # a short queue waits for the batch being written
    if 0 < writing < writers and waiting >= OVERLAP_AT:
        assert starts


def test_the_queue_rules_run_their_examples():
    import doctest

    from tidings.platform import ingest_queue

    result = doctest.testmod(ingest_queue)
    assert result.attempted >= 1 and result.failed == 0
