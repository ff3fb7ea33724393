"""The dispatcher over each of its transports (``lean``, the default, and
``aiohttp``): the same bytes, signatures and headers reach a real endpoint,
the sequence header goes with deliveries that have a place in their
conversation, and the choice of transport is checked."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, update

from tests.dispatcher_support import (
    add_configuration,
    add_events,
    add_organization,
    attempt_rows,
    database,
    delivery_rows,
    fast_settings,
    new_signer,
    scripted_endpoint,
)
from tidings.contract.signing import Verifier, generate_secret
from tidings.contract.samples import SampleFactory
from tidings.platform.deliveries.outbox import record_event
from tidings.platform.dispatcher import Dispatcher, may_leave_due
from tidings.store.platform_tables import deliveries, events

pytestmark = pytest.mark.timeout(60)


async def test_the_transport_delivers_signed_bytes_with_the_sequence_header_when_there_is_one(db_url):
    signer = new_signer()
    secret = generate_secret()
    async with scripted_endpoint(hook=[503, 200]) as endpoint, database(db_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, endpoint.url("/hook"), secret=secret,
                                custom_headers={"X-Tidings-Sequence": "forged", "X-Shop": "1"})
        first, second = await add_events(engine, signer, org_id, 2)
        async with engine.begin() as conn:
            await conn.execute(update(deliveries).where(deliveries.c.event_id == first).values(sequence=7))
            await conn.execute(update(deliveries).where(deliveries.c.event_id == second).values(sequence=None))
        dispatcher = Dispatcher(engine, signer, fast_settings())
        await asyncio.wait_for(dispatcher.run_until_idle(), 30)

        rows = {row.event_id: row for row in await delivery_rows(engine)}
        assert {row.status for row in rows.values()} == {"delivered"}
        async with engine.connect() as conn:
            bodies = dict((await conn.execute(select(events.c.id, events.c.body))).all())
        by_id = {rows[event].webhook_id: event for event in (first, second)}
        requests = endpoint.on("/hook")
        assert len(requests) == 3  # the first answer is 503: one delivery is sent twice
        for request in requests:
            event = by_id[request.headers["webhook-id"]]
            assert request.body == bodies[event]
            assert request.headers["X-Tidings-Signature-v1"] == rows[event].signature
            assert request.headers["X-Shop"] == "1"
            assert Verifier(public_keys=[signer.private_key.public_key()]).verify(request.body, request.headers)
            assert Verifier(secrets=[secret]).verify(request.body, request.headers) == "v1"
            expected = "7" if event == first else "forged"  # a custom header cannot pose as the sequence
            assert request.headers[signer.headers.sequence] == expected
        for attempt in await attempt_rows(engine):
            sent = attempt.request_headers.get("X-Tidings-Sequence")
            assert sent == ("7" if attempt.delivery_id == rows[first].id else "********")  # a custom value is masked
            assert attempt.request_headers["X-Shop"] == "********"


async def test_run_until_idle_waits_for_a_retry_written_after_a_claim_found_nothing(db_url):
    # The first attempt outlasts a poll: a claim in the meantime finds nothing due,
    # and the timeout's retry is written after it. The run must not end there.
    signer = new_signer()
    async with scripted_endpoint(slow=[("hang", 1.0), 200]) as endpoint, database(db_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, endpoint.url("/slow"))
        await add_events(engine, signer, org_id, 1)
        dispatcher = Dispatcher(engine, signer, fast_settings(attempt_timeout=0.4), poll_interval=0.1)
        await asyncio.wait_for(dispatcher.run_until_idle(), 30)
        [delivery] = await delivery_rows(engine)
        assert delivery.status == "delivered" and delivery.attempt_count == 2
        assert [attempt.error.split(":")[0] if attempt.error else attempt.status_code
                for attempt in await attempt_rows(engine)] == ["timeout", 200]


async def test_run_until_idle_sends_what_on_finished_wrote_after_a_claim_found_nothing(db_url):
    # A delivery's end writes another (a settled reply's message_updated) in the
    # transaction that records it; a claim during the slow attempt found nothing
    # due. The run must not end with the new delivery pending (on PostgreSQL no
    # in-process wake-up comes to the rescue).
    signer = new_signer()
    async with scripted_endpoint(slow=[("hang", 0.5), 200]) as endpoint, database(db_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, endpoint.url("/slow"))
        await add_events(engine, signer, org_id, 1)
        written = []

        async def on_finished(conn, finished):
            if not written:
                written.append(await record_event(conn, org_id=org_id, event=SampleFactory(5).message_created(),
                                                  signer=signer))

        # Claims at 0 (the event) and at 0.3 s (nothing); the result, at 0.5 s, is recorded before the next.
        dispatcher = Dispatcher(engine, signer, fast_settings(), poll_interval=0.3, on_finished=on_finished)
        await asyncio.wait_for(dispatcher.run_until_idle(), 30)
        assert written and [row.status for row in await delivery_rows(engine)] == ["delivered", "delivered"]
        assert len(endpoint.on("/slow")) == 2


def test_only_writes_that_may_leave_deliveries_pending_are_followed_by_a_claim():
    assert not may_leave_due(releases=0, retries=0, unapplied=0, wrote_deliveries=False)
    for change in ({"releases": 1}, {"retries": 2}, {"unapplied": 1}, {"wrote_deliveries": True}):
        assert may_leave_due(**{"releases": 0, "retries": 0, "unapplied": 0, "wrote_deliveries": False, **change})
