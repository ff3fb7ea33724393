"""The dispatcher's claim through its real statements (``DeliveryCycle.claim``
of each engine): which deliveries it takes, in which order, and on
PostgreSQL how concurrent claimers share the rows without waiting."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select, text, update

from tests.dispatcher_support import add_configuration, add_events, add_organization, database, new_signer
from tidings.platform.deliveries.cycle import cycle_of
from tidings.store.platform_tables import deliveries

pytestmark = pytest.mark.timeout(60)

LOCK_WAIT = "2s"  # a claim that waits for a lock fails after this instead of hanging


async def pending_with_dues(engine, count: int) -> tuple[list[int], float]:
    """``count`` pending deliveries whose due times run against their ids: the
    highest id is due first, so that id order and due order disagree."""
    signer = new_signer()
    org_id = await add_organization(engine)
    await add_configuration(engine, org_id, "http://127.0.0.1:9/never")
    await add_events(engine, signer, org_id, count)
    now = time.time()
    async with engine.begin() as conn:
        ids = list((await conn.execute(select(deliveries.c.id).order_by(deliveries.c.id))).scalars())
        for rank, delivery_id in enumerate(ids):
            await conn.execute(update(deliveries).where(deliveries.c.id == delivery_id)
                               .values(next_attempt_at=now - 100 + rank * -1.0))
    return ids, now


def oldest_due_first(ids: list[int]) -> list[int]:
    return list(reversed(ids))


async def claim(conn, worker_id: str, now: float, limit: int):
    """The cycle's claim on the engine of ``conn``: what it claimed, the next due time, bodies, configurations."""
    return await cycle_of(conn).claim(conn, worker_id=worker_id, now=now, limit=limit, promoted=[])


async def test_a_claim_takes_the_oldest_due_first_not_the_lowest_id(db_url):
    """Killed by the mutation "claim in id order" (``ORDER BY id`` instead of ``ORDER BY next_attempt_at``)."""
    async with database(db_url) as engine:
        ids, now = await pending_with_dues(engine, 6)
        taken = []
        for _ in ids:  # one at a time: each claim must take the oldest due still pending
            async with engine.begin() as conn:
                claimed = (await claim(conn, "w", now, 1)).claimed
            taken += [row.id for row in claimed]
        assert taken == oldest_due_first(ids)
        async with engine.begin() as conn:
            assert (await claim(conn, "w", now, 5)).claimed == []


async def test_a_claim_fills_its_limit_with_the_oldest_due(db_url):
    """Killed by the mutation "claim in id order": the cycle's claim of 3 out of 7 takes the 3 due first."""
    async with database(db_url) as engine:
        ids, now = await pending_with_dues(engine, 7)
        async with engine.begin() as conn:
            cycle = await claim(conn, "w", now, 3)
        assert sorted(row.id for row in cycle.claimed) == sorted(oldest_due_first(ids)[:3])
        assert set(cycle.bodies) == {row.event_id for row in cycle.claimed}
        assert cycle.due is None  # it took all it could: the next due time is not asked for
        async with engine.begin() as conn:
            rest = await claim(conn, "w", now, 10)
        assert sorted(row.id for row in rest.claimed) == sorted(oldest_due_first(ids)[3:])
        async with engine.connect() as conn:
            statuses = (await conn.execute(select(deliveries.c.status, deliveries.c.worker_id))).all()
        assert set(statuses) == {("delivering", "w")}


async def test_claim_leaves_deliveries_that_are_not_due_or_not_pending(db_url):
    async with database(db_url) as engine:
        ids, now = await pending_with_dues(engine, 4)
        async with engine.begin() as conn:
            await conn.execute(update(deliveries).where(deliveries.c.id == ids[0]).values(next_attempt_at=now + 60))
            await conn.execute(update(deliveries).where(deliveries.c.id == ids[1]).values(status="held"))
            claimed = (await claim(conn, "w", now, 10)).claimed
        assert sorted(row.id for row in claimed) == sorted(ids[2:])


# ---------------------------------------------------------------- PostgreSQL: SKIP LOCKED


async def bounded(conn) -> None:
    """A claim in this transaction fails after LOCK_WAIT rather than wait for a locked row."""
    await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'"))
    await conn.execute(text("SET LOCAL statement_timeout = '5s'"))


async def test_postgresql_claim_skips_a_row_another_transaction_holds_locked(postgres_url):
    """Killed by the mutations "drop SKIP LOCKED" and "drop FOR UPDATE SKIP LOCKED": the claim then
    waits for the locked row and runs into the lock timeout."""
    async with database(postgres_url) as engine:
        ids, now = await pending_with_dues(engine, 5)
        oldest = oldest_due_first(ids)[0]
        async with engine.connect() as holder:
            await holder.begin()
            locked = (await holder.execute(select(deliveries.c.id).where(deliveries.c.id == oldest)
                                           .with_for_update())).scalar_one()
            assert locked == oldest
            started = time.monotonic()
            async with engine.begin() as conn:
                await bounded(conn)
                claimed = (await claim(conn, "w", now, 5)).claimed
            assert time.monotonic() - started < 2.0  # it did not wait for the lock
            assert sorted(row.id for row in claimed) == sorted(set(ids) - {oldest})
            await holder.rollback()
        async with engine.begin() as conn:
            await bounded(conn)
            assert [row.id for row in (await claim(conn, "w2", now, 5)).claimed] == [oldest]


async def test_postgresql_concurrent_claimers_take_disjoint_sets_without_waiting(postgres_url):
    """Four claimers, each in its own open transaction at the same time, take
    different rows and together all of them. Killed by the mutations "drop
    SKIP LOCKED" and "drop FOR UPDATE SKIP LOCKED" (a claimer waits for
    another's rows and runs into the lock timeout, or takes the same rows)."""
    async with database(postgres_url) as engine:
        ids, now = await pending_with_dues(engine, 12)
        claimers = 4
        all_claimed = asyncio.Event()
        done = []

        async def claimer(name: str) -> list[int]:
            async with engine.begin() as conn:
                await bounded(conn)
                cycle = await claim(conn, name, now, 3)
                claimed = [row.id for row in cycle.claimed]
                done.append(name)
                if len(done) == claimers:
                    all_claimed.set()
                # every transaction stays open until all have claimed: the claims overlap for sure
                await asyncio.wait_for(all_claimed.wait(), 10)
            return claimed

        sets = await asyncio.wait_for(asyncio.gather(*(claimer(f"w{n}") for n in range(claimers))), 30)
        assert all(len(claimed) == 3 for claimed in sets)
        flat = [delivery_id for claimed in sets for delivery_id in claimed]
        assert len(flat) == len(set(flat)) == len(ids)  # disjoint, and every row taken once
        async with engine.connect() as conn:
            owners = dict((await conn.execute(select(deliveries.c.id, deliveries.c.worker_id))).all())
        for n, claimed in enumerate(sets):
            assert {owners[delivery_id] for delivery_id in claimed} == {f"w{n}"}
