"""The dispatcher against real endpoints on 127.0.0.1: what is sent, what is
retried, what is recorded, and what pausing, resending and recovering do."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, select, text, update

from tests.dispatcher_support import (
    add_configuration,
    add_events,
    add_organization,
    attempt_rows,
    count_status,
    database,
    delivery_rows,
    fast_settings,
    new_signer,
    scripted_endpoint,
)
from tidings.contract.signing import Verifier, generate_secret
from tidings.platform.deliveries import actions, leases
from tidings.platform.deliveries.cycle import AttemptRow, ReleaseRow, ResultRow, cycle_of
from tidings.platform.dispatcher import Dispatcher
from tidings.store.sqlite import in_sqlite_thread, sqlite_datetime
from tidings.store.engine import create_sync_engine
from tidings.store.platform_tables import deliveries, events, webhook_configs
from tidings.store.types import UTCDateTime

pytestmark = pytest.mark.timeout(60)


async def claim(conn, worker_id: str, now: float, limit: int) -> list:
    """The dispatcher's claim of due deliveries, on the engine of ``conn``."""
    return (await cycle_of(conn).claim(conn, worker_id=worker_id, now=now, limit=limit, promoted=[])).claimed


async def record(conn, worker_id: str, now: float, *, attempts=(), results=(), releases=(), drops=()):
    """The dispatcher's record of a cycle, on the engine of ``conn``."""
    return await cycle_of(conn).record(conn, worker_id=worker_id, attempts=attempts, results=results,
                                       releases=releases, drops=drops, now=now)


async def deliver(engine, signer, settings=None, **kwargs) -> Dispatcher:
    dispatcher = Dispatcher(engine, signer, settings or fast_settings(), **kwargs)
    await asyncio.wait_for(dispatcher.run_until_idle(), 30)
    return dispatcher


# ---------------------------------------------------------------- retries (acceptance)


async def test_500_500_200_gives_three_attempts_of_identical_bytes_and_a_delivered_event(db_url):
    signer = new_signer()
    secret = generate_secret()
    async with scripted_endpoint(flaky=[500, 500, 200]) as endpoint, database(db_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, endpoint.url("/flaky"), secret=secret)
        [event_id] = await add_events(engine, signer, org_id, 1)
        await deliver(engine, signer)

        [delivery] = await delivery_rows(engine)
        assert delivery.status == "delivered" and delivery.attempt_count == 3
        assert [a.status_code for a in await attempt_rows(engine, delivery.id)] == [500, 500, 200]
        requests = endpoint.on("/flaky")
        assert len(requests) == 3
        async with engine.connect() as conn:
            body = (await conn.execute(select(events.c.body).where(events.c.id == event_id))).scalar_one()
        assert {request.body for request in requests} == {body}
        assert {request.headers["webhook-id"] for request in requests} == {delivery.webhook_id}
        assert {request.headers["X-Tidings-Signature-v1"] for request in requests} == {delivery.signature}
        for request in requests:  # each attempt verifies with the public key and with the secret
            assert Verifier(public_keys=[signer.private_key.public_key()]).verify(body, request.headers) == "vendor"
            assert Verifier(secrets=[secret]).verify(body, request.headers) == "v1"
            only_v1a = {k: v for k, v in request.headers.items() if k != "X-Tidings-Signature-v1"}
            assert Verifier(public_keys=[signer.private_key.public_key()]).verify(body, only_v1a) == "v1a"


async def test_404_gives_one_attempt_and_a_failed_delivery(db_url):
    signer = new_signer()
    async with scripted_endpoint(missing=[404]) as endpoint, database(db_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, endpoint.url("/missing"))
        await add_events(engine, signer, org_id, 1)
        await deliver(engine, signer)

        [delivery] = await delivery_rows(engine)
        assert delivery.status == "failed" and delivery.last_status_code == 404
        assert len(await attempt_rows(engine)) == 1 and len(endpoint.on("/missing")) == 1


@pytest.mark.parametrize("max_retries", [0, 3])
async def test_always_500_gives_exactly_one_plus_max_retries_attempts(sqlite_url, max_retries):
    signer = new_signer()
    async with scripted_endpoint(broken=[500]) as endpoint, database(sqlite_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, endpoint.url("/broken"))
        await add_events(engine, signer, org_id, 1)
        await deliver(engine, signer, fast_settings(max_retries=max_retries, retry_base=0.02))

        [delivery] = await delivery_rows(engine)
        assert delivery.status == "failed"
        assert len(endpoint.on("/broken")) == 1 + max_retries
        assert [a.number for a in await attempt_rows(engine)] == list(range(1, 2 + max_retries))


async def test_an_answer_slower_than_the_attempt_timeout_is_retried(sqlite_url):
    signer = new_signer()
    async with scripted_endpoint(slow=[("hang", 3.0), 200]) as endpoint, database(sqlite_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, endpoint.url("/slow"))
        await add_events(engine, signer, org_id, 1)
        started = time.monotonic()
        await deliver(engine, signer, fast_settings(attempt_timeout=0.3))

        [delivery] = await delivery_rows(engine)
        first, second = await attempt_rows(engine)
        assert delivery.status == "delivered" and delivery.attempt_count == 2
        assert first.status_code is None and first.error.startswith("timeout")
        assert 250 <= first.duration_ms < 2000 and second.status_code == 200
        assert time.monotonic() - started < 3.0  # the hung request was abandoned, not waited for


async def test_429_with_retry_after_waits_at_least_that_long(sqlite_url):
    signer = new_signer()
    async with scripted_endpoint(busy=[(429, {"Retry-After": "1"}), 200]) as endpoint, database(sqlite_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, endpoint.url("/busy"))
        await add_events(engine, signer, org_id, 1)
        await deliver(engine, signer, fast_settings(retry_base=0.01))

        first, second = endpoint.on("/busy")
        assert second.at - first.at >= 1.0
        assert [a.status_code for a in await attempt_rows(engine)] == [429, 200]
        assert first.body == second.body and first.headers["webhook-id"] == second.headers["webhook-id"]


async def test_408_and_503_are_retried_and_other_4xx_are_not(sqlite_url):
    signer = new_signer()
    async with scripted_endpoint(a=[408, 200], b=[503, 200], c=[400], d=[401]) as endpoint, \
            database(sqlite_url) as engine:
        for path in "abcd":
            org_id = await add_organization(engine, f"org {path}")
            await add_configuration(engine, org_id, endpoint.url(f"/{path}"))
            await add_events(engine, signer, org_id, 1)
        await deliver(engine, signer)
        assert {path: len(endpoint.on(f"/{path}")) for path in "abcd"} == {"a": 2, "b": 2, "c": 1, "d": 1}
        assert [row.status for row in await delivery_rows(engine)] == ["delivered", "delivered", "failed", "failed"]


async def test_a_refused_connection_is_retried_then_fails(sqlite_url):
    signer = new_signer()
    async with scripted_endpoint() as endpoint:
        dead_url = endpoint.url("/gone")
    async with database(sqlite_url) as engine:  # nothing listens on that port any more
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, dead_url)
        await add_events(engine, signer, org_id, 1)
        await deliver(engine, signer, fast_settings(max_retries=2, retry_base=0.01))
        [delivery] = await delivery_rows(engine)
        assert delivery.status == "failed"
        assert [a.error.split(":")[0] for a in await attempt_rows(engine)] == ["connection"] * 3


# ---------------------------------------------------------------- what each request carries


async def test_custom_headers_and_both_secrets_during_a_rotation(sqlite_url):
    signer = new_signer()
    old, new = generate_secret(), generate_secret()
    async with scripted_endpoint(hook=[200], expired=[200]) as endpoint, database(sqlite_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, endpoint.url("/hook"), secret=new, previous_secret=old,
                                previous_expires_at=time.time() + 60, custom_headers={"X-Shop-Token": "abc123"})
        other_org = await add_organization(engine, "Other")
        await add_configuration(engine, other_org, endpoint.url("/expired"), secret=new, previous_secret=old,
                                previous_expires_at=time.time() - 1)
        await add_events(engine, signer, org_id, 1)
        await add_events(engine, signer, other_org, 1)
        await deliver(engine, signer)

        [during] = endpoint.on("/hook")
        assert during.headers["X-Shop-Token"] == "abc123"
        entries = during.headers["webhook-signature"].split(" ")
        assert [entry.split(",")[0] for entry in entries] == ["v1a", "v1", "v1"]
        assert Verifier(secrets=[old]).verify(during.body, during.headers) == "v1"
        assert Verifier(secrets=[new]).verify(during.body, during.headers) == "v1"
        [after] = endpoint.on("/expired")
        assert [entry.split(",")[0] for entry in after.headers["webhook-signature"].split(" ")] == ["v1a", "v1"]
        assert Verifier(secrets=[new]).verify(after.body, after.headers) == "v1"
        with pytest.raises(Exception):
            Verifier(secrets=[old]).verify(after.body, after.headers)


async def test_every_attempt_is_recorded_with_its_request_headers_and_answer(sqlite_url):
    signer = new_signer()
    async with scripted_endpoint(flaky=[502, 200]) as endpoint, database(sqlite_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, endpoint.url("/flaky"))
        await add_events(engine, signer, org_id, 1)
        before = datetime.now(UTC)
        dispatcher = await deliver(engine, signer)

        first, second = await attempt_rows(engine)
        assert (first.number, second.number) == (1, 2)
        assert first.response_excerpt == "answer 502" and second.response_excerpt == "answer 200"
        assert first.error is None and first.status_code == 502  # an answer is no error
        assert before <= first.started_at <= second.started_at <= datetime.now(UTC)
        assert first.duration_ms > 0 and first.worker_id == dispatcher.worker_id
        sent = endpoint.on("/flaky")
        assert first.request_headers["webhook-signature"] == sent[0].headers["webhook-signature"]
        assert second.request_headers["webhook-timestamp"] == sent[1].headers["webhook-timestamp"]


# ---------------------------------------------------------------- pause, resume, resend, recover


async def test_410_fails_the_delivery_and_pauses_the_configuration_until_resumed(sqlite_url):
    signer = new_signer()
    async with scripted_endpoint(hook=[410, 200]) as endpoint, database(sqlite_url) as engine:
        org_id = await add_organization(engine)
        config_id = await add_configuration(engine, org_id, endpoint.url("/hook"))
        await add_events(engine, signer, org_id, 1)
        await deliver(engine, signer)
        async with engine.connect() as conn:
            config = (await conn.execute(select(webhook_configs).where(webhook_configs.c.id == config_id))).one()
        assert config.paused and "410" in config.paused_reason
        assert [row.status for row in await delivery_rows(engine)] == ["failed"]

        await add_events(engine, signer, org_id, 3, seed=2)  # written while paused: held
        assert await count_status(engine, "held") == 3
        await deliver(engine, signer)
        assert len(endpoint.on("/hook")) == 1  # nothing was sent while paused

        async with engine.begin() as conn:
            assert await actions.resume_configuration(conn, config_id=config_id, now=time.time(),
                                                    updated_at=datetime.now(UTC)) == 3
        await deliver(engine, signer)
        assert [row.status for row in await delivery_rows(engine)] == ["failed"] + ["delivered"] * 3


async def test_pausing_holds_pending_deliveries_and_a_claimed_one_of_a_paused_configuration(sqlite_url):
    signer = new_signer()
    async with scripted_endpoint(hook=[200]) as endpoint, database(sqlite_url) as engine:
        org_id = await add_organization(engine)
        config_id = await add_configuration(engine, org_id, endpoint.url("/hook"))
        await add_events(engine, signer, org_id, 4)
        async with engine.begin() as conn:
            assert await actions.pause_configuration(conn, config_id=config_id, reason="owner", now=datetime.now(UTC)) == 4
            assert await actions.pause_configuration(conn, config_id=config_id, reason="again", now=datetime.now(UTC)) is None
            # A delivery written by a writer that read "not paused" just before the pause:
            await conn.execute(update(deliveries).where(deliveries.c.id == 1).values(status="pending"))
        await deliver(engine, signer)
        assert endpoint.received == []
        assert await count_status(engine, "held") == 4


async def test_resend_and_recover_send_again_with_the_same_webhook_id(sqlite_url):
    signer = new_signer()
    async with scripted_endpoint(hook=[404, 404, 200]) as endpoint, database(sqlite_url) as engine:
        org_id = await add_organization(engine)
        config_id = await add_configuration(engine, org_id, endpoint.url("/hook"))
        await add_events(engine, signer, org_id, 2)
        await deliver(engine, signer)
        assert await count_status(engine, "failed") == 2
        first, second = await delivery_rows(engine)

        async with engine.begin() as conn:
            assert await actions.resend(conn, delivery_id=first.id, now=time.time())
        await deliver(engine, signer)
        async with engine.begin() as conn:  # a pending or delivered one is not "failed"
            assert await actions.recover(conn, config_id=config_id, since=datetime.now(UTC) - timedelta(hours=1),
                                         now=time.time()) == 1
            assert await actions.recover(conn, config_id=config_id, since=datetime.now(UTC) - timedelta(hours=1),
                                         now=time.time()) == 0
        await deliver(engine, signer)

        assert [row.status for row in await delivery_rows(engine)] == ["delivered", "delivered"]
        ids = [request.headers["webhook-id"] for request in endpoint.on("/hook")]
        assert ids == [first.webhook_id, second.webhook_id, first.webhook_id, second.webhook_id]


# ---------------------------------------------------------------- leases and callbacks


async def test_on_finished_runs_once_per_final_outcome_inside_the_recording_transaction(sqlite_url):
    signer = new_signer()
    seen = []

    async def on_finished(conn, finished):
        for row, delivered in finished:
            seen.append((row.id, delivered))
            await conn.execute(update(deliveries).where(deliveries.c.id == row.id).values(last_error="noted"))

    async with scripted_endpoint(ok=[500, 200], no=[400]) as endpoint, database(sqlite_url) as engine:
        org_ok = await add_organization(engine, "ok")
        await add_configuration(engine, org_ok, endpoint.url("/ok"))
        org_no = await add_organization(engine, "no")
        await add_configuration(engine, org_no, endpoint.url("/no"))
        await add_events(engine, signer, org_ok, 1)
        await add_events(engine, signer, org_no, 1)
        await deliver(engine, signer, on_finished=on_finished)
        rows = await delivery_rows(engine)
        assert sorted(seen) == [(rows[0].id, True), (rows[1].id, False)]
        assert [row.last_error for row in rows] == ["noted", "noted"]


async def test_results_of_a_delivery_handed_to_another_worker_are_not_written(db_url):
    async with database(db_url) as engine:
        signer = new_signer()
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, "http://127.0.0.1:9/never")
        await add_events(engine, signer, org_id, 2)
        now = time.time()
        async with engine.begin() as conn:
            await leases.register_worker(conn, worker_id="w1", hostname="h", pid=1, now=now - 60)
            claimed = await claim(conn, "w1", now, 10)
            assert [row.attempt_count for row in claimed] == [0, 0]
            assert await claim(conn, "w1", now, 10) == []
        async with engine.begin() as conn:  # w1 stopped beating 60 s ago: its work goes back
            assert await leases.reap_stalled(conn, now=now, stale_after=15) == 2
            assert not await leases.heartbeat(conn, worker_id="w1", now=now)
            taken = await claim(conn, "w2", now, 1)
        late = [ResultRow(r.id, "failed", 1, now, 500, "late", datetime.now(UTC)) for r in claimed]
        async with engine.begin() as conn:
            recorded = await record(conn, "w1", now, results=late)
            assert (recorded.applied, recorded.dropped, recorded.promoted) == (set(), 0, [])
        rows = {row.id: row for row in await delivery_rows(engine)}
        assert rows[taken[0].id].status == "delivering" and rows[taken[0].id].worker_id == "w2"
        assert {row.status for row in rows.values()} == {"delivering", "pending"}  # nothing overwritten
        async with engine.begin() as conn:
            recorded = await record(conn, "w2", now, results=[
                ResultRow(r.id, "delivered", 1, now, 200, None, datetime.now(UTC)) for r in claimed])
        assert recorded.applied == {taken[0].id}
        assert {row.id: row.status for row in await delivery_rows(engine)}[taken[0].id] == "delivered"


async def test_statements_in_the_sqlite_thread_belong_to_the_callers_transaction(sqlite_url):
    """On SQLite a cycle's statements run as plain sqlite3 calls in the
    driver's thread: what they write is seen by the same transaction's
    SQLAlchemy statements, and is rolled back or committed with it."""

    def mark(db, delivery_id, note):
        db.execute("UPDATE deliveries SET last_error = ? WHERE id = ?", (note, delivery_id))
        return db.execute("SELECT last_error FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()[0]

    async with database(sqlite_url) as engine:
        signer = new_signer()
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, "http://127.0.0.1:9/never")
        await add_events(engine, signer, org_id, 2)
        first, second = [row.id for row in await delivery_rows(engine)]
        with pytest.raises(RuntimeError):
            async with engine.begin() as conn:
                await conn.execute(update(deliveries).where(deliveries.c.id == second).values(last_error="async"))
                assert await in_sqlite_thread(conn, mark, first, "rolled back") == "rolled back"
                seen = (await conn.execute(select(deliveries.c.last_error).where(deliveries.c.id == first))).scalar()
                assert seen == "rolled back"
                raise RuntimeError("abandon the transaction")
        assert [row.last_error for row in await delivery_rows(engine)] == [None, None]
        async with engine.begin() as conn:
            assert await in_sqlite_thread(conn, mark, first, "kept") == "kept"
            await conn.execute(update(deliveries).where(deliveries.c.id == second).values(last_error="async"))
        assert [row.last_error for row in await delivery_rows(engine)] == ["kept", "async"]


@pytest.mark.parametrize("value", [
    datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    datetime(2026, 11, 29, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 1, 2, 3, 4, 5, 123, tzinfo=timezone(timedelta(hours=2))),
])
def test_the_raw_sqlite_writes_store_datetimes_as_sqlalchemy_does(value):
    engine = create_sync_engine("sqlite://")
    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("at", UTCDateTime))
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, at=value))
        stored = conn.execute(text("SELECT at FROM t")).scalar_one()
    assert sqlite_datetime(value) == stored


async def test_batched_writes_touch_only_what_the_worker_holds_and_keep_every_field(db_url):
    """The writes of a cycle (attempts, results, hand-backs) are one statement each on
    PostgreSQL and an executemany on SQLite: both keep the guard and every value."""
    async with database(db_url) as engine:
        signer = new_signer()
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, "http://127.0.0.1:9/never")
        await add_events(engine, signer, org_id, 5)
        now = time.time()
        started = datetime(2026, 11, 29, 12, 0, 0, 250000, tzinfo=UTC)
        async with engine.begin() as conn:
            claimed = sorted(row.id for row in await claim(conn, "w1", now, 5))
            assert len(claimed) == 5
            # one of them was handed to another worker meanwhile
            await conn.execute(update(deliveries).where(deliveries.c.id == claimed[4]).values(worker_id="w2"))
            recorded = await record(conn, "w1", now, attempts=[AttemptRow(
                delivery_id=delivery_id, number=1, started_at=started, duration_ms=12.5, status_code=code,
                response_excerpt=excerpt, error=error, request_headers={"webhook-id": f"msg_{delivery_id}"},
                worker_id="w1") for delivery_id, code, excerpt, error in (
                    (claimed[0], 200, "ok", None), (claimed[1], 503, "busy", "http 503"),
                    (claimed[2], None, None, "timeout: no answer"))], results=[
                ResultRow(claimed[0], "delivered", 1, now, 200, None, started),
                ResultRow(claimed[1], "pending", 1, now + 30, 503, "http 503", None),
                ResultRow(claimed[4], "failed", 1, now, 500, "not mine", started)], releases=[
                ReleaseRow(claimed[2], "held", now + 5), ReleaseRow(claimed[3], "pending", now + 7),
                ReleaseRow(claimed[4], "pending", now + 9)])
            assert recorded.applied == {claimed[0], claimed[1]}
        rows = {row.id: row for row in await delivery_rows(engine)}
        first, second, third, fourth, other = (rows[i] for i in claimed)
        assert (first.status, first.attempt_count, first.last_status_code, first.worker_id) == ("delivered", 1, 200, None)
        assert first.finished_at == started
        assert (second.status, second.next_attempt_at, second.last_error) == ("pending", now + 30, "http 503")
        assert second.finished_at is None
        assert (third.status, third.next_attempt_at, third.worker_id) == ("held", now + 5, None)
        assert (fourth.status, fourth.next_attempt_at) == ("pending", now + 7)
        assert (other.status, other.worker_id, other.attempt_count) == ("delivering", "w2", 0)  # left alone
        attempts = sorted(await attempt_rows(engine), key=lambda row: row.delivery_id)
        assert [(a.delivery_id, a.status_code, a.response_excerpt, a.error) for a in attempts] == [
            (claimed[0], 200, "ok", None), (claimed[1], 503, "busy", "http 503"),
            (claimed[2], None, None, "timeout: no answer")]
        assert all(a.started_at == started and a.duration_ms == 12.5 and a.worker_id == "w1" for a in attempts)
        assert [a.request_headers for a in attempts] == [{"webhook-id": f"msg_{i}"} for i in claimed[:3]]


async def test_claim_takes_due_pending_deliveries_oldest_first_through_the_partial_index(db_url):
    async with database(db_url) as engine:
        signer = new_signer()
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, "http://127.0.0.1:9/never")
        await add_events(engine, signer, org_id, 5)
        now = time.time()
        async with engine.begin() as conn:
            for delivery_id, due in [(1, now + 60), (2, now - 3), (3, now - 5), (4, now - 1)]:
                await conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(next_attempt_at=due))
            await conn.execute(update(deliveries).where(deliveries.c.id == 5).values(status="held"))
            postgres = engine.dialect.name == "postgresql"
            claimed = await claim(conn, "w", now, 2)
            assert sorted(row.id for row in claimed) == [2, 3]  # the two due first (RETURNING has no order)
            assert [row.id for row in await claim(conn, "w", now, 9)] == [4]
            if postgres:
                await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
                plan = (await conn.exec_driver_sql(
                    "EXPLAIN SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= 1e12 "
                    "ORDER BY next_attempt_at LIMIT 5 FOR UPDATE SKIP LOCKED")).scalars().all()
            else:
                plan = (await conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT id FROM deliveries WHERE status = 'pending' "
                    "AND next_attempt_at <= 1e12 ORDER BY next_attempt_at LIMIT 5")).all()
            assert "ix_deliveries_due" in " ".join(str(line) for line in plan)


async def test_a_stopped_dispatcher_hands_back_what_it_claimed_and_leaves(sqlite_url):
    signer = new_signer()
    async with scripted_endpoint(slow=[("hang", 0.5)]) as endpoint, database(sqlite_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, endpoint.url("/slow"))
        await add_events(engine, signer, org_id, 40)
        settings = fast_settings(max_per_endpoint=2)
        dispatcher = Dispatcher(engine, signer, settings)
        stop = asyncio.Event()
        running = asyncio.create_task(dispatcher.run(stop))
        deadline = time.monotonic() + 10
        while len(endpoint.received) < 2:
            assert time.monotonic() < deadline and not running.done(), "no request within 10 s"
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(running, 10)
        statuses = [row.status for row in await delivery_rows(engine)]
        assert statuses.count("delivered") == len(endpoint.received) >= 2
        assert statuses.count("pending") == 40 - statuses.count("delivered")
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("SELECT count(*) FROM workers")).scalar() == 0
