"""Every SQL statement of the delivery log, named and described.

A delivery moves through these states::

    pending --claim--> delivering --finish--> delivered | failed
       ^                   |
       +----reschedule-----+   (a retry, or handed back unsent)
       +----reap stalled---+   (its worker stopped beating)
    held <--pause / resume--> pending   (the configuration is paused)
    delivered | failed --resend / recover--> pending (or held while paused)
    queued --promote--> pending, or --promote and claim--> delivering
                  (ordered delivery: the one before it finished)
    delivering --hand back--> queued   (a follower whose head was not delivered)

Ordered delivery (a configuration's ``ordering`` is ``"conversation"``): of
the deliveries of one configuration and conversation, at most one is
``pending``, ``delivering`` or ``held`` at a time (the head), but for its
follower (below); the others wait ``queued`` in sequence order. When the
head finishes, the next is promoted in the same transaction and claimed at
once by the worker that finished it, together with the one behind it, its
follower (``PROMOTED_PER_CONVERSATION``): that worker sends the follower
once the head is delivered, and otherwise hands it back ``queued``; a
stalled worker's follower goes back ``queued`` too (``_hand_back``). So one
worker at a time sends a conversation's deliveries, one after the other, and
the claim itself never looks at ordering: it stays one statement over
``pending`` rows, on both engines.

Rules every statement here keeps:

- The claim is one statement per engine, and its filter matches the partial
  index ``ix_deliveries_due`` (``status = 'pending'``, ordered by
  ``next_attempt_at``). The status is written as a literal, not a bound
  parameter, so that SQLite and PostgreSQL's generic plans can use that index.
- Every status change names the status it expects in its ``WHERE`` clause (and
  for ``delivering``, the worker that holds it). Zero rows updated means that
  someone else owns the row now: callers handle it and never overwrite.
- Stalled work is found by worker heartbeat (table ``workers``), never by age.

Writes that follow one claimed batch are batched too: ``executemany`` on
SQLite; on PostgreSQL one statement over arrays (``unnest``), since there an
``executemany`` is one execution per row on the server. On SQLite the
dispatcher's statements are plain sqlite3 calls, run in the driver's thread,
a whole half cycle in one call (section "SQLite: statements in the driver's
thread", which says why); on PostgreSQL they are SQLAlchemy statements.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson
from sqlalchemy import (and_, bindparam, delete, exists, func, insert, literal_column, or_, select, text,
                        update)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from tidings.platform.outbox import HELD, ORDERED, PENDING, QUEUED
from tidings.store.platform_tables import attempts, deliveries, delivery_sequences, events, webhook_configs, workers


DELIVERING = "delivering"
DELIVERED = "delivered"
FAILED = "failed"
FINAL_STATUSES = (DELIVERED, FAILED)
STATUSES = (PENDING, HELD, DELIVERING, DELIVERED, FAILED, QUEUED)
HEAD_STATUSES = (PENDING, DELIVERING, HELD)  # the one delivery of a conversation that may be sent


def _status_is(status: str):
    """``deliveries.status = '<status>'`` with the value inline (see the module's rules)."""
    assert status in STATUSES
    return deliveries.c.status == literal_column(f"'{status}'")


def _held_by(worker_id: str):
    return and_(_status_is(DELIVERING), deliveries.c.worker_id == worker_id)

CLAIMED_COLUMNS = (
    deliveries.c.id, deliveries.c.event_id, deliveries.c.webhook_config_id, deliveries.c.org_id,
    deliveries.c.webhook_id, deliveries.c.signature, deliveries.c.conversation_id, deliveries.c.sequence,
    deliveries.c.attempt_count, deliveries.c.is_tryout,
)


# ---------------------------------------------------------------- the dispatcher's statements


async def claim_due(conn: AsyncConnection, *, worker_id: str, now: float, limit: int, postgres: bool) -> list[Row]:
    """Claim: up to ``limit`` due deliveries, oldest due first, become ``delivering`` by ``worker_id``.

    One statement per engine. PostgreSQL::

        WITH due AS MATERIALIZED (SELECT id ... FOR UPDATE SKIP LOCKED LIMIT n)
        UPDATE deliveries ... FROM due WHERE deliveries.id = due.id RETURNING ...

    so that concurrent workers take different rows without waiting for each
    other. The candidates are a materialized CTE rather than ``id IN (SELECT
    ...)``: PostgreSQL may run an ``IN`` subquery more than once (measured
    here: a claim of 1 took 2 rows), which would claim past the limit.
    SQLite has no SKIP LOCKED and needs none: ``UPDATE ... WHERE id IN
    (SELECT ... LIMIT n) RETURNING ...`` (``_CLAIM_SQLITE``) runs in a write
    transaction, and SQLite runs those one at a time.
    """
    if not postgres:
        return await in_sqlite_thread(conn, _sqlite_claim_due, worker_id, now, limit)
    due = (select(deliveries.c.id)
           .where(_status_is(PENDING), deliveries.c.next_attempt_at <= now)
           .order_by(deliveries.c.next_attempt_at)
           .limit(limit))
    candidates = due.with_for_update(skip_locked=True).cte("due").prefix_with("MATERIALIZED")
    claim = (update(deliveries)
             .where(deliveries.c.id == candidates.c.id, _status_is(PENDING))
             .values(status=DELIVERING, worker_id=worker_id)
             .returning(*CLAIMED_COLUMNS))
    return list((await conn.execute(claim)).all())


async def load_bodies(conn: AsyncConnection, event_ids: Sequence[int]) -> dict[int, bytes]:
    """The frozen bodies of events, by event id."""
    rows = await conn.execute(select(events.c.id, events.c.body).where(events.c.id.in_(list(set(event_ids)))))
    return {row.id: row.body for row in rows}


async def load_configurations(conn: AsyncConnection, config_ids: Sequence[int]) -> dict[int, Row]:
    """What sending needs of configurations, as they are now (URL, secrets,
    custom headers, paused), by id: read once per claimed batch."""
    rows = await conn.execute(
        select(webhook_configs.c.id, webhook_configs.c.url, webhook_configs.c.secret,
               webhook_configs.c.previous_secret, webhook_configs.c.previous_secret_expires_at,
               webhook_configs.c.custom_headers, webhook_configs.c.paused)
        .where(webhook_configs.c.id.in_(list(set(config_ids)))))
    return {row.id: row for row in rows}


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One attempt as recorded in ``attempts``."""

    delivery_id: int
    number: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    response_excerpt: str | None
    error: str | None
    request_headers: Mapping[str, str]
    worker_id: str | None


def _sqlite_datetime(value: datetime | None) -> str | None:
    """A UTC datetime as ``UTCDateTime`` stores it on SQLite (SQLAlchemy's format)."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


# On SQLite the rows of a batch go to the driver's executemany as tuples:
# SQLAlchemy's per-row parameter processing (two datetimes, a JSON column)
# was about a tenth of the dispatcher's CPU (py-spy, 40,000 deliveries).
_RECORD_ATTEMPTS_SQLITE = (
    "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status_code, response_excerpt, error, "
    "request_headers, worker_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")

# On PostgreSQL the rows of a batch go as one array per column, in one
# statement: an ``executemany`` there is one execution per row on the server
# (asyncpg pipelines them, but each is planned and run alone). Measured with
# a transport that answers at once, 30,000 deliveries: the attempts' insert
# took 49.5 us per delivery as ``executemany``, the results' update 70.7 us.
_record_attempts_pg = text("""
INSERT INTO attempts (delivery_id, number, started_at, duration_ms, status_code, response_excerpt, error,
                      request_headers, worker_id)
SELECT a.delivery_id, a.number, a.started_at, a.duration_ms, a.status_code, a.response_excerpt, a.error,
       CAST(a.request_headers AS JSON), a.worker_id
FROM unnest(CAST(:delivery_ids AS BIGINT[]), CAST(:numbers AS INTEGER[]), CAST(:started AS TIMESTAMPTZ[]),
            CAST(:durations AS DOUBLE PRECISION[]), CAST(:codes AS INTEGER[]), CAST(:excerpts AS VARCHAR[]),
            CAST(:errors AS VARCHAR[]), CAST(:headers AS TEXT[]), CAST(:workers AS VARCHAR[]))
     AS a(delivery_id, number, started_at, duration_ms, status_code, response_excerpt, error, request_headers,
          worker_id)
""")


async def record_attempts(conn: AsyncConnection, rows: Sequence[AttemptRow]) -> None:
    """Record attempts (one statement). Attempts are facts: they are
    recorded even for a delivery whose lease was lost meanwhile."""
    if rows and conn.dialect.name == "postgresql":
        await conn.execute(_record_attempts_pg, {
            "delivery_ids": [r.delivery_id for r in rows], "numbers": [r.number for r in rows],
            "started": [r.started_at for r in rows], "durations": [r.duration_ms for r in rows],
            "codes": [r.status_code for r in rows], "excerpts": [r.response_excerpt for r in rows],
            "errors": [r.error for r in rows],
            "headers": [orjson.dumps(r.request_headers).decode() for r in rows],
            "workers": [r.worker_id for r in rows]})
    elif rows:
        await in_sqlite_thread(conn, _sqlite_executemany, _RECORD_ATTEMPTS_SQLITE, _sqlite_attempts(rows))


async def still_held(conn: AsyncConnection, *, worker_id: str, delivery_ids: Sequence[int], postgres: bool) -> set[int]:
    """Which of ``delivery_ids`` are still ``delivering`` by ``worker_id``; on
    PostgreSQL they stay locked until the transaction ends, so that the
    guarded updates that follow cannot miss. (On SQLite the transaction
    already holds the write lock: call this after a write.)"""
    if not delivery_ids:
        return set()
    if not postgres:
        return await in_sqlite_thread(conn, _sqlite_still_held, worker_id, delivery_ids)
    query = select(deliveries.c.id).where(deliveries.c.id.in_(list(delivery_ids)), _held_by(worker_id)).with_for_update()
    return set((await conn.execute(query)).scalars())


@dataclass(frozen=True, slots=True)
class ResultRow:
    """The state an attempt leaves its delivery in: ``pending`` again (a
    retry, at ``next_attempt_at``), ``delivered`` or ``failed``. The
    configuration and conversation, as claimed, say whose turn comes next."""

    delivery_id: int
    status: str
    attempt_count: int
    next_attempt_at: float
    last_status_code: int | None
    last_error: str | None
    finished_at: datetime | None
    webhook_config_id: int | None = None
    conversation_id: int | None = None


_APPLY_RESULTS_SQLITE = (
    "UPDATE deliveries SET status = ?, attempt_count = ?, next_attempt_at = ?, last_status_code = ?, "
    "last_error = ?, finished_at = ?, worker_id = NULL WHERE id = ? AND status = 'delivering' AND worker_id = ?")


_apply_results_pg = text("""
UPDATE deliveries SET status = r.status, attempt_count = r.attempt_count, next_attempt_at = r.next_attempt_at,
       last_status_code = r.last_status_code, last_error = r.last_error, finished_at = r.finished_at,
       worker_id = NULL
FROM unnest(CAST(:ids AS BIGINT[]), CAST(:statuses AS VARCHAR[]), CAST(:attempt_counts AS INTEGER[]),
            CAST(:nexts AS DOUBLE PRECISION[]), CAST(:codes AS INTEGER[]), CAST(:errors AS VARCHAR[]),
            CAST(:finished AS TIMESTAMPTZ[]), CAST(:expected AS VARCHAR[]), CAST(:workers AS VARCHAR[]))
     AS r(id, status, attempt_count, next_attempt_at, last_status_code, last_error, finished_at, expected, worker)
WHERE deliveries.id = ANY(CAST(:ids AS BIGINT[])) AND deliveries.id = r.id
  AND deliveries.status = r.expected AND deliveries.worker_id = r.worker
RETURNING deliveries.id
""")
# The guard (``delivering`` by this worker) is compared with columns of the
# arrays, not with constants, and the rows are found by ``id = ANY``: the
# statistics, taken while nothing was being sent, say that such rows are
# all but absent, and with constants PostgreSQL scanned the table for them
# and joined each with every element of the arrays (3.1 s for 2,000 rows at
# 30,000 deliveries). This way it reads each row by its primary key
# (27 to 46 us per row, the update included).


async def apply_results(conn: AsyncConnection, *, worker_id: str, rows: Sequence[ResultRow], now: float,
                        postgres: bool) -> list[Row]:
    """Finish or reschedule deliveries after their attempts (one statement),
    each guarded by ``delivering`` and ``worker_id``; then, for each ordered
    conversation whose head finished, the next delivery is promoted and
    claimed by ``worker_id`` at once (``promote_and_claim``). Call
    ``still_held`` first, in the same transaction, and pass only the rows it
    returned. Returns the deliveries claimed so (as ``claim_due`` does)."""
    if not rows:
        return []
    if not postgres:
        return await in_sqlite_thread(conn, _sqlite_apply_results, worker_id, _sqlite_results(rows, worker_id),
                                      rows, now)
    return (await apply_held_results(conn, worker_id=worker_id, rows=rows, now=now))[1]


async def apply_held_results(conn: AsyncConnection, *, worker_id: str, rows: Sequence[ResultRow],
                             now: float) -> tuple[set[int], list[Row]]:
    """PostgreSQL: ``apply_results`` without ``still_held`` first. The guarded
    update says which rows this worker still held (``RETURNING``): a row
    another worker changed meanwhile is waited for, then fails the guard.
    Returns those ids, and the deliveries claimed by promotion.

    ``still_held``'s ``SELECT ... FOR UPDATE`` wrote a lock into every row
    before the update wrote it again: bench/dispatch.py on PostgreSQL, 60,000
    deliveries, it took 16 ms of each 185 ms cycle, and the server's work is
    what limits there."""
    if not rows:
        return set(), []
    held = set((await conn.execute(_apply_results_pg, {
        "ids": [r.delivery_id for r in rows], "statuses": [r.status for r in rows],
        "attempt_counts": [r.attempt_count for r in rows], "nexts": [r.next_attempt_at for r in rows],
        "codes": [r.last_status_code for r in rows], "errors": [r.last_error for r in rows],
        "finished": [r.finished_at for r in rows], "expected": [DELIVERING] * len(rows),
        "workers": [worker_id] * len(rows)})).scalars())
    finished = _finished_in_conversations([r for r in rows if r.delivery_id in held])
    return held, await promote_and_claim(
        conn, [(r.delivery_id, r.webhook_config_id, r.conversation_id) for r in finished], worker_id=worker_id,
        now=now, postgres=True)


_other = deliveries.alias("other")


def _of_conversation(table):
    # Bound, not correlated: each subquery runs once per statement, an index
    # seek on ix_deliveries_order, however many deliveries wait behind it.
    return and_(table.c.webhook_config_id == bindparam("b_config"),
                table.c.conversation_id == bindparam("b_conversation"))


def _same_conversation(table, as_):
    return and_(table.c.webhook_config_id == as_.c.webhook_config_id, table.c.conversation_id == as_.c.conversation_id)


def _is_head_status(table):
    return table.c.status.in_([literal_column(f"'{status}'") for status in HEAD_STATUSES])


_promote_head = (
    update(deliveries)
    .where(
        _of_conversation(deliveries),
        _status_is(QUEUED),
        # the lowest sequence still waiting...
        deliveries.c.sequence == select(func.min(_other.c.sequence))
        .where(_of_conversation(_other), _other.c.status == literal_column(f"'{QUEUED}'"))
        .scalar_subquery(),
        # ...and nothing of the conversation being sent or due (a re-sent one, say)
        ~exists().where(_of_conversation(_other), _is_head_status(_other)),
    )
    .values(status=PENDING, next_attempt_at=bindparam("b_now"))
)

# How many deliveries of a conversation a promotion claims: its next one (the
# head) and the one behind it (its follower), both for the worker that
# finished the one before. The worker sends the follower once the head is
# delivered, without waiting for a write cycle, and hands it back ``queued``
# otherwise (Dispatcher._route). With one, a conversation could move by one
# delivery per cycle only: with 1,000 conversations, cycles of 500 deliveries
# against 1,136 without ordering, and 9 to 25 % more CPU per delivery
# (docs/PERFORMANCE.md, "Ordering").
PROMOTED_PER_CONVERSATION = 2


# PostgreSQL: of the finished deliveries' conversations, those whose
# configuration is ordered now, and their sequence rows locked, in one order
# (see promote_and_claim), all in one round trip. A SELECT in WITH runs only
# if read: the count of the locked rows, one value, makes sure it is. The
# ordering as it is now, not as it was at the claim: a configuration switched
# to ordered meanwhile already queues new events behind this one.
_lock_ordered_conversations_pg = text(f"""
WITH ordered AS MATERIALIZED (
    SELECT f.webhook_config_id, f.conversation_id
    FROM unnest(CAST(:configs AS BIGINT[]), CAST(:conversations AS BIGINT[])) AS f(webhook_config_id, conversation_id)
    JOIN webhook_configs AS c ON c.id = f.webhook_config_id
    WHERE c.ordering = '{ORDERED}'),
locked AS MATERIALIZED (
    SELECT s.webhook_config_id FROM delivery_sequences AS s
    WHERE (s.webhook_config_id, s.conversation_id) IN (SELECT * FROM ordered)
    ORDER BY s.webhook_config_id, s.conversation_id
    FOR UPDATE)
SELECT webhook_config_id, conversation_id, (SELECT count(*) FROM locked) AS locked FROM ordered
""")

# One statement for a whole batch of finished heads: for each, the next
# queued deliveries of its conversation (PROMOTED_PER_CONVERSATION of them),
# unless something of the conversation is being sent or due, go straight to
# ``delivering``. Promoting to ``pending`` and claiming afterwards wrote each
# row twice and cost a statement per conversation: measured with a transport
# that answers at once, 30,000 deliveries over 1,000 conversations, 285 us of
# CPU per delivery that way against 179 us without ordering.
#
# On PostgreSQL one index seek on ix_deliveries_order per conversation (a
# LATERAL ... LIMIT), and the finished ids as one array, so that the text, and
# with it asyncpg's prepared statement, is the same every cycle. A seek per
# place (OFFSET 0, 1: what SQLite has, _PROMOTE_AND_CLAIM_SQLITE) with one
# parameter per id took 55 ms of each cycle in bench/ordering.py.
_promote_and_claim_pg = text(f"""
UPDATE deliveries SET status = '{DELIVERING}', worker_id = :worker, next_attempt_at = :now
WHERE deliveries.status = '{QUEUED}' AND deliveries.id IN (
    SELECT next.id
    FROM deliveries AS finished
    CROSS JOIN LATERAL (
        SELECT other.id FROM deliveries AS other
        WHERE other.webhook_config_id = finished.webhook_config_id
          AND other.conversation_id = finished.conversation_id AND other.status = '{QUEUED}'
        ORDER BY other.sequence LIMIT {PROMOTED_PER_CONVERSATION}) AS next
    WHERE finished.id = ANY(CAST(:finished AS BIGINT[]))
      AND NOT EXISTS (SELECT 1 FROM deliveries AS head
                      WHERE head.webhook_config_id = finished.webhook_config_id
                        AND head.conversation_id = finished.conversation_id
                        AND head.status IN ({", ".join(f"'{status}'" for status in HEAD_STATUSES)})))
RETURNING {", ".join(f"deliveries.{column.name}" for column in CLAIMED_COLUMNS)}
""").columns(*CLAIMED_COLUMNS)


def _one_per_conversation(finished: Sequence[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """One finished delivery per (configuration, conversation): whose turn comes
    next depends on the conversation only, and a head and its follower often
    finish in the same cycle."""
    return list({(config_id, conversation_id): (delivery_id, config_id, conversation_id)
                 for delivery_id, config_id, conversation_id in finished}.values())


async def promote_and_claim(conn: AsyncConnection, finished: Sequence[tuple[int, int, int]], *, worker_id: str,
                            now: float, postgres: bool) -> list[Row]:
    """Promote and claim: for each ``(delivery id, configuration, conversation)``
    of an ordered conversation whose delivery finished, the next ``queued`` one
    becomes ``delivering`` by ``worker_id``: it is due now, and claiming it in
    the same write spares writing it twice. Returns the rows claimed (as
    ``claim_due`` does). Conversations of configurations that are not ordered
    are left alone.

    On PostgreSQL the conversations' sequence rows are locked first, in one
    order: a writer adding an event to the same conversation holds that row
    until it commits (``outbox.record_events``), so a promotion never misses
    a delivery that was queued behind the one finishing.
    """
    if not finished:
        return []
    if not postgres:
        return await in_sqlite_thread(conn, _sqlite_promote_finished, finished, worker_id, now)
    finished = _one_per_conversation(finished)
    ordered = {(row.webhook_config_id, row.conversation_id) for row in await conn.execute(
        _lock_ordered_conversations_pg, {"configs": [config_id for _, config_id, _ in finished],
                                         "conversations": [conversation_id for _, _, conversation_id in finished]})}
    promoted = [delivery_id for delivery_id, config_id, conversation_id in finished
                if (config_id, conversation_id) in ordered]
    if not promoted:
        return []
    return list((await conn.execute(_promote_and_claim_pg, {"finished": promoted, "worker": worker_id,
                                                            "now": now})).all())


async def promote_heads(conn: AsyncConnection, *, config_id: int, now: float) -> int:
    """Every conversation of an ordered configuration with nothing being sent
    gets its next ``queued`` delivery promoted (after a recover or a change of
    ordering). Returns how many were promoted."""
    pairs = (await conn.execute(
        select(deliveries.c.conversation_id).where(deliveries.c.webhook_config_id == config_id, _status_is(QUEUED))
        .group_by(deliveries.c.conversation_id))).scalars().all()
    if not pairs:
        return 0
    promoted = await conn.execute(_promote_head, [
        {"b_config": config_id, "b_conversation": conversation_id, "b_now": now} for conversation_id in pairs])
    return promoted.rowcount


async def ordering_changed(conn: AsyncConnection, *, config_id: int, ordering: str, now: float) -> None:
    """A configuration's ordering changed: without ordering nothing waits any
    more; with it, deliveries already due stay due and new ones queue."""
    if ordering != ORDERED:
        await conn.execute(update(deliveries).where(deliveries.c.webhook_config_id == config_id, _status_is(QUEUED))
                           .values(status=PENDING, next_attempt_at=now))


@dataclass(frozen=True, slots=True)
class ReleaseRow:
    """A claimed delivery handed back unsent: ``pending`` at ``next_attempt_at``
    (its endpoint is saturated), ``held`` (its configuration was paused), or
    ``queued`` (a follower whose head was not delivered)."""

    delivery_id: int
    status: str
    next_attempt_at: float


_release_pg = text("""
UPDATE deliveries SET status = r.status, next_attempt_at = r.next_attempt_at, worker_id = NULL
FROM unnest(CAST(:ids AS BIGINT[]), CAST(:statuses AS VARCHAR[]), CAST(:nexts AS DOUBLE PRECISION[]),
            CAST(:expected AS VARCHAR[]), CAST(:workers AS VARCHAR[]))
     AS r(id, status, next_attempt_at, expected, worker)
WHERE deliveries.id = ANY(CAST(:ids AS BIGINT[])) AND deliveries.id = r.id
  AND deliveries.status = r.expected AND deliveries.worker_id = r.worker
""")  # one statement, written as _apply_results_pg (see there why)


async def release(conn: AsyncConnection, *, worker_id: str, rows: Sequence[ReleaseRow]) -> None:
    """Hand claimed deliveries back without an attempt (one statement).
    A row no longer held by ``worker_id`` is left alone: its new owner decides."""
    if rows and conn.dialect.name == "postgresql":
        await conn.execute(_release_pg, {
            "ids": [r.delivery_id for r in rows], "statuses": [r.status for r in rows],
            "nexts": [r.next_attempt_at for r in rows], "expected": [DELIVERING] * len(rows),
            "workers": [worker_id] * len(rows)})
    elif rows:
        await in_sqlite_thread(conn, _sqlite_executemany, _RELEASE_SQLITE, _sqlite_releases(rows, worker_id))


async def next_due_at(conn: AsyncConnection) -> float | None:
    """When the earliest pending delivery falls due (read from ``ix_deliveries_due``)."""
    return (await conn.execute(select(func.min(deliveries.c.next_attempt_at)).where(_status_is(PENDING)))).scalar()


async def any_pending(conn: AsyncConnection) -> bool:
    return bool((await conn.execute(select(exists().where(_status_is(PENDING))))).scalar())


# ---------------------------------------------------------------- SQLite: statements in the driver's thread

# On SQLite each of the dispatcher's statements, and a whole cycle of them
# (``record_cycle``, ``claim_cycle``), is one call to the
# aiosqlite thread that owns the connection, with plain sqlite3 calls and
# little Python in it; parameters are made and rows read in the caller's
# thread. Through SQLAlchemy's adapter each statement was three to four such
# calls, and each call waits for the event loop to come round before the next
# starts: bench/ordering.py, 60,000 deliveries, a cycle of 500 made 36 calls,
# and the SQL took 3.4 s of the 8.7 s the cycles spent waiting for them.
# Running SQLAlchemy itself in that thread was tried and not kept: its Python
# then competed with the event loop for the GIL (CPU per delivery 266 to 274
# us against 174 to 219). Lists of ids go in as one JSON array (``json_each``),
# so that each statement has one text and sqlite3 prepares it once.

async def in_sqlite_thread(conn: AsyncConnection, statements, /, *args):
    """``statements(sqlite3_connection, *args)`` in one call to the aiosqlite
    thread of ``conn``: inside ``conn``'s transaction (the same sqlite3
    connection), committed or rolled back with it. aiosqlite has no public way
    to run a function in its thread: this relies on ``Connection._execute``
    and ``Connection._conn`` (aiosqlite 0.20 to 0.22; the suite fails at once
    if they go)."""
    driver = (await conn.get_raw_connection()).driver_connection  # aiosqlite.Connection
    return await driver._execute(statements, driver._conn, *args)


_CLAIMED_SQL = ", ".join(column.name for column in CLAIMED_COLUMNS)
# A claimed delivery as SQLite gives it (``is_tryout`` is 0 or 1), read by name as a Row is.
ClaimedRow = namedtuple("ClaimedRow", [column.name for column in CLAIMED_COLUMNS])
ConfigurationRow = namedtuple("ConfigurationRow", "id url secret previous_secret previous_secret_expires_at "
                                                  "custom_headers paused")

_CLAIM_SQLITE = (
    f"UPDATE deliveries SET status = 'delivering', worker_id = ? WHERE id IN "
    f"(SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?) "
    f"AND status = 'pending' RETURNING {_CLAIMED_SQL}")
_NEXT_DUE_SQLITE = "SELECT min(next_attempt_at) FROM deliveries WHERE status = 'pending'"
_STILL_HELD_SQLITE = ("SELECT id FROM deliveries WHERE id IN (SELECT value FROM json_each(?)) "
                      "AND status = 'delivering' AND worker_id = ?")
_ORDERED_SQLITE = ("SELECT id FROM webhook_configs WHERE id IN (SELECT value FROM json_each(?)) "
                   f"AND ordering = '{ORDERED}'")
# As _promote_and_claim_pg, written for SQLite, which has no LATERAL: a seek per
# place behind the head (the ids of the finished deliveries are ?1, a JSON array).
_QUEUED_BEHIND_SQLITE = """
    SELECT (SELECT other.id FROM deliveries AS other
            WHERE other.webhook_config_id = finished.webhook_config_id
              AND other.conversation_id = finished.conversation_id AND other.status = 'queued'
            ORDER BY other.sequence LIMIT 1 OFFSET {offset})
    FROM deliveries AS finished
    WHERE finished.id IN (SELECT value FROM json_each(?1))
      AND NOT EXISTS (SELECT 1 FROM deliveries AS head
                      WHERE head.webhook_config_id = finished.webhook_config_id
                        AND head.conversation_id = finished.conversation_id
                        AND head.status IN ('pending', 'delivering', 'held'))"""
_PROMOTE_AND_CLAIM_SQLITE = (
    "UPDATE deliveries SET status = 'delivering', worker_id = ?2, next_attempt_at = ?3 "
    "WHERE status = 'queued' AND id IN ("
    + " UNION ALL ".join(_QUEUED_BEHIND_SQLITE.format(offset=offset) for offset in range(PROMOTED_PER_CONVERSATION))
    + f") RETURNING {_CLAIMED_SQL}")
_BODIES_SQLITE = "SELECT id, body FROM events WHERE id IN (SELECT value FROM json_each(?))"
_CONFIGURATIONS_SQLITE = (
    "SELECT id, url, secret, previous_secret, previous_secret_expires_at, custom_headers, paused "
    "FROM webhook_configs WHERE id IN (SELECT value FROM json_each(?))")
_RELEASE_SQLITE = ("UPDATE deliveries SET status = ?, next_attempt_at = ?, worker_id = NULL "
                   "WHERE id = ? AND status = 'delivering' AND worker_id = ?")


def _json_ids(ids) -> str:
    return orjson.dumps(list(ids)).decode()


def _sqlite_attempts(rows: Sequence[AttemptRow]) -> list[tuple]:
    return [(r.delivery_id, r.number, _sqlite_datetime(r.started_at), r.duration_ms, r.status_code,
             r.response_excerpt, r.error, orjson.dumps(r.request_headers).decode(), r.worker_id) for r in rows]


def _sqlite_results(rows: Sequence[ResultRow], worker_id: str) -> list[tuple]:
    return [(r.status, r.attempt_count, r.next_attempt_at, r.last_status_code, r.last_error,
             _sqlite_datetime(r.finished_at), r.delivery_id, worker_id) for r in rows]


def _sqlite_releases(rows: Sequence[ReleaseRow], worker_id: str) -> list[tuple]:
    return [(r.status, r.next_attempt_at, r.delivery_id, worker_id) for r in rows]


def _finished_in_conversations(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """The results that end a delivery of a conversation: whose turn comes next may change."""
    return [r for r in rows if r.conversation_id is not None and r.status in FINAL_STATUSES]


# The functions below run in the aiosqlite thread: sqlite3 calls, and as little Python as can be.

def _sqlite_executemany(db, sql: str, parameters: list[tuple]) -> None:
    db.executemany(sql, parameters)


def _sqlite_claim_due(db, worker_id: str, now: float, limit: int) -> list:
    return [ClaimedRow._make(row) for row in db.execute(_CLAIM_SQLITE, (worker_id, now, limit))]


def _sqlite_next_due_at(db) -> float | None:
    return db.execute(_NEXT_DUE_SQLITE).fetchone()[0]


def _sqlite_still_held(db, worker_id: str, delivery_ids: Sequence[int]) -> set[int]:
    return {row[0] for row in db.execute(_STILL_HELD_SQLITE, (_json_ids(delivery_ids), worker_id))}


def _sqlite_promote_and_claim(db, finished_ids: Sequence[int], worker_id: str, now: float) -> list:
    return [ClaimedRow._make(row) for row in db.execute(_PROMOTE_AND_CLAIM_SQLITE,
                                                        (_json_ids(finished_ids), worker_id, now))]


def _sqlite_apply_results(db, worker_id: str, parameters: list[tuple], rows: Sequence[ResultRow],
                          now: float) -> list:
    """``apply_results`` on SQLite: the updates, then the promotions of ordered conversations."""
    db.executemany(_APPLY_RESULTS_SQLITE, parameters)
    finished = [(r.delivery_id, r.webhook_config_id, r.conversation_id) for r in _finished_in_conversations(rows)]
    return _sqlite_promote_finished(db, finished, worker_id, now) if finished else []


def _sqlite_promote_finished(db, finished: Sequence[tuple[int, int, int]], worker_id: str, now: float) -> list:
    finished = _one_per_conversation(finished)
    # The ordering as it is now, not as it was at the claim: a configuration
    # switched to ordered meanwhile already queues new events behind this one.
    ordered = {row[0] for row in db.execute(_ORDERED_SQLITE, (_json_ids({config for _, config, _ in finished}),))}
    promoted = [delivery_id for delivery_id, config_id, _ in finished if config_id in ordered]
    return _sqlite_promote_and_claim(db, promoted, worker_id, now) if promoted else []


def _sqlite_load_bodies(db, event_ids: Sequence[int]) -> dict[int, bytes]:
    return dict(db.execute(_BODIES_SQLITE, (_json_ids(set(event_ids)),)).fetchall())


def _sqlite_load_configurations(db, config_ids: Sequence[int]) -> dict[int, ConfigurationRow]:
    return {row[0]: ConfigurationRow(row[0], row[1], row[2], row[3], row[4], orjson.loads(row[5]), bool(row[6]))
            for row in db.execute(_CONFIGURATIONS_SQLITE, (_json_ids(set(config_ids)),))}


def _sqlite_record(db, worker_id: str, attempts: list[tuple], results: Sequence[ResultRow],
                   result_parameters: list[tuple], releases: list[tuple], now: float) -> CycleRecord:
    # The attempt rows go first: that write takes the lock, so the ownership
    # check below cannot be outdated by the time the updates run.
    if attempts:
        db.executemany(_RECORD_ATTEMPTS_SQLITE, attempts)
    held = _sqlite_still_held(db, worker_id, [r.delivery_id for r in results]) if results else set()
    kept = [r for r in results if r.delivery_id in held]
    # Hand-backs before results: a follower handed back ``queued`` must be
    # there when its head's failure promotes what comes next.
    if releases:
        db.executemany(_RELEASE_SQLITE, releases)
    # Every update is guarded by the lease anyway: those of rows no longer held change nothing.
    claimed = _sqlite_apply_results(db, worker_id, result_parameters, kept, now) if kept else []
    return CycleRecord(held, claimed)


def _sqlite_claim(db, worker_id: str, now: float, claim_limit: int, claimed: list) -> CycleClaim:
    if claim_limit > len(claimed):
        claimed += _sqlite_claim_due(db, worker_id, now, claim_limit - len(claimed))
    due = _sqlite_next_due_at(db) if len(claimed) < claim_limit else None
    if not claimed:
        return CycleClaim(claimed, due)
    return CycleClaim(claimed, due, _sqlite_load_bodies(db, [row.event_id for row in claimed]),
                      _sqlite_load_configurations(db, [row.webhook_config_id for row in claimed]))


# ---------------------------------------------------------------- a dispatcher cycle, on either engine

@dataclass(slots=True)
class CycleRecord:
    """What ``record_cycle`` wrote: the deliveries still held (their results
    were written), and the ordered ones promoted and claimed."""

    held: set[int]
    claimed: list


@dataclass(slots=True)
class CycleClaim:
    """What ``claim_cycle`` claimed (the promoted first), when the next pending
    delivery falls due if the claim took all there was, and the bodies and
    configurations of what was claimed."""

    claimed: list
    due: float | None
    bodies: dict[int, bytes] = field(default_factory=dict)
    configs: dict[int, Row] = field(default_factory=dict)


async def record_cycle(conn: AsyncConnection, *, worker_id: str, attempts: Sequence[AttemptRow],
                       results: Sequence[ResultRow], releases: Sequence[ReleaseRow], now: float,
                       postgres: bool) -> CycleRecord:
    """The writes after a cycle's attempts: ``record_attempts``, ``release``,
    then the results of the deliveries this worker still holds with their
    promotions (``apply_results``). Hand-backs go before results: a follower
    handed back ``queued`` must be there when its head's failure promotes
    what comes next. On SQLite in one call to the driver's thread."""
    if not postgres:
        return await in_sqlite_thread(conn, _sqlite_record, worker_id, _sqlite_attempts(attempts), results,
                                      _sqlite_results(results, worker_id), _sqlite_releases(releases, worker_id), now)
    await record_attempts(conn, attempts)
    await release(conn, worker_id=worker_id, rows=releases)
    return CycleRecord(*await apply_held_results(conn, worker_id=worker_id, rows=results, now=now))


async def claim_cycle(conn: AsyncConnection, *, worker_id: str, now: float, claim_limit: int, claimed: Sequence[Row],
                      postgres: bool) -> CycleClaim:
    """``claimed`` (deliveries promoted in this transaction) and a claim of
    pending ones up to ``claim_limit`` in all (one statement), ``next_due_at``
    if that took all there was, and the bodies and configurations of all
    claimed. On SQLite in one call to the driver's thread.

    One claim statement, not several of ``batch_size``: on PostgreSQL,
    bench/dispatch.py with 60,000 deliveries, 53 claims of up to 2,304 took
    1.9 to 2.1 s in all, 261 of up to 256 took 2.1 to 2.4 s; on SQLite the
    benchmark made 7,729/s that way (100,000 deliveries, ratio 0.716), as
    many as with several statements (6,427 and 7,457/s)."""
    if not postgres:
        return await in_sqlite_thread(conn, _sqlite_claim, worker_id, now, claim_limit, list(claimed))
    claimed = list(claimed)
    if claim_limit > len(claimed):
        claimed += await claim_due(conn, worker_id=worker_id, now=now, limit=claim_limit - len(claimed),
                                   postgres=True)
    due = await next_due_at(conn) if len(claimed) < claim_limit else None
    if not claimed:
        return CycleClaim(claimed, due)
    return CycleClaim(claimed, due, await load_bodies(conn, [row.event_id for row in claimed]),
                      await load_configurations(conn, [row.webhook_config_id for row in claimed]))


# ---------------------------------------------------------------- workers and stalled work


async def register_worker(conn: AsyncConnection, *, worker_id: str, hostname: str, pid: int, now: float) -> None:
    """A worker says it exists; a worker id that is already known is taken over."""
    taken_over = await conn.execute(
        update(workers).where(workers.c.id == worker_id)
        .values(hostname=hostname, pid=pid, started_at=now, heartbeat_at=now))
    if taken_over.rowcount == 0:
        await conn.execute(insert(workers).values(id=worker_id, hostname=hostname, pid=pid, started_at=now,
                                                  heartbeat_at=now))


async def heartbeat(conn: AsyncConnection, *, worker_id: str, now: float) -> bool:
    """Heartbeat: ``False`` when the worker's row is gone, i.e. it was declared dead
    and its deliveries were handed back; it must register again."""
    beat = await conn.execute(update(workers).where(workers.c.id == worker_id).values(heartbeat_at=now))
    return beat.rowcount == 1


async def reap_stalled(conn: AsyncConnection, *, now: float, stale_after: float) -> int:
    """Reap stalled work: workers whose heartbeat is older than ``stale_after``
    are deleted and their ``delivering`` deliveries go back to ``pending``.

    The ``DELETE ... RETURNING`` comes first, so that on PostgreSQL a worker
    that beats at that moment either beats first (and is not reaped) or finds
    its row gone (and knows it was). Returns how many deliveries went back.
    """
    dead = list((await conn.execute(
        delete(workers).where(workers.c.heartbeat_at < now - stale_after).returning(workers.c.id))).scalars())
    if not dead:
        return 0
    return await _hand_back(conn, and_(_status_is(DELIVERING), deliveries.c.worker_id.in_(dead)))


async def reap_orphans(conn: AsyncConnection) -> int:
    """``delivering`` deliveries whose worker is not registered at all go back
    to ``pending`` (a safety net run when a worker starts; it scans the table)."""
    return await _hand_back(conn, and_(
        _status_is(DELIVERING),
        or_(deliveries.c.worker_id.is_(None), deliveries.c.worker_id.not_in(select(workers.c.id)))))


async def hand_back_held_by(conn: AsyncConnection, *, worker_id: str) -> int:
    """Every delivery ``worker_id`` holds goes back to ``pending``, due as it was."""
    return await _hand_back(conn, _held_by(worker_id))


_before = deliveries.alias("before")
_HAND_BACK_SLICE = 10_000


async def _hand_back(conn: AsyncConnection, which) -> int:
    """The ``delivering`` deliveries ``which`` selects go back to ``pending``,
    due as they were; of an ordered conversation, one that has an earlier
    delivery pending, being sent or held (a head's follower, claimed with it:
    see PROMOTED_PER_CONVERSATION) goes back to ``queued`` behind it. Returns
    how many went back."""
    ids = list((await conn.execute(
        update(deliveries).where(which).values(status=PENDING, worker_id=None).returning(deliveries.c.id))).scalars())
    # In slices: many stalled workers can hand back more ids than either engine
    # takes parameters in one statement (32,766 on SQLite, 32,767 with asyncpg).
    for start in range(0, len(ids), _HAND_BACK_SLICE):
        await conn.execute(
            update(deliveries)
            .where(deliveries.c.id.in_(ids[start:start + _HAND_BACK_SLICE]), _status_is(PENDING),
                   deliveries.c.conversation_id.is_not(None),
                   deliveries.c.webhook_config_id.in_(
                       select(webhook_configs.c.id).where(webhook_configs.c.ordering == ORDERED)),
                   exists().where(_same_conversation(_before, deliveries), _is_head_status(_before),
                                  _before.c.sequence < deliveries.c.sequence))
            .values(status=QUEUED))
    return len(ids)


async def unregister_worker(conn: AsyncConnection, *, worker_id: str) -> int:
    """A worker stopping cleanly hands back what it still holds and leaves."""
    handed_back = await hand_back_held_by(conn, worker_id=worker_id)
    await conn.execute(delete(workers).where(workers.c.id == worker_id))
    return handed_back


# ---------------------------------------------------------------- configurations


async def pause_configuration(conn: AsyncConnection, *, config_id: int, reason: str, now: datetime) -> int | None:
    """Pause: the configuration stops sending; its ``pending`` deliveries become ``held``.

    Returns how many were held, or ``None`` if it was already paused (or does
    not exist). Deliveries being sent at this moment finish; the dispatcher
    holds any it claims afterwards, since it reads ``paused`` after claiming.
    """
    paused = await conn.execute(
        update(webhook_configs).where(webhook_configs.c.id == config_id, webhook_configs.c.paused.is_(False))
        .values(paused=True, paused_reason=reason[:500], updated_at=now))
    if paused.rowcount == 0:
        return None
    held = await conn.execute(
        update(deliveries).where(deliveries.c.webhook_config_id == config_id, _status_is(PENDING))
        .values(status=HELD))
    return held.rowcount


async def resume_configuration(conn: AsyncConnection, *, config_id: int, now: float, updated_at: datetime) -> int | None:
    """Resume: the configuration sends again; its ``held`` deliveries are due now.

    Returns how many were released, or ``None`` if it was not paused.
    """
    resumed = await conn.execute(
        update(webhook_configs).where(webhook_configs.c.id == config_id, webhook_configs.c.paused.is_(True))
        .values(paused=False, paused_reason=None, updated_at=updated_at))
    if resumed.rowcount == 0:
        return None
    released = await conn.execute(
        update(deliveries).where(deliveries.c.webhook_config_id == config_id, _status_is(HELD))
        .values(status=PENDING, next_attempt_at=now))
    return released.rowcount


# ---------------------------------------------------------------- the operator's statements


def _requeued(paused: bool, now: float) -> dict:
    # A re-sent delivery starts a new series of attempts, with a full retry budget.
    return {"status": HELD if paused else PENDING, "next_attempt_at": now, "attempt_count": 0,
            "finished_at": None, "worker_id": None}


async def configuration_paused(conn: AsyncConnection, config_id: int) -> bool | None:
    return (await conn.execute(select(webhook_configs.c.paused).where(webhook_configs.c.id == config_id))).scalar()


async def _is_ordered(conn: AsyncConnection, config_id: int) -> bool:
    return (await conn.execute(select(webhook_configs.c.ordering).where(webhook_configs.c.id == config_id))).scalar() == ORDERED


async def resend(conn: AsyncConnection, *, delivery_id: int, paused: bool, now: float) -> bool:
    """Resend: a finished delivery (``delivered`` or ``failed``) is queued again,
    same body, same signature, same ``webhook-id``. ``False`` if it is not finished.

    With ordered delivery it waits, ``queued``, behind what its conversation
    is sending, and goes before that conversation's later events."""
    row = (await conn.execute(select(deliveries.c.webhook_config_id, deliveries.c.conversation_id)
                              .where(deliveries.c.id == delivery_id))).first()
    if row is None:
        return False
    ordered = row.conversation_id is not None and await _is_ordered(conn, row.webhook_config_id)
    values = _requeued(paused, now)
    if ordered:
        values["status"] = QUEUED
    requeued = await conn.execute(
        update(deliveries).where(deliveries.c.id == delivery_id, deliveries.c.status.in_(FINAL_STATUSES))
        .values(**values))
    if requeued.rowcount == 1 and ordered:
        await conn.execute(_promote_head, [{"b_config": row.webhook_config_id,
                                            "b_conversation": row.conversation_id, "b_now": now}])
        if paused:  # a promoted head of a paused configuration waits held
            await conn.execute(update(deliveries).where(deliveries.c.id == delivery_id, _status_is(PENDING))
                               .values(status=HELD))
    return requeued.rowcount == 1


async def recover(conn: AsyncConnection, *, config_id: int, since: datetime, paused: bool, now: float) -> int:
    """Recover: every ``failed`` delivery of a configuration created since ``since`` is queued again
    (with ordered delivery, ``queued`` in sequence order behind what each conversation is sending)."""
    ordered = await _is_ordered(conn, config_id)
    values = _requeued(paused, now)
    if ordered:
        values["status"] = QUEUED
    recovered = await conn.execute(
        update(deliveries)
        .where(deliveries.c.webhook_config_id == config_id, _status_is(FAILED), deliveries.c.created_at >= since)
        .values(**values))
    if ordered and recovered.rowcount:
        await promote_heads(conn, config_id=config_id, now=now)
        if paused:
            await conn.execute(update(deliveries).where(deliveries.c.webhook_config_id == config_id,
                                                        _status_is(PENDING)).values(status=HELD))
    return recovered.rowcount


DELIVERY_COLUMNS = (
    deliveries.c.id, deliveries.c.event_id, deliveries.c.webhook_config_id, deliveries.c.org_id,
    deliveries.c.webhook_id, deliveries.c.status, deliveries.c.attempt_count, deliveries.c.next_attempt_at,
    deliveries.c.last_status_code, deliveries.c.last_error, deliveries.c.is_tryout, deliveries.c.conversation_id,
    deliveries.c.sequence, deliveries.c.created_at, deliveries.c.finished_at,
)


def _deliveries_of(config_id: int, status: str | None):
    where = [deliveries.c.webhook_config_id == config_id]
    if status is not None:
        where.append(deliveries.c.status == status)
    return where


async def count_deliveries(conn: AsyncConnection, *, config_id: int, status: str | None = None) -> int:
    return (await conn.execute(
        select(func.count()).select_from(deliveries).where(*_deliveries_of(config_id, status)))).scalar_one()


async def list_deliveries(conn: AsyncConnection, *, config_id: int, status: str | None = None,
                          offset: int = 0, limit: int = 50) -> list[Row]:
    """Deliveries of a configuration, newest first (served by ``ix_deliveries_config_status_id``)."""
    return list((await conn.execute(
        select(*DELIVERY_COLUMNS, events.c.event_type)
        .join_from(deliveries, events, events.c.id == deliveries.c.event_id)
        .where(*_deliveries_of(config_id, status))
        .order_by(deliveries.c.id.desc()).offset(offset).limit(limit))).all())


async def get_delivery(conn: AsyncConnection, *, delivery_id: int, org_id: int) -> Row | None:
    return (await conn.execute(
        select(*DELIVERY_COLUMNS, events.c.event_type)
        .join_from(deliveries, events, events.c.id == deliveries.c.event_id)
        .where(deliveries.c.id == delivery_id, deliveries.c.org_id == org_id))).first()


async def list_attempts(conn: AsyncConnection, *, delivery_id: int) -> list[Row]:
    return list((await conn.execute(
        select(attempts).where(attempts.c.delivery_id == delivery_id).order_by(attempts.c.id))).all())


async def get_configuration(conn: AsyncConnection, *, config_id: int, org_id: int) -> Row | None:
    return (await conn.execute(
        select(webhook_configs).where(webhook_configs.c.id == config_id, webhook_configs.c.org_id == org_id))).first()


async def configuration_for_event_type(conn: AsyncConnection, *, org_id: int, event_type: str) -> Row | None:
    return (await conn.execute(
        select(webhook_configs)
        .where(webhook_configs.c.org_id == org_id, webhook_configs.c.event_type == event_type))).first()


async def newest_event_body(conn: AsyncConnection, *, org_id: int, event_type: str) -> bytes | None:
    """The body of the organization's newest event of a type (for a tryout)."""
    return (await conn.execute(
        select(events.c.body).where(events.c.org_id == org_id, events.c.event_type == event_type)
        .order_by(events.c.id.desc()).limit(1))).scalar()


def live_secrets(secret: str, previous_secret: str | None, previous_expires_at: float | None,
                 now: float) -> list[str]:
    """The secrets that sign now: the current one, and the previous one until it expires."""
    if previous_secret and previous_expires_at is not None and now < previous_expires_at:
        return [secret, previous_secret]
    return [secret]
