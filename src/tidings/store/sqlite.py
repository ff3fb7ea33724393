"""Running plain sqlite3 statements in the thread of an aiosqlite connection.

The dispatcher's cycle on SQLite is a handful of sqlite3 calls with little
Python between them, made in one call to the thread that owns the
connection: through SQLAlchemy's adapter each statement was several such
calls, each waiting for the event loop to come round (see
``docs/PERFORMANCE.md``, "Dispatcher").
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["in_sqlite_thread", "sqlite_datetime"]


async def in_sqlite_thread(conn: AsyncConnection, statements, /, *args):
    """``statements(sqlite3_connection, *args)`` in one call to the aiosqlite
    thread of ``conn``: inside ``conn``'s transaction (the same sqlite3
    connection), committed or rolled back with it.

    aiosqlite has no public way to run a function in its thread: this relies
    on ``Connection._execute`` and ``Connection._conn`` (pinned in
    pyproject.toml; ``tests/test_pins.py`` fails at once if they go)."""
    driver = (await conn.get_raw_connection()).driver_connection  # aiosqlite.Connection
    return await driver._execute(statements, driver._conn, *args)


def sqlite_datetime(value: datetime | None) -> str | None:
    """A UTC datetime as ``UTCDateTime`` stores it on SQLite (SQLAlchemy's format)."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
