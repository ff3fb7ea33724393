"""Ordered delivery per conversation: each conversation's events arrive in
sequence order, one at a time, while other conversations go on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from aiohttp import web
from sqlalchemy import func, select, text, update

from tests.loopback import serving_hook
from tests.dispatcher_support import add_configuration, add_organization, database, fast_settings, new_signer
from tidings.contract.samples import SampleFactory
from tidings.contract.signing import private_key_whsk
from tidings.platform.deliveries import actions, leases
from tidings.platform.deliveries.cycle import cycle_of, one_per_conversation
from tidings.platform.deliveries.outbox import initial_status, record_event
from tidings.platform.deliveries.statements import PROMOTED_AT_MOST
from tidings.platform.dispatcher import Dispatcher
from tidings.platform.sealed import new_key
from tidings.store.platform_tables import deliveries, delivery_sequences, webhook_configs

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parent.parent


async def promote_and_claim(conn, finished, worker_id: str, now: float) -> list:
    """What the dispatcher's cycle does when heads finish: their conversations'
    next deliveries are promoted and claimed by ``worker_id``."""
    return await cycle_of(conn).promote(conn, finished, status="delivering", worker_id=worker_id, now=now,
                                        per_conversation=PROMOTED_AT_MOST)


class OrderedEndpoint:
    """Answers 500 to a share of first attempts, at random; records, per
    conversation, the sequence numbers it accepted, in arrival order, and
    whether two requests of one conversation were ever in flight at once."""

    def __init__(self, first_failure_share: float = 1 / 3, seed: int = 7, fail_conversations=()) -> None:
        self.random = random.Random(seed)
        self.first_failure_share = first_failure_share
        self.fail_conversations = set(fail_conversations)
        self.accepted: defaultdict[int, list[int]] = defaultdict(list)
        self.seen_ids: set[str] = set()
        self.in_flight: defaultdict[int, int] = defaultdict(int)
        self.overlaps = 0
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests += 1
        conversation = orjson.loads(body)["payload"]["conversation"]["id"]
        sequence = int(request.headers["X-Tidings-Sequence"])
        self.in_flight[conversation] += 1
        if self.in_flight[conversation] > 1:
            self.overlaps += 1
        try:
            await asyncio.sleep(self.random.random() * 0.003)
            first = request.headers["webhook-id"] not in self.seen_ids
            self.seen_ids.add(request.headers["webhook-id"])
            if conversation in self.fail_conversations or (first and self.random.random() < self.first_failure_share):
                return web.Response(status=500, text="try again")
            self.accepted[conversation].append(sequence)
            return web.Response(status=200, text="ok")
        finally:
            self.in_flight[conversation] -= 1

    def serving(self):
        return serving_hook(self.handle)


async def add_conversation_events(engine, signer, org_id: int, count: int, conversations: int, seed: int = 3) -> None:
    """``count`` events spread at random over ``conversations`` conversations."""
    factory = SampleFactory(seed)
    pick = random.Random(seed)
    async with engine.begin() as conn:
        for _ in range(count):
            conversation_id = 10_000 + pick.randrange(conversations)
            event = factory.message_created(org_id=org_id, conversation={"id": conversation_id})
            await record_event(conn, org_id=org_id, event=event, signer=signer)


async def one_conversation(engine, signer, count: int) -> tuple[int, int]:
    """An organization, its ordered configuration (whose endpoint is never
    reached) and ``count`` events of one conversation; returns their ids."""
    org_id = await add_organization(engine)
    config_id = await add_configuration(engine, org_id, "http://127.0.0.1:9/hook")
    await add_conversation_events(engine, signer, org_id, count, 1)
    return org_id, config_id


async def status_counts(engine) -> dict[str, int]:
    async with engine.connect() as conn:
        return dict((await conn.execute(select(deliveries.c.status, func.count()).group_by(deliveries.c.status))).all())


def start_worker(db_url: str, key: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tidings.cli.worker", "--db", db_url, "--signing-key", key, "--allow-private-targets",
         "--allow-http", "--no-migrate", "--retry-base", "0.05", "--retry-factor", "1.5", "--max-retries", "20",
         "--heartbeat-interval", "0.2", "--stale-after", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "TIDINGS_SECRETS_KEY": new_key()})


async def test_every_conversation_arrives_in_sequence_order_without_gaps(db_url):
    # Three workers share a PostgreSQL; a SQLite file takes one.
    workers = 3 if db_url.startswith("postgresql") else 1
    signer = new_signer()
    endpoint = OrderedEndpoint()
    async with endpoint.serving() as url, database(db_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, url)
        await add_conversation_events(engine, signer, org_id, 2_000, 50)
        processes = [start_worker(db_url, private_key_whsk(signer.private_key)) for _ in range(workers)]
        try:
            deadline = time.monotonic() + 150
            while (await status_counts(engine)).get("delivered", 0) < 2_000:
                assert time.monotonic() < deadline, await status_counts(engine)
                assert all(p.poll() is None for p in processes), [p.stderr.read()[-2000:] for p in processes]
                await asyncio.sleep(0.3)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(20)
        async with engine.connect() as conn:
            expected = dict((await conn.execute(select(deliveries.c.conversation_id, func.max(deliveries.c.sequence))
                                                .group_by(deliveries.c.conversation_id))).all())
    assert len(expected) == 50 and sum(expected.values()) == 2_000
    assert endpoint.requests > 2_000 + 400  # about a third of first attempts were refused
    for conversation, last in expected.items():
        assert endpoint.accepted[conversation] == list(range(1, last + 1)), conversation
    assert endpoint.overlaps == 0


@contextlib.asynccontextmanager
async def dispatching(engine, signer):
    stop = asyncio.Event()
    dispatcher = Dispatcher(engine, signer, fast_settings(retry_base=0.05, retry_factor=1.0, max_retries=1000),
                            poll_interval=0.05)
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def rows_when(engine, condition, timeout: float = 90.0) -> list:
    """The deliveries once ``condition(rows)`` holds (bounded in time)."""
    deadline = time.monotonic() + timeout
    while True:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(deliveries.c.conversation_id, deliveries.c.sequence,
                                              deliveries.c.status, deliveries.c.attempt_count))).all()
        if condition(rows):
            return rows
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def waiting_lock_requests(engine) -> int:
    """PostgreSQL: how many sessions of this database wait for a lock another transaction holds (read
    in a transaction of its own: within one, pg_stat_activity keeps showing what it showed first)."""
    async with engine.connect() as conn:
        return (await conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ))).scalar_one()


async def test_a_stuck_conversation_holds_back_only_its_own_events(db_url):
    signer = new_signer()
    stuck = 10_000
    endpoint = OrderedEndpoint(first_failure_share=0.0, fail_conversations={stuck})
    async with endpoint.serving() as url, database(db_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, url)
        await add_conversation_events(engine, signer, org_id, 200, 5)
        async with dispatching(engine, signer):
            rows = await rows_when(engine, lambda rows: all(
                r.status == "delivered" for r in rows if r.conversation_id != stuck) and any(
                r.conversation_id == stuck and r.attempt_count > 3 for r in rows))
        mine = sorted((r for r in rows if r.conversation_id == stuck), key=lambda r: r.sequence)
        assert len(mine) > 1 and len(rows) - len(mine) > 100  # the others were all delivered meanwhile
        assert mine[0].status in ("pending", "delivering") and mine[0].attempt_count > 3  # retried, still failing
        assert all(r.status == "queued" and r.attempt_count == 0 for r in mine[1:])  # never sent

        endpoint.fail_conversations.clear()  # the endpoint recovers: the rest follows, in order
        async with dispatching(engine, signer):
            await rows_when(engine, lambda rows: all(r.status == "delivered" for r in rows))
        assert endpoint.accepted[stuck] == list(range(1, len(mine) + 1))
        assert endpoint.overlaps == 0


async def test_without_ordering_a_failing_event_does_not_hold_back_the_next(db_url):
    signer = new_signer()
    stuck = 10_000
    endpoint = OrderedEndpoint(first_failure_share=0.0, fail_conversations={stuck})
    async with endpoint.serving() as url, database(db_url) as engine:
        org_id = await add_organization(engine)
        config_id = await add_configuration(engine, org_id, url)
        async with engine.begin() as conn:
            await conn.execute(update(webhook_configs).where(webhook_configs.c.id == config_id).values(ordering="none"))
        await add_conversation_events(engine, signer, org_id, 60, 3)
        assert set(await status_counts(engine)) == {"pending"}  # nothing waits
        async with dispatching(engine, signer):
            rows = await rows_when(engine, lambda rows: all(
                r.status == "delivered" for r in rows if r.conversation_id != stuck) and all(
                r.attempt_count > 1 for r in rows if r.conversation_id == stuck))
        stuck_rows = [r for r in rows if r.conversation_id == stuck]
        # every event of the failing conversation was tried, none waited for another
        assert stuck_rows and all(r.status in ("pending", "delivering") and r.attempt_count > 1 for r in stuck_rows)


@pytest.mark.parametrize("ordered, paused, waits, expected", [
    (True, False, False, "pending"), (True, False, True, "queued"), (True, True, False, "held"),
    (True, True, True, "queued"), (False, False, True, "pending"), (False, True, True, "held"),
])
def test_initial_status(ordered, paused, waits, expected):
    assert initial_status(ordered=ordered, paused=paused, waits_behind_another=waits) == expected


async def test_resend_and_recover_wait_behind_the_conversation_head(sqlite_url):
    signer = new_signer()
    async with database(sqlite_url) as engine:
        org_id, config_id = await one_conversation(engine, signer, 4)
        async with engine.begin() as conn:
            ids = (await conn.execute(select(deliveries.c.id).order_by(deliveries.c.sequence))).scalars().all()
            conversation_of = dict((await conn.execute(select(deliveries.c.id, deliveries.c.conversation_id))).all())
            assert [r for r in (await conn.execute(select(deliveries.c.status).order_by(deliveries.c.sequence))
                                ).scalars()] == ["pending", "queued", "queued", "queued"]
            # the first two finished (one failed), the third is now the head
            await conn.execute(update(deliveries).where(deliveries.c.id == ids[0]).values(status="failed"))
            await conn.execute(update(deliveries).where(deliveries.c.id == ids[1]).values(status="delivered"))
            await conn.execute(update(deliveries).where(deliveries.c.id == ids[2]).values(status="pending"))
            assert await actions.resend(conn, delivery_id=ids[1], now=time.time())
            statuses = dict((await conn.execute(select(deliveries.c.id, deliveries.c.status))).all())
            assert statuses == {ids[0]: "failed", ids[1]: "queued", ids[2]: "pending", ids[3]: "queued"}
            # the head finishes: the re-sent one (lower sequence) goes next, before the fourth, which
            # the same worker claims with it as its follower
            await conn.execute(update(deliveries).where(deliveries.c.id == ids[2]).values(status="delivered"))
            claimed = await promote_and_claim(conn, [(ids[2], config_id, conversation_of[ids[2]])], "w", time.time())
            assert [row.id for row in sorted(claimed, key=lambda row: row.sequence)] == [ids[1], ids[3]]
            statuses = dict((await conn.execute(select(deliveries.c.id, deliveries.c.status))).all())
            assert statuses == {ids[0]: "failed", ids[1]: "delivering", ids[2]: "delivered", ids[3]: "delivering"}
            # recovering the failed first one queues it behind the head being sent
            since = (await conn.execute(select(func.min(deliveries.c.created_at)))).scalar_one()
            assert await actions.recover(conn, config_id=config_id, since=since, now=time.time()) == 1
            statuses = dict((await conn.execute(select(deliveries.c.id, deliveries.c.status))).all())
            assert statuses[ids[0]] == "queued" and statuses[ids[1]] == "delivering"
            # ordering off: nothing waits any more
            await actions.ordering_changed(conn, config_id=config_id, ordering="none", now=time.time())
            statuses = dict((await conn.execute(select(deliveries.c.id, deliveries.c.status))).all())
            assert "queued" not in statuses.values()


async def test_a_promotion_follows_the_ordering_as_it_is_now_and_needs_no_sequence_row(db_url):
    """Only conversations of configurations ordered at the time of the promotion
    move on; and a conversation whose sequence row is missing (deliveries
    written by hand, say) is promoted all the same."""
    signer = new_signer()
    async with database(db_url) as engine:
        ordered_org, switched_org = await add_organization(engine), await add_organization(engine)
        ordered_config = await add_configuration(engine, ordered_org, "http://127.0.0.1:9/hook")
        switched_config = await add_configuration(engine, switched_org, "http://127.0.0.1:9/hook")
        await add_conversation_events(engine, signer, ordered_org, 3, 1)
        await add_conversation_events(engine, signer, switched_org, 3, 1)
        async with engine.begin() as conn:
            rows = (await conn.execute(select(deliveries.c.id, deliveries.c.webhook_config_id,
                                              deliveries.c.conversation_id).order_by(deliveries.c.sequence))).all()
            ids = {config: [row.id for row in rows if row.webhook_config_id == config]
                   for config in (ordered_config, switched_config)}
            # switched off by hand, its queued deliveries left where they were
            await conn.execute(update(webhook_configs).where(webhook_configs.c.id == switched_config)
                               .values(ordering="none"))
            await conn.execute(delivery_sequences.delete())
            heads = [ids[ordered_config][0], ids[switched_config][0]]
            await conn.execute(update(deliveries).where(deliveries.c.id.in_(heads)).values(status="delivered"))
            claimed = await promote_and_claim(
                conn, [(row.id, row.webhook_config_id, row.conversation_id) for row in rows if row.id in heads],
                "w", time.time())
            statuses = dict((await conn.execute(select(deliveries.c.id, deliveries.c.status))).all())
        assert sorted(row.id for row in claimed) == ids[ordered_config][1:]
        assert [statuses[i] for i in ids[switched_config]] == ["delivered", "queued", "queued"]


async def test_a_promotion_waits_for_a_writer_adding_to_its_conversation(postgres_url):
    """PostgreSQL: a writer queues an event behind a head that is being sent and
    has not committed yet when the head finishes. The promotion waits for it
    (the conversation's sequence row is locked by both), then claims it; had it
    gone on at once, it would have found nothing, and the new event would have
    waited for ever."""
    signer = new_signer()
    async with database(postgres_url) as engine:
        org_id, config_id = await one_conversation(engine, signer, 1)
        async with engine.begin() as conn:
            head = (await conn.execute(select(deliveries.c.id, deliveries.c.conversation_id))).one()
            await conn.execute(update(deliveries).values(status="delivering", worker_id="w"))
        async with engine.connect() as writer:
            await writer.begin()
            await record_event(writer, org_id=org_id, signer=signer, event=SampleFactory(5).message_created(
                org_id=org_id, conversation={"id": head.conversation_id}))

            async def finish_head() -> list:
                async with engine.begin() as conn:
                    await conn.execute(update(deliveries).where(deliveries.c.id == head.id)
                                       .values(status="delivered", worker_id=None))
                    return await promote_and_claim(conn, [(head.id, config_id, head.conversation_id)], "w",
                                                   time.time())

            promotion = asyncio.create_task(finish_head())
            # The promotion waits for the writer: a lock request of this database is seen waiting.
            deadline = time.monotonic() + 10
            while await waiting_lock_requests(engine) == 0:
                assert not promotion.done(), "the promotion went on without waiting for the writer"
                assert time.monotonic() < deadline, "the promotion never waited for a lock"
                await asyncio.sleep(0.02)
            assert not promotion.done()
            await writer.commit()
        claimed = await asyncio.wait_for(promotion, 10)
        assert [row.sequence for row in claimed] == [2]
        assert await status_counts(engine) == {"delivered": 1, "delivering": 1}


@given(st.lists(st.tuples(st.integers(1, 10**6), st.integers(1, 3), st.integers(1, 5)), max_size=40))
def test_one_finished_delivery_per_conversation_stands_for_all(finished):
    chosen = one_per_conversation(finished)
    pairs = [(config, conversation) for _, config, conversation in chosen]
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == {(config, conversation) for _, config, conversation in finished}
    assert set(chosen) <= set(finished)


@pytest.mark.parametrize("hand_back_slice", [1, leases._HAND_BACK_SLICE])
async def test_a_reaped_worker_hands_back_a_head_pending_and_its_follower_queued(db_url, hand_back_slice,
                                                                                  monkeypatch):
    """A promotion claims a conversation's next delivery and its follower for one
    worker; if that worker stops beating, the head is due again and the follower
    waits behind it, so that no two of the conversation can be sent at once
    (however the handed-back ids are sliced into statements)."""
    monkeypatch.setattr(leases, "_HAND_BACK_SLICE", hand_back_slice)
    signer = new_signer()
    async with database(db_url) as engine:
        org_id, config_id = await one_conversation(engine, signer, 4)
        now = time.time()
        async with engine.begin() as conn:
            ids = (await conn.execute(select(deliveries.c.id).order_by(deliveries.c.sequence))).scalars().all()
            conversation = (await conn.execute(select(deliveries.c.conversation_id))).scalars().first()
            await leases.register_worker(conn, worker_id="w1", hostname="h", pid=1, now=now - 60)
            await conn.execute(update(deliveries).where(deliveries.c.id == ids[0]).values(status="delivered"))
            claimed = await promote_and_claim(conn, [(ids[0], config_id, conversation)], "w1", now)
            assert sorted(row.id for row in claimed) == [ids[1], ids[2]]
        async with engine.begin() as conn:
            assert await leases.reap_stalled(conn, now=now, stale_after=15) == 2
            statuses = dict((await conn.execute(select(deliveries.c.id, deliveries.c.status))).all())
        assert [statuses[i] for i in ids] == ["delivered", "pending", "queued", "queued"]


async def test_a_stopped_dispatcher_hands_followers_back_queued_and_order_holds_after(db_url):
    signer = new_signer()
    endpoint = OrderedEndpoint(first_failure_share=0.2, seed=11)
    async with endpoint.serving() as url, database(db_url) as engine:
        org_id = await add_organization(engine)
        await add_configuration(engine, org_id, url)
        await add_conversation_events(engine, signer, org_id, 300, 20)
        async with dispatching(engine, signer):
            await rows_when(engine, lambda rows: sum(r.status == "delivered" for r in rows) >= 60)
        rows = await rows_when(engine, lambda rows: True)
        under_way = defaultdict(list)
        for row in rows:
            if row.status in ("pending", "delivering", "held"):
                under_way[row.conversation_id].append(row.status)
        assert under_way and all(statuses == ["pending"] for statuses in under_way.values()), under_way
        assert sum(row.status == "delivered" for row in rows) < 300  # stopped part way
        async with dispatching(engine, signer):
            await rows_when(engine, lambda rows: all(r.status == "delivered" for r in rows))
        async with engine.connect() as conn:
            expected = dict((await conn.execute(select(deliveries.c.conversation_id, func.max(deliveries.c.sequence))
                                                .group_by(deliveries.c.conversation_id))).all())
    for conversation, last in expected.items():
        assert endpoint.accepted[conversation] == list(range(1, last + 1)), conversation
    assert endpoint.overlaps == 0


async def test_ordering_reaches_a_receiver_under_another_vendor_prefix(sqlite_url, tmp_path):
    """The platform names its headers from its vendor prefix, and so does the
    receiver (contract.headers): with ``X-Acme`` on both ends, every event
    arrives signed under ``X-Acme-Signature-v1`` and keeps its place in its
    conversation (``X-Acme-Sequence``), in order, over real sockets."""
    from tests.test_receiver_helpers import ServedReceiver
    from tidings.apps.receiver_service import ReceiverConfig
    from tidings.contract.signing import Signer, generate_private_key, public_key_pem
    from tidings.platform.workers import build_dispatcher

    signer = Signer(generate_private_key(), vendor_prefix="X-Acme")
    config = ReceiverConfig(db_url=f"sqlite:///{tmp_path / 'receiver.db'}", any_org=True, vendor_prefix="X-Acme",
                            public_keys=[public_key_pem(signer.private_key.public_key()).decode()])
    with ServedReceiver(config) as served:
        async with database(sqlite_url) as engine:
            org_id = await add_organization(engine)
            await add_configuration(engine, org_id, served.url + "/webhook")
            await add_conversation_events(engine, signer, org_id, 30, 3)
            dispatcher = build_dispatcher(engine, signer, fast_settings(vendor_prefix="X-Acme"))
            await asyncio.wait_for(dispatcher.run_until_idle(), 60)
            assert dispatcher.stats.delivered == 30
        stored = served.service.log.events_after(0, 100)
    assert len(stored) == 30
    arrived = defaultdict(list)
    for event in stored:
        arrived[event.conversation_id].append(event.sequence)
    assert len(arrived) == 3
    for sequences in arrived.values():
        assert sequences == list(range(1, len(sequences) + 1))  # none lost to the header's name, in order
