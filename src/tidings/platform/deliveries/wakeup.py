"""Waking the dispatcher when deliveries are committed, so that a delivery
leaves as soon as its transaction commits; the dispatcher's poll is only the
safety net for a lost wake-up.

- On SQLite (one dispatcher per database, in the process that writes): a
  transaction that writes deliveries due now marks its connection
  (``mark_deliveries_written``); when it commits, the dispatchers of this
  process that sleep on that database (``on_commit``) are woken, whichever of
  the process's engines for that file committed (``watch``).
- On PostgreSQL, in one process or across many: the same transaction sends
  ``NOTIFY tidings_deliveries``, which PostgreSQL delivers once it has
  committed, to every dispatcher that listens (``listen``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["CHANNEL", "deliveries_written", "forget_deliveries_written", "listen", "mark_deliveries_written",
           "on_commit", "wrote_deliveries", "watch"]

log = logging.getLogger("tidings.dispatcher")

CHANNEL = "tidings_deliveries"
_WRITTEN = "tidings.deliveries_written"
_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', '')")

Sleeper = tuple[asyncio.AbstractEventLoop, Callable[[], None]]
_sleepers: dict[str, set[Sleeper]] = {}  # database -> the dispatchers of this process that wait on it
_sleepers_lock = threading.Lock()


def mark_deliveries_written(conn: Connection) -> None:
    """Says, in ``conn``'s transaction, that it wrote deliveries that are due:
    dispatchers wake when it commits (once per transaction)."""
    info = conn.info  # the DBAPI connection's: it outlives the transaction, back in the pool
    if info.get(_WRITTEN):
        return
    watch(conn.engine)  # so that the transaction's end clears the mark, on every engine
    info[_WRITTEN] = True
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY)  # delivered at commit, never for a rollback


def wrote_deliveries(conn: Connection) -> bool:
    """Whether ``conn``'s transaction wrote deliveries that are due."""
    return bool(conn.info.get(_WRITTEN))


def forget_deliveries_written(conn: Connection) -> None:
    """Nobody needs waking for ``conn``'s transaction after all (on SQLite:
    it claimed what it wrote for this process's dispatcher, ``IngestQueue``)."""
    conn.info.pop(_WRITTEN, None)


async def deliveries_written(conn: AsyncConnection) -> None:
    """``mark_deliveries_written`` on an async connection."""
    await conn.run_sync(mark_deliveries_written)


def _database(engine: Engine) -> str:
    return f"{engine.dialect.name}:{engine.url.database}"


def _committed(connection: Connection) -> None:
    if connection.info.pop(_WRITTEN, False):
        ring(_database(connection.engine))


def _rolled_back(connection: Connection) -> None:
    connection.info.pop(_WRITTEN, None)


def watch(engine: Engine | AsyncEngine) -> None:
    """Rings the sleepers of ``engine``'s database when one of its transactions
    that wrote deliveries commits (once per engine)."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if not event.contains(sync_engine, "commit", _committed):
        event.listen(sync_engine, "commit", _committed)
        event.listen(sync_engine, "rollback", _rolled_back)


def ring(database: str) -> None:
    """Wakes every sleeper on ``database``, in its own event loop's thread."""
    with _sleepers_lock:
        sleepers = list(_sleepers.get(database, ()))
    for loop, wake in sleepers:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(wake)


def on_commit(engine: AsyncEngine, wake: Callable[[], None]) -> Callable[[], None]:
    """Calls ``wake()`` when a transaction that wrote deliveries commits on
    ``engine``'s database, through any watched engine of this process;
    returns the function that stops it.

    SQLAlchemy says so just before the database commits: the dispatcher woken
    then waits for the writer's lock (``store.engine.write_lock``, held until
    the commit is done) and claims once it is."""
    watch(engine)
    sleeper = (asyncio.get_running_loop(), wake)
    database = _database(engine.sync_engine)
    with _sleepers_lock:
        _sleepers.setdefault(database, set()).add(sleeper)

    def stop() -> None:
        with _sleepers_lock:
            _sleepers.get(database, set()).discard(sleeper)

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
