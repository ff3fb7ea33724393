"""Engines for the two supported databases.

Users write plain URLs (``sqlite:///tidings.db``, ``postgresql://host/db``);
this module picks the async driver (aiosqlite, asyncpg) or the sync one
(sqlite3, psycopg 3) and applies the SQLite settings that tidings relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import AsyncIterator

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

DEFAULT_DB_URL = "sqlite:///tidings.db"

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_SYNC_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}


def _backend(url: str) -> str:
    backend = make_url(url).get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise ValueError(f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://...")
    return backend


def is_sqlite(url: str) -> bool:
    return _backend(url) == "sqlite"


def is_postgres(url: str) -> bool:
    return _backend(url) == "postgresql"


def async_url(url: str) -> str:
    """The URL with the async driver of its backend."""
    return make_url(url).set(drivername=_ASYNC_DRIVERS[_backend(url)]).render_as_string(hide_password=False)


def sync_url(url: str) -> str:
    """The URL with the sync driver of its backend (migrations, CLI set-up)."""
    return make_url(url).set(drivername=_SYNC_DRIVERS[_backend(url)]).render_as_string(hide_password=False)


def apply_sqlite_pragmas(dbapi_connection, _record=None, *, durable: bool = True) -> None:
    """WAL lets readers run beside the writer; FULL makes a commit durable on
    power loss, not only on a crash (NORMAL, for ``durable=False``: a commit
    does not wait for the disk, and a power loss may undo the last ones, never
    corrupt the file); the busy timeout turns lock contention between
    processes into waiting instead of errors."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def sqlite_file(url: str) -> str | None:
    """The file of a SQLite ``url``, or ``None`` for an in-memory database (pure).

    >>> sqlite_file("sqlite:///data/t.db"), sqlite_file("sqlite://"), sqlite_file("sqlite:///:memory:")
    ('data/t.db', None, None)
    """
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def create_private_file(url: str) -> None:
    """Creates the file of a SQLite ``url``, readable and writable by its owner
    only (0600), before SQLite first opens it: SQLite gives the -wal and -shm
    files the main file's mode. An existing file keeps its mode."""
    if not is_sqlite(url) or (path := sqlite_file(url)) is None:
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def create_engine(url: str, *, durable: bool = True, **kwargs) -> AsyncEngine:
    """An async engine for ``url``; SQLite gets a 0600 file, WAL, a busy timeout, and commits
    that wait for the disk unless ``durable`` is false (see ``apply_sqlite_pragmas``)."""
    create_private_file(url)
    engine = create_async_engine(async_url(url), **kwargs)
    if is_sqlite(url):
        event.listen(engine.sync_engine, "connect",
                     lambda dbapi_connection, record: apply_sqlite_pragmas(dbapi_connection, durable=durable))
    return engine


def url_of(engine: AsyncEngine) -> str:
    """The URL ``engine`` was made for, password included (for a second engine on the same database)."""
    return engine.url.render_as_string(hide_password=False)


def create_sync_engine(url: str, **kwargs) -> Engine:
    """A sync engine for ``url`` (migrations and one-shot commands); a SQLite file is created 0600."""
    from sqlalchemy import create_engine as _create

    create_private_file(url)
    engine = _create(sync_url(url), **kwargs)
    if is_sqlite(url):
        event.listen(engine, "connect", apply_sqlite_pragmas)
    return engine


# One asyncio lock per SQLite file and event loop: the writers of a process
# take turns here rather than in SQLite's busy handler, which sleeps in steps
# of milliseconds (the path of a message to its subscriber, bench/e2e.py).
_write_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary())


def write_lock(engine: AsyncEngine | Engine) -> asyncio.Lock:
    """The lock the SQLite writers of this process take turns on, for
    ``engine``'s database file, in the running event loop."""
    locks = _write_locks.setdefault(asyncio.get_running_loop(), {})
    lock = locks.get(engine.url.database)
    if lock is None:
        lock = locks[engine.url.database] = asyncio.Lock()
    return lock


@contextlib.asynccontextmanager
async def begin_write(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A write transaction on ``engine``. On SQLite, one at a time per process
    (``write_lock``: the ingestion writer and the dispatcher take turns); on
    PostgreSQL, a plain transaction."""
    if engine.dialect.name != "sqlite":
        async with engine.begin() as conn:
            yield conn
        return
    async with write_lock(engine), engine.begin() as conn:
        yield conn
