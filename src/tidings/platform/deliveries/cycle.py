"""The dispatcher's cycle, one implementation per engine behind one protocol.

A cycle is one write transaction: the results of the attempts made since
the last one (``record``), then a claim of due deliveries (``claim``). The
dispatcher picks its engine's implementation once (``cycle_for``) and never
asks which engine it runs on again.

- ``PostgresCycle``: the statements through SQLAlchemy and asyncpg, each
  batch one statement over arrays.
- ``SqliteCycle``: plain sqlite3 calls, a whole ``record`` or ``claim`` in
  one call to the aiosqlite thread (``store.sqlite.in_sqlite_thread``); one
  write transaction at a time per process (``store.engine.begin_write``), on
  connections of its own whose commits do not wait for the disk
  (``synchronous=NORMAL``): each commit would wait for a flush of several
  milliseconds, twice on a message's way out (``bench/e2e.py``). A crash of
  the process loses none of them; a power loss may undo the last ones, and
  then a delivery is sent once more (at least once) and its last attempts
  may be missing from the log. Messages and their deliveries are written
  durably (``synchronous=FULL``) by the ingestion.
"""

from __future__ import annotations

import contextlib
from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, Protocol

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.platform.deliveries import statements as sql
from tidings.platform.deliveries import wakeup
from tidings.platform.deliveries.statuses import DELIVERING, FINAL
from tidings.store.engine import begin_write, create_engine, url_of
from tidings.store.sqlite import in_sqlite_thread, json_array, sqlite_datetime

__all__ = [
    "AttemptRow",
    "ClaimedRow",
    "ConfigurationRow",
    "CycleClaim",
    "CycleRecord",
    "DeliveryCycle",
    "FinishedDelivery",
    "PostgresCycle",
    "ReleaseRow",
    "ResultRow",
    "SqliteCycle",
    "claim_on_sqlite",
    "cycle_for",
    "cycle_of",
]

# A claimed delivery, read by name (``is_tryout`` is 0 or 1 on SQLite).
ClaimedRow = namedtuple("ClaimedRow", sql.CLAIMED_COLUMNS)
ConfigurationRow = namedtuple("ConfigurationRow", "id url secret previous_secret previous_secret_expires_at "
                                                  "custom_headers paused deleted")
# A conversation named by one of its deliveries: (delivery id, configuration, conversation).
ConversationOf = tuple[int, int, int]


class FinishedDelivery(NamedTuple):
    """A delivery that ended in a cycle: its row as claimed, and whether it was delivered."""

    row: Any
    delivered: bool


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


@dataclass(frozen=True, slots=True)
class ReleaseRow:
    """A claimed delivery handed back unsent: ``pending`` at ``next_attempt_at``
    (its endpoint is saturated), ``held`` (its configuration was paused), or
    ``queued`` (a follower whose head was not delivered)."""

    delivery_id: int
    status: str
    next_attempt_at: float


@dataclass(slots=True)
class CycleRecord:
    """What ``record`` wrote: the deliveries whose results were applied (this
    worker still held them), how many held ones were dropped because their
    configuration was deleted, and the ordered ones promoted and claimed."""

    applied: set[int]
    dropped: int
    promoted: list


@dataclass(slots=True)
class CycleClaim:
    """What ``claim`` claimed (the promoted first), when the next pending
    delivery falls due if the claim took all there was, and the bodies and
    configurations of what was claimed."""

    claimed: list
    due: float | None
    bodies: dict[int, bytes] = field(default_factory=dict)
    configs: dict[int, Any] = field(default_factory=dict)


class DeliveryCycle(Protocol):
    def transaction(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A write transaction of the dispatcher."""

    async def close(self) -> None:
        """Releases what the cycle opened of its own (the dispatcher calls it when it stops)."""

    async def record(self, conn: AsyncConnection, *, worker_id: str, attempts: Sequence[AttemptRow],
                     results: Sequence[ResultRow], releases: Sequence[ReleaseRow], drops: Sequence[int],
                     now: float) -> CycleRecord:
        """Writes attempts, hand-backs, drops (claimed deliveries of deleted
        configurations) and results (each guarded by the lease and by a live
        configuration), then promotes and claims the next delivery of each
        ordered conversation whose head finished."""

    async def claim(self, conn: AsyncConnection, *, worker_id: str, now: float, limit: int,
                    promoted: Sequence) -> CycleClaim:
        """``promoted`` and a claim of due deliveries, up to ``limit`` in all,
        with what sending them needs."""

    def wake_ups(self, wake: Callable[[], None]) -> contextlib.AbstractAsyncContextManager[None]:
        """While the ``with`` lasts, ``wake()`` as soon as deliveries are committed (``wakeup``)."""

    async def promote(self, conn: AsyncConnection, finished: Sequence[ConversationOf], *, status: str,
                      worker_id: str | None, now: float, per_conversation: int) -> list:
        """The next ``queued`` deliveries of each ordered conversation named by
        ``finished`` take ``status`` (and ``worker_id``), unless something of the
        conversation is pending, being sent or held. Returns the rows changed."""


def cycle_for(engine: AsyncEngine) -> DeliveryCycle:
    """The cycle of ``engine``'s database, chosen once by the dispatcher."""
    return PostgresCycle(engine) if engine.dialect.name == "postgresql" else SqliteCycle(engine)


def cycle_of(conn: AsyncConnection) -> DeliveryCycle:
    """The cycle of the database ``conn`` is connected to (the operator's actions promote through it)."""
    return cycle_for(conn.engine)


def one_per_conversation(finished: Sequence[ConversationOf]) -> list[ConversationOf]:
    """One finished delivery per (configuration, conversation): whose turn comes
    next depends on the conversation only, and a head and its follower often
    finish in the same cycle (pure)."""
    return list({(config_id, conversation_id): (delivery_id, config_id, conversation_id)
                 for delivery_id, config_id, conversation_id in finished}.values())


def finishing(results: Sequence[ResultRow], applied: set[int]) -> list[ConversationOf]:
    """The applied results that end a delivery of a conversation: whose turn may come next (pure)."""
    return [(r.delivery_id, r.webhook_config_id, r.conversation_id) for r in results
            if r.delivery_id in applied and r.conversation_id is not None and r.status in FINAL]


# ---------------------------------------------------------------- PostgreSQL


class PostgresCycle:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def wake_ups(self, wake: Callable[[], None]) -> contextlib.AbstractAsyncContextManager[None]:
        return wakeup.listen(self.engine, wake)

    async def close(self) -> None:
        pass

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as conn:
            yield conn

    async def record(self, conn: AsyncConnection, *, worker_id: str, attempts: Sequence[AttemptRow],
                     results: Sequence[ResultRow], releases: Sequence[ReleaseRow], drops: Sequence[int],
                     now: float) -> CycleRecord:
        # Hand-backs before results: a follower handed back ``queued`` must be
        # there when its head's failure promotes what comes next.
        if releases:
            await conn.execute(sql.RELEASE_PG, {
                "ids": [r.delivery_id for r in releases], "statuses": [r.status for r in releases],
                "nexts": [r.next_attempt_at for r in releases], "workers": [worker_id] * len(releases)})
        applied: set[int] = set()
        if results:
            applied = set((await conn.execute(sql.APPLY_RESULTS_PG, {
                "ids": [r.delivery_id for r in results], "statuses": [r.status for r in results],
                "attempt_counts": [r.attempt_count for r in results],
                "nexts": [r.next_attempt_at for r in results], "codes": [r.last_status_code for r in results],
                "errors": [r.last_error for r in results], "finished": [r.finished_at for r in results],
                "expected": [DELIVERING] * len(results), "workers": [worker_id] * len(results)})).scalars())
        unapplied = [r.delivery_id for r in results if r.delivery_id not in applied]
        dropped = 0
        if unapplied or drops:
            dropped = (await conn.execute(sql.DROP_PG, {"ids": [*unapplied, *drops], "worker": worker_id})).rowcount
        if attempts:
            await conn.execute(sql.RECORD_ATTEMPTS_PG, {
                "delivery_ids": [r.delivery_id for r in attempts], "numbers": [r.number for r in attempts],
                "started": [r.started_at for r in attempts], "durations": [r.duration_ms for r in attempts],
                "codes": [r.status_code for r in attempts], "excerpts": [r.response_excerpt for r in attempts],
                "errors": [r.error for r in attempts],
                "headers": [orjson.dumps(r.request_headers).decode() for r in attempts],
                "workers": [r.worker_id for r in attempts]})
        promoted = await self.promote(conn, finishing(results, applied), status=DELIVERING, worker_id=worker_id,
                                      now=now, per_conversation=sql.PROMOTED_AT_MOST)
        return CycleRecord(applied, dropped, promoted)

    async def claim(self, conn: AsyncConnection, *, worker_id: str, now: float, limit: int,
                    promoted: Sequence) -> CycleClaim:
        claimed = list(promoted)
        if limit > len(claimed):
            claimed += (await conn.execute(sql.CLAIM_PG, {"now": now, "limit": limit - len(claimed),
                                                          "worker": worker_id})).all()
        due = (await conn.execute(sql.NEXT_DUE_PG)).scalar() if len(claimed) < limit else None
        if not claimed:
            return CycleClaim(claimed, due)
        bodies = dict((await conn.execute(sql.BODIES_PG, {"ids": list({row.event_id for row in claimed})})).all())
        configs = {row.id: row for row in await conn.execute(
            sql.CONFIGURATIONS_PG, {"ids": list({row.webhook_config_id for row in claimed})})}
        return CycleClaim(claimed, due, bodies, configs)

    async def promote(self, conn: AsyncConnection, finished: Sequence[ConversationOf], *, status: str,
                      worker_id: str | None, now: float, per_conversation: int) -> list:
        if not finished:
            return []
        finished = one_per_conversation(finished)
        ordered = {(row.webhook_config_id, row.conversation_id) for row in await conn.execute(
            sql.ORDERED_CONVERSATIONS_PG, {"configs": [config for _, config, _ in finished],
                                           "conversations": [conversation for _, _, conversation in finished]})}
        ids = [delivery_id for delivery_id, config, conversation in finished if (config, conversation) in ordered]
        if not ids:
            return []
        return list((await conn.execute(sql.PROMOTE_PG, {
            "finished": ids, "status": status, "worker": worker_id, "now": now,
            "per_conversation": per_conversation})).all())


# ---------------------------------------------------------------- SQLite

# Page cache of the dispatcher's write connections (SQLite's default is 2 MB):
# with ordering, the next delivery of each of many conversations lies on a
# page of its own (bench/ordering.py).
SQLITE_CACHE_KIB = 32 * 1024
_CACHE_SET = "tidings.deliveries.sqlite_cache"


class SqliteCycle:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._writer: AsyncEngine | None = None  # the same file, commits that do not wait for the disk

    def _writing_engine(self) -> AsyncEngine:
        if self._writer is None:
            database = self.engine.url.database
            in_memory = not database or database == ":memory:"  # a second engine would see another database
            self._writer = self.engine if in_memory else create_engine(url_of(self.engine), durable=False)
        return self._writer

    async def close(self) -> None:
        if self._writer is not None and self._writer is not self.engine:
            await self._writer.dispose()
        self._writer = None

    @contextlib.asynccontextmanager
    async def wake_ups(self, wake: Callable[[], None]) -> AsyncIterator[None]:
        stop = wakeup.on_commit(self.engine, wake)
        try:
            yield
        finally:
            stop()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        async with begin_write(self._writing_engine()) as conn:
            if not conn.info.get(_CACHE_SET):
                await conn.exec_driver_sql(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
                conn.info[_CACHE_SET] = True
            yield conn

    async def record(self, conn: AsyncConnection, *, worker_id: str, attempts: Sequence[AttemptRow],
                     results: Sequence[ResultRow], releases: Sequence[ReleaseRow], drops: Sequence[int],
                     now: float) -> CycleRecord:
        # Parameters are made here, in the event loop's thread; the thread runs sqlite3 alone.
        return await in_sqlite_thread(
            conn, _record_in_thread, worker_id,
            [(r.delivery_id, r.number, sqlite_datetime(r.started_at), r.duration_ms, r.status_code,
              r.response_excerpt, r.error, orjson.dumps(r.request_headers).decode(), r.worker_id) for r in attempts],
            results, [(r.status, r.next_attempt_at, r.delivery_id, worker_id) for r in releases], list(drops), now)

    async def claim(self, conn: AsyncConnection, *, worker_id: str, now: float, limit: int,
                    promoted: Sequence) -> CycleClaim:
        return await in_sqlite_thread(conn, _claim_in_thread, worker_id, now, limit, list(promoted))

    async def promote(self, conn: AsyncConnection, finished: Sequence[ConversationOf], *, status: str,
                      worker_id: str | None, now: float, per_conversation: int) -> list:
        if not finished:
            return []
        return await in_sqlite_thread(conn, _promote_in_thread, finished, status, worker_id, now, per_conversation)


# The functions below run in the aiosqlite thread: sqlite3 calls, and as little Python as can be.

def _record_in_thread(db, worker_id: str, attempts: list[tuple], results: Sequence[ResultRow],
                      releases: list[tuple], drops: list[int], now: float) -> CycleRecord:
    # The attempts go first: that write takes the database's lock, so the
    # ownership read below cannot be outdated by the time the updates run.
    if attempts:
        db.executemany(sql.RECORD_ATTEMPTS_SQLITE, attempts)
    applied: set[int] = set()
    dropping = list(drops)
    if results:
        for delivery_id, deleted in db.execute(sql.HELD_SQLITE, (json_array(r.delivery_id for r in results),
                                                                 worker_id)):
            (dropping.append if deleted else applied.add)(delivery_id)
    if releases:
        db.executemany(sql.RELEASE_SQLITE, releases)
    dropped = db.execute(sql.DROP_SQLITE, (json_array(dropping), worker_id)).rowcount if dropping else 0
    kept = [r for r in results if r.delivery_id in applied]
    if kept:
        db.executemany(sql.APPLY_RESULTS_SQLITE, [
            (r.status, r.attempt_count, r.next_attempt_at, r.last_status_code, r.last_error,
             sqlite_datetime(r.finished_at), r.delivery_id, worker_id) for r in kept])
    promoted = _promote_in_thread(db, finishing(kept, applied), DELIVERING, worker_id, now, sql.PROMOTED_AT_MOST)
    return CycleRecord(applied, dropped, promoted)


def _claim_in_thread(db, worker_id: str, now: float, limit: int, claimed: list) -> CycleClaim:
    if limit > len(claimed):
        claimed += [ClaimedRow._make(row) for row in db.execute(sql.CLAIM_SQLITE,
                                                                (worker_id, now, limit - len(claimed)))]
    due = db.execute(sql.NEXT_DUE_SQLITE).fetchone()[0] if len(claimed) < limit else None
    if not claimed:
        return CycleClaim(claimed, due)
    bodies = dict(db.execute(sql.BODIES_SQLITE, (json_array({row.event_id for row in claimed}),)).fetchall())
    configs = {row[0]: ConfigurationRow(row[0], row[1], row[2], row[3], row[4], orjson.loads(row[5]), bool(row[6]),
                                        bool(row[7]))
               for row in db.execute(sql.CONFIGURATIONS_SQLITE,
                                     (json_array({row.webhook_config_id for row in claimed}),))}
    return CycleClaim(claimed, due, bodies, configs)


def claim_on_sqlite(db, *, worker_id: str, now: float, limit: int) -> CycleClaim:
    """Claims up to ``limit`` due deliveries for ``worker_id`` in the open
    transaction of ``db`` (a sqlite3 connection): the same claim as a
    cycle's, for a writer of the dispatcher's process that hands them over
    once it commits (``IngestQueue``)."""
    return _claim_in_thread(db, worker_id, now, limit, [])


def _promote_in_thread(db, finished: Sequence[ConversationOf], status: str, worker_id: str | None, now: float,
                       per_conversation: int) -> list:
    if not finished:
        return []
    finished = one_per_conversation(finished)
    # The ordering as it is now, not as it was at the claim: a configuration
    # switched to ordered meanwhile already queues new events behind this one.
    ordered = {row[0] for row in db.execute(sql.ORDERED_CONFIGURATIONS_SQLITE,
                                            (json_array({config for _, config, _ in finished}),))}
    ids = [delivery_id for delivery_id, config, _ in finished if config in ordered]
    if not ids:
        return []
    return [ClaimedRow._make(row) for row in db.execute(sql.PROMOTE_SQLITE,
                                                        (json_array(ids), worker_id, now, per_conversation, status))]
