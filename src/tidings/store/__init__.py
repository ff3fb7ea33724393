"""One place for the database: engine set-up for SQLite and PostgreSQL,
the tables (SQLAlchemy Core) and their migrations."""

from tidings.store.engine import DEFAULT_DB_URL, async_url, create_engine, is_postgres, is_sqlite, sync_url
from tidings.store.metadata import metadata

__all__ = ["DEFAULT_DB_URL", "async_url", "create_engine", "is_postgres", "is_sqlite", "metadata", "sync_url"]
