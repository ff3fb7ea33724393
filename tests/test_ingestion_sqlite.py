"""On SQLite the ingestion's writer runs its statements on the sqlite3
connection (``store.sqlite``), the async path through SQLAlchemy: the same
batches must leave the same rows, stored byte for byte the same, and the
same outcomes. Each example starts two copies of one database."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from datetime import UTC, datetime
from unittest import mock

import pytest
from sqlalchemy import insert
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dispatcher_support import add_configuration
from tests.platform_support import create_schema
from tidings.contract.signing import Signer, generate_private_key
from tidings.platform import ingestion, tenants
from tidings.platform.deliveries import outbox
from tidings.platform.ingestion import ChannelMessage, IncomingMessage, IngestResult, ingest_batch, new_conversation_row
from tidings.platform.sodium import sodium_signer
from tidings.store.engine import create_engine, create_sync_engine
from tidings.store.platform_tables import conversations
from tidings.store import sqlite as store_sqlite
from tidings.store.sqlite import driver_sqlite

NOW = datetime(2026, 12, 7, 16, 0, 0, 123456, tzinfo=UTC)
TABLES = {  # what is compared, in a fixed order; webhook ids are random by design
    "conversations": "*", "messages": "*", "events": "*", "delivery_sequences": "*",
    "deliveries": "id, event_id, webhook_config_id, org_id, signature, conversation_id, sequence, status, "
                  "attempt_count, next_attempt_at, worker_id, is_tryout, created_at, finished_at",
}
SIGNER = sodium_signer(Signer(generate_private_key()))


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A database with two organizations, each with a business and a
    channel; A's configuration orders by conversation, B's is paused and
    unordered. Its file, and per organization the ids to post with."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    url = f"sqlite:///{path}"
    create_schema(url)

    async def fill():
        engine = create_engine(url)
        found = []
        for name in ("A", "B"):
            async with engine.begin() as conn:
                org_id, _ = await tenants.create_organization(conn, name)
                business_id = await tenants.create_business(conn, org_id, f"{name} shop")
                channel_id = await tenants.create_custom_channel(conn, org_id, f"{name} chat", icon="i.png")
            config_id = await add_configuration(engine, org_id, f"https://hooks.example.com/{name}")
            found.append((org_id, business_id, channel_id))
        org_id, business_id, channel_id = found[0]
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"UPDATE webhook_configs SET paused = 1, ordering = 'none' WHERE id = {config_id}")
            # A's conversation c3 exists without a message yet: its first message sets its date.
            await conn.execute(insert(conversations).values(
                new_conversation_row(ChannelMessage(org_id, channel_id, IncomingMessage(
                    business_id=business_id, external_conversation_id="c3", external_message_id="-", content="")),
                    NOW) | {"first_message_date": None}))
        await engine.dispose()
        return found

    return path, asyncio.run(fill())


messages_of = st.lists(st.tuples(
    st.sampled_from([0, 1]),  # the organization posting
    st.sampled_from(["c1", "c2", "c3"]),  # external conversation
    st.sampled_from(["m1", "m2", "m3", "m4", "m5"]),  # external message: repeats are duplicates
    st.sampled_from(["Consumer", "User", "Bot"]),  # Bot is refused
    st.booleans(),  # posted for the other organization's business: refused
    st.none() | st.sampled_from(["Ann", "Bob"]),
), min_size=1, max_size=6)


def batch_of(ids, items) -> list[ChannelMessage]:
    batch = []
    for org, conversation, external, sender, foreign, name in items:
        org_id, _, channel_id = ids[org]
        business_id = ids[1 - org if foreign else org][1]
        batch.append(ChannelMessage(org_id, channel_id, IncomingMessage(
            business_id=business_id, external_conversation_id=conversation, external_message_id=external,
            content=f"{external} in {conversation}", sender_type=sender, consumer_name=name)))
    return batch


def outcome(result) -> tuple:
    return (type(result).__name__, *((result.message_id, result.conversation_id, result.duplicate)
                                     if isinstance(result, IngestResult) else (str(result),)))


def stored(path) -> dict[str, list[tuple]]:
    with sqlite3.connect(path) as db:
        return {table: db.execute(f"SELECT {columns} FROM {table} ORDER BY 1, 2").fetchall()
                for table, columns in TABLES.items()}


def on_driver(path, batches) -> list:
    engine = create_sync_engine(f"sqlite:///{path}")
    outcomes = []
    try:
        for batch in batches:
            with engine.begin() as conn:
                assert driver_sqlite(conn) is not None
                outcomes.append([outcome(result) for result in ingest_batch(conn, SIGNER, batch)])
    finally:
        engine.dispose()
    return outcomes


async def through_sqlalchemy(path, batches) -> list:
    engine = create_engine(f"sqlite:///{path}")
    outcomes = []
    try:
        for batch in batches:
            async with engine.begin() as conn:
                outcomes.append([outcome(result) for result in await conn.run_sync(ingest_batch, SIGNER, batch)])
    finally:
        await engine.dispose()
    return outcomes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(messages_of, min_size=1, max_size=4))
def test_the_driver_path_stores_what_sqlalchemy_stores(template, tmp_path, items):
    path, ids = template
    batches = [batch_of(ids, batch) for batch in items]
    paths = []
    for name in ("driver", "sqlalchemy"):
        paths.append(tmp_path / f"{name}.db")
        shutil.copyfile(path, paths[-1])
    # A few parameters to a statement, so that the driver path's inserts split into many.
    with mock.patch.object(ingestion, "utcnow", lambda: NOW), mock.patch.object(outbox, "utcnow", lambda: NOW), \
            mock.patch.object(outbox.time, "time", lambda: 1_800_000_000.5), \
            mock.patch.object(store_sqlite, "MAX_PARAMETERS", 30):
        driver = on_driver(paths[0], batches)
        core = asyncio.run(through_sqlalchemy(paths[1], batches))
    assert driver == core
    assert stored(paths[0]) == stored(paths[1])
    assert any(kind == "IngestResult" for batch in driver for kind, *_ in batch) or not any(
        sender != "Bot" and not foreign for batch in items for _, _, _, sender, foreign, _ in batch)
