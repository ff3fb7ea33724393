"""Plain sqlite3 statements on the hot paths, beside SQLAlchemy's.

The dispatcher's cycle on SQLite is a handful of sqlite3 calls with little
Python between them, made in one call to the thread that owns the
connection: through SQLAlchemy's adapter each statement was several such
calls, each waiting for the event loop to come round (see
``docs/PERFORMANCE.md``, "Dispatcher").

The ingestion's writer runs its statements on the sqlite3 connection under
its SQLAlchemy one (``driver_sqlite``): SQLAlchemy's work around each
statement was most of a batch's CPU (``bench/e2e.py``). ``SqliteColumns``
converts values with the columns' own SQLAlchemy types, so a row written one
way reads the same the other way.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Table
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["SqliteColumns", "driver_sqlite", "in_sqlite_thread", "insert_rows", "json_array", "sqlite_datetime"]

_DIALECT = sqlite.dialect()
# Bound parameters per statement: SQLite before 3.32 allows no more than 999.
MAX_PARAMETERS = 999


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


def driver_sqlite(conn: Connection) -> sqlite3.Connection | None:
    """The sqlite3 connection under ``conn``: statements on it are part of
    ``conn``'s transaction, committed or rolled back with it (sqlite3 begins
    it at the first write, as for SQLAlchemy's own). ``None`` on another
    driver (PostgreSQL, or aiosqlite through ``run_sync``)."""
    driver = conn.connection.driver_connection
    return driver if isinstance(driver, sqlite3.Connection) else None


def json_array(values: Iterable[Any]) -> str:
    """A JSON array, for ``json_each(?)``: one statement text whatever the number of values."""
    return orjson.dumps(list(values)).decode()


class SqliteColumns:
    """Some columns of a table as sqlite3 takes and gives them, each value
    converted by its column's own SQLAlchemy type (dates, booleans, JSON)."""

    def __init__(self, table: Table, names: Sequence[str] | None = None) -> None:
        self.table = table
        self.names = tuple(names if names is not None else table.c.keys())
        types = [table.c[name].type.dialect_impl(_DIALECT) for name in self.names]
        self._binds = [(i, p) for i, kind in enumerate(types) if (p := kind.bind_processor(_DIALECT)) is not None]
        self._reads = [(i, p) for i, kind in enumerate(types)
                       if (p := kind.result_processor(_DIALECT, None)) is not None]
        self.listed = ", ".join(self.names)

    def listed_as(self, alias: str) -> str:
        """The column names for a ``SELECT`` from ``table AS alias``."""
        return ", ".join(f"{alias}.{name}" for name in self.names)

    def bind(self, row: Mapping[str, Any]) -> list[Any]:
        values = [row[name] for name in self.names]
        for index, process in self._binds:
            values[index] = process(values[index])
        return values

    def read(self, values: Sequence[Any]) -> dict[str, Any]:
        converted = list(values)
        for index, process in self._reads:
            converted[index] = process(converted[index])
        return dict(zip(self.names, converted))


def insert_rows(db: sqlite3.Connection, columns: SqliteColumns, rows: Sequence[Mapping[str, Any]], *,
                on_conflict: str = "", returning: Sequence[str] = ()) -> list[tuple]:
    """Inserts ``rows``, many to a statement, with an ``ON CONFLICT`` clause
    if given. Returns the ``returning`` columns of the rows inserted or
    updated, in no promised order."""
    per_statement = max(1, MAX_PARAMETERS // len(columns.names))
    group = f"({', '.join('?' * len(columns.names))})"
    tail = (f" {on_conflict}" if on_conflict else "") + (f" RETURNING {', '.join(returning)}" if returning else "")
    found: list[tuple] = []
    for start in range(0, len(rows), per_statement):
        chunk = rows[start:start + per_statement]
        parameters = [value for row in chunk for value in columns.bind(row)]
        cursor = db.execute(f"INSERT INTO {columns.table.name} ({columns.listed}) VALUES "
                            f"{', '.join([group] * len(chunk))}{tail}", parameters)
        if returning:
            found.extend(cursor.fetchall())
    return found
