"""Runs handlers from the durable log, at least once, with retries and a dead-letter list.

Each handler has a cursor in the log. The runner reads the events after it,
runs the handler on those that match, records each failure with the time of
its next try, then moves the cursor, in one transaction: a crash between a
run and that transaction runs the handler again (at least once, never zero
times). Failed runs are retried with exponential backoff; after
``max_tries`` failures the row is marked dead. ``replay_dead`` makes dead
rows due again.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select, update

from tidings.receiver.handlers import Handler, Handlers, ReceivedEvent, retry_delay
from tidings.receiver.inbox import read_cursor, write_cursor
from tidings.receiver.log import EventLog, StoredEvent
from tidings.store.receiver_tables import receiver_handler_failures as failures

logger = logging.getLogger("tidings.receiver.handlers")

Write = Callable[[Callable[[Connection], Any]], Awaitable[Any]]


def handler_cursor(name: str) -> str:
    return f"handler:{name}"


def received(stored: StoredEvent) -> ReceivedEvent:
    return ReceivedEvent(stored.id, stored.event_type, stored.body, stored.webhook_id, stored.received_at,
                         stored.sequence)


@dataclass(frozen=True)
class FailureRow:
    id: int
    handler: str
    event_id: int
    attempts: int
    next_attempt_at: float
    last_error: str
    dead_at: float | None


def _error_text(exc: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text[:2000]


class HandlerRunner:
    """Runs every registered handler over the log; ``step`` does one round of work."""

    def __init__(
        self,
        log: EventLog,
        handlers: Handlers,
        write: Write,
        *,
        batch_size: int = 100,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.log = log
        self.handlers = handlers
        self.write = write
        self.batch_size = batch_size
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.clock = clock

    async def step(self) -> int:
        """Run what is due for every handler; the number of handler runs."""
        runs = 0
        for handler in self.handlers:
            runs += await self._retry_due(handler)
            runs += await self._run_new(handler)
        return runs

    async def run_until_idle(self, max_rounds: int = 1000) -> int:
        """Steps until nothing is left to do now (tests, one-shot commands)."""
        total = 0
        for _ in range(max_rounds):
            runs = await self.step()
            if not runs:
                break
            total += runs
        return total

    # ---------------------------------------------------------------- one handler

    async def _run_new(self, handler: Handler) -> int:
        cursor = handler_cursor(handler.name)
        position = await asyncio.to_thread(self._read_position, cursor)
        events = await asyncio.to_thread(self.log.events_after, position, self.batch_size)
        if not events:
            return 0
        runs = 0
        new_failures: list[tuple[int, str]] = []
        for stored in events:
            event = received(stored)
            if not handler.filter.matches(event.type, event.document):
                continue
            runs += 1
            error = await self._invoke(handler, event)
            if error is not None:
                new_failures.append((stored.id, error))
        now = self.clock()
        last = events[-1].id

        def record(conn: Connection) -> None:
            for event_id, error in new_failures:
                dead = handler.max_tries <= 1
                conn.execute(
                    failures.insert().values(
                        handler=handler.name,
                        event_id=event_id,
                        attempts=1,
                        next_attempt_at=now + retry_delay(1, self.backoff_base, self.backoff_cap),
                        last_error=error,
                        dead_at=now if dead else None,
                    )
                )
            write_cursor(conn, cursor, last)

        await self.write(record)
        return max(runs, 1)  # reading a batch is progress, even when nothing matched

    async def _retry_due(self, handler: Handler) -> int:
        due = await asyncio.to_thread(self._due, handler.name)
        if not due:
            return 0
        stored = await asyncio.to_thread(self.log.events_by_id, [row.event_id for row in due])
        outcomes: list[tuple[FailureRow, str | None]] = []
        for row in due:
            event = stored.get(row.event_id)
            error = "the event is no longer in the log" if event is None else await self._invoke(handler, received(event))
            outcomes.append((row, error))
        now = self.clock()

        def record(conn: Connection) -> None:
            for row, error in outcomes:
                if error is None:
                    conn.execute(delete(failures).where(failures.c.id == row.id))
                    continue
                attempts = row.attempts + 1
                dead = attempts >= handler.max_tries
                conn.execute(
                    update(failures)
                    .where(failures.c.id == row.id)
                    .values(
                        attempts=attempts,
                        last_error=error,
                        next_attempt_at=now + retry_delay(attempts, self.backoff_base, self.backoff_cap),
                        dead_at=now if dead else None,
                    )
                )

        await self.write(record)
        return len(due)

    async def _invoke(self, handler: Handler, event: ReceivedEvent) -> str | None:
        """Run the handler once; ``None`` when it succeeded, else the error's text."""
        try:
            if inspect.iscoroutinefunction(handler.function):
                await asyncio.wait_for(handler.function(event), handler.timeout)
            else:
                result = await asyncio.wait_for(asyncio.to_thread(handler.function, event), handler.timeout)
                if inspect.isawaitable(result):
                    await asyncio.wait_for(result, handler.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("handler %s failed on event %s: %s", handler.name, event.id, exc)
            return _error_text(exc)
        return None

    # ---------------------------------------------------------------- reads

    def _read_position(self, cursor: str) -> int:
        # A handler seen for the first time starts at the beginning of the log.
        with self.log.engine.connect() as conn:
            return read_cursor(conn, cursor)

    def _due(self, handler_name: str) -> list[FailureRow]:
        with self.log.engine.connect() as conn:
            rows = conn.execute(
                select(failures)
                .where(failures.c.handler == handler_name)
                .where(failures.c.dead_at.is_(None))
                .where(failures.c.next_attempt_at <= self.clock())
                .order_by(failures.c.next_attempt_at)
                .limit(self.batch_size)
            ).all()
        return [FailureRow(**row._mapping) for row in rows]


# ---------------------------------------------------------------- the dead-letter list


def list_failures(log: EventLog, *, dead: bool | None = True, handler: str | None = None, limit: int = 100) -> list[FailureRow]:
    """Failed handler runs: dead ones (``dead=True``), waiting ones (``False``) or all (``None``)."""
    query = select(failures).order_by(failures.c.id).limit(limit)
    if dead is True:
        query = query.where(failures.c.dead_at.is_not(None))
    elif dead is False:
        query = query.where(failures.c.dead_at.is_(None))
    if handler is not None:
        query = query.where(failures.c.handler == handler)
    with log.engine.connect() as conn:
        return [FailureRow(**row._mapping) for row in conn.execute(query).all()]


def replay_dead(conn: Connection, ids: Iterable[int] | None = None, now: float | None = None) -> int:
    """Make dead rows due now, with their tries counted from zero; the number replayed."""
    statement = (
        update(failures)
        .where(failures.c.dead_at.is_not(None))
        .values(dead_at=None, attempts=0, next_attempt_at=time.time() if now is None else now)
    )
    if ids is not None:
        statement = statement.where(failures.c.id.in_(list(ids)))
    return conn.execute(statement).rowcount
