"""Waking the dispatcher when deliveries are committed, so that a delivery
leaves as soon as its transaction commits; the dispatcher's poll is only the
safety net for a lost wake-up.

- On SQLite (one dispatcher per database, in the process that writes): a
  transaction that writes deliveries due now marks its connection
  (``deliveries_written``); when it commits, the dispatchers watching that
  engine (``on_commit``) are woken.
- On PostgreSQL, in one process or across many: the same transaction sends
  ``NOTIFY tidings_deliveries``, which PostgreSQL delivers once it has
  committed, to every dispatcher that listens (``listen``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["CHANNEL", "deliveries_written", "listen", "on_commit"]

log = logging.getLogger("tidings.dispatcher")

CHANNEL = "tidings_deliveries"
_WRITTEN = "tidings.deliveries_written"
_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', '')")


async def deliveries_written(conn: AsyncConnection) -> None:
    """Says, in ``conn``'s transaction, that it wrote deliveries that are due:
    dispatchers wake when it commits (once per transaction)."""
    info = conn.sync_connection.info
    if info.get(_WRITTEN):
        return
    info[_WRITTEN] = True
    if conn.dialect.name == "postgresql":
        await conn.execute(_NOTIFY)  # delivered at commit, never for a rollback


def on_commit(engine: AsyncEngine, wake: Callable[[], None]) -> Callable[[], None]:
    """Calls ``wake()`` when a transaction of ``engine`` that wrote deliveries
    commits; returns the function that stops it.

    SQLAlchemy says so just before the database commits: on SQLite the
    dispatcher woken then waits for the writer's lock (``store.begin_write``,
    or SQLite's own) and claims once the commit is done."""

    def committed(connection) -> None:
        if connection.info.pop(_WRITTEN, False):
            wake()

    def rolled_back(connection) -> None:
        connection.info.pop(_WRITTEN, None)

    event.listen(engine.sync_engine, "commit", committed)
    event.listen(engine.sync_engine, "rollback", rolled_back)

    def stop() -> None:
        event.remove(engine.sync_engine, "commit", committed)
        event.remove(engine.sync_engine, "rollback", rolled_back)

    return stop


@contextlib.asynccontextmanager
async def listen(engine: AsyncEngine, wake: Callable[[], None], *, retry_after: float = 1.0) -> AsyncIterator[None]:
    """``wake()`` at every ``NOTIFY tidings_deliveries`` while the ``with``
    lasts (PostgreSQL), on a connection of its own, opened again if it is lost."""
    task = asyncio.create_task(_listening(engine, wake, retry_after), name="dispatcher-listen")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _listening(engine: AsyncEngine, wake: Callable[[], None], retry_after: float) -> None:
    def notified(*_args) -> None:
        wake()

    while True:
        try:
            async with engine.connect() as conn:
                driver = (await conn.get_raw_connection()).driver_connection  # an asyncpg connection
                lost = asyncio.get_running_loop().create_future()
                driver.add_termination_listener(lambda _connection: lost.done() or lost.set_result(None))
                await driver.add_listener(CHANNEL, notified)
                wake()  # anything committed while nobody listened is looked for now
                try:
                    await lost
                finally:
                    if not driver.is_closed():
                        await driver.remove_listener(CHANNEL, notified)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("listening for new deliveries failed; polling until it is back", exc_info=True)
        await asyncio.sleep(retry_after)
