"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
from sqlalchemy import BigInteger, DateTime, Integer, Text, TypeDecorator


class UTCDateTime(TypeDecorator):
    """An aware UTC datetime in, an aware UTC datetime out, on both engines
    (SQLite forgets the zone; PostgreSQL keeps it as ``timestamptz``)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (autoincrement);
# PostgreSQL gets a 64-bit identity.
Id = BigInteger().with_variant(Integer(), "sqlite")


class JsonText(TypeDecorator):
    """A JSON document kept as text, written and read with orjson.

    The projector writes a snapshot per message and per conversation; the
    standard library's encoder behind ``sqlalchemy.JSON`` was its largest cost.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else orjson.dumps(value).decode()

    def process_result_value(self, value, dialect):
        return None if value is None else orjson.loads(value)
