"""Lookups that grow with the data must be index seeks, on SQLite too.

SQLite answers ``(a, b) IN ((?, ?), ...)`` by scanning a whole index, so a
message took longer to ingest the more messages were stored
(``tidings.store.pairs``). These tests record every SELECT that ingestion,
the outbox and the dashboard's head lookup issue, and ask SQLite for its plan.
"""

from __future__ import annotations

import re
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import event

from tests.platform_support import running_platform
from tidings.platform.deliveries.reads import conversation_heads
from tidings.platform.ingestion import ChannelMessage, IncomingMessage, ingest_batch, ingest_messages
from tidings.store.engine import create_sync_engine, url_of
from tidings.store.pairs import by_first
from tidings.store.sqlite import driver_sqlite

HOOK = "https://hooks.example.com/tidings"
GROWING_TABLES = ("messages", "conversations", "deliveries", "events")


def full_scans(plan_rows) -> list[str]:
    """The plan's steps that read a growing table whole."""
    return [detail for *_, detail in plan_rows
            if re.match(rf"SCAN ({'|'.join(GROWING_TABLES)})\b", detail)]


@pytest.fixture
async def platform(sqlite_url):
    async with running_platform(sqlite_url) as running:
        yield running


async def test_ingestion_and_head_lookups_seek_instead_of_scanning(platform):
    a, b = await platform.tenant("A"), await platform.tenant("B")
    config_ids = []
    for tenant in (a, b):
        async with platform.client() as client:
            answer = await client.post("/v2/webhooks", headers=tenant.headers,
                                       json={"items": [{"url": HOOK, "event_type": "message_created"}]})
        assert answer.status_code == 200, answer.text
        config_ids.append(answer.json()["items"][0]["id"])
    selects: list[tuple[str, tuple]] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and not executemany:
            selects.append((statement, tuple(parameters)))

    event.listen(platform.engine.sync_engine, "before_cursor_execute", record)
    try:
        batch = [ChannelMessage(t.org_id, t.channel_id, IncomingMessage(
            business_id=t.business_id, external_conversation_id=f"c{i % 3}", external_message_id=f"m{i}",
            content="hello")) for t in (a, b) for i in range(6)]
        async with platform.engine.begin() as conn:
            await ingest_messages(conn, platform.signer, batch)
            await ingest_messages(conn, platform.signer, batch[:4])  # duplicates: the stored-message lookup finds rows
            await conversation_heads(conn, a.org_id, [(config_ids[0], 1), (config_ids[0], 2), (config_ids[1], 3)])
    finally:
        event.remove(platform.engine.sync_engine, "before_cursor_execute", record)

    assert any("messages" in sql for sql, _ in selects) and any("deliveries" in sql for sql, _ in selects)
    database = sqlite3.connect(platform.engine.url.database)
    scans = {sql: full_scans(database.execute("EXPLAIN QUERY PLAN " + sql, parameters).fetchall())
             for sql, parameters in selects}
    database.close()
    assert {sql: steps for sql, steps in scans.items() if steps} == {}


def test_the_row_value_form_is_the_scan_this_avoids(tmp_path):
    """The check above can fail: SQLite's plan for ``(a, b) IN (...)`` is a full scan."""
    connection = sqlite3.connect(tmp_path / "plan.db")
    connection.execute("CREATE TABLE messages (a TEXT, b TEXT, id INTEGER PRIMARY KEY, UNIQUE (a, b))")
    plan = connection.execute("EXPLAIN QUERY PLAN SELECT id FROM messages WHERE (a, b) IN ((?, ?), (?, ?))",
                              ("x", "1", "x", "2")).fetchall()
    assert full_scans(plan)
    seek = connection.execute("EXPLAIN QUERY PLAN SELECT id FROM messages WHERE a = ? AND b IN (?, ?)",
                              ("x", "1", "2")).fetchall()
    assert not full_scans(seek)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 50)), max_size=40))
def test_grouping_keeps_every_pair_and_adds_none(pairs):
    grouped = by_first(pairs)
    assert {(first, second) for first, seconds in grouped.items() for second in seconds} == set(pairs)
    assert all(seconds == sorted(set(seconds)) for seconds in grouped.values())



async def test_the_writers_sqlite3_statements_seek_instead_of_scanning(platform):
    """The ingestion's writer runs its statements on the sqlite3 connection
    (``store.sqlite``): every SELECT it sends, traced by sqlite3 itself."""
    a = await platform.tenant("A")
    async with platform.client() as client:
        answer = await client.post("/v2/webhooks", headers=a.headers,
                                   json={"items": [{"url": HOOK, "event_type": "message_created"}]})
    assert answer.status_code == 200, answer.text
    selects: list[str] = []
    engine = create_sync_engine(url_of(platform.engine))
    try:
        batch = [ChannelMessage(a.org_id, a.channel_id, IncomingMessage(
            business_id=a.business_id, external_conversation_id=f"c{i % 3}", external_message_id=f"m{i}",
            content="hello")) for i in range(10)]
        # Then duplicates (the lookups find rows) and more in the same conversations (their order is looked up).
        for messages in (batch[:6], batch[:3] + batch[6:]):
            with engine.begin() as conn:
                db = driver_sqlite(conn)
                db.set_trace_callback(lambda sql: selects.append(sql) if sql.lstrip().upper().startswith(
                    ("SELECT", "WITH")) else None)
                try:
                    ingest_batch(conn, platform.signer, messages)
                finally:
                    db.set_trace_callback(None)
    finally:
        engine.dispose()

    assert any("messages" in sql for sql in selects) and any("deliveries" in sql for sql in selects)
    database = sqlite3.connect(platform.engine.url.database)
    scans = {sql: full_scans(database.execute("EXPLAIN QUERY PLAN " + sql).fetchall()) for sql in selects}
    database.close()
    assert {sql: steps for sql, steps in scans.items() if steps} == {}
