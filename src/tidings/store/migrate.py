"""Migrations: ``upgrade(url)`` brings a database to the newest schema.

``tidings db upgrade``, ``serve``, ``worker`` and ``receive`` call it on start.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from tidings.store.engine import create_sync_engine

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(url: str, revision: str = "head") -> str:
    """Migrates the database at ``url``; returns the revision it is at.

    On SQLite, foreign keys are off while migrations run (a change of a
    constraint rebuilds its table, which a table that refers to it would
    refuse) and checked afterwards: a migration that broke one fails."""
    config = alembic_config()
    engine = create_sync_engine(url)
    try:
        with engine.connect() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")  # outside a transaction, or it is ignored
                connection.commit()
            with connection.begin():
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
                if sqlite and (broken := connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()):
                    raise RuntimeError(f"a migration left rows that break a foreign key: {broken[:5]}")
                current = MigrationContext.configure(connection).get_current_revision() or "base"
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()
            return current
    finally:
        engine.dispose()


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or "base"


def autogenerate(message: str) -> None:
    """Writes a new revision with the difference between the newest migration
    and the tables in code (for developers: ``python -m tidings.store.migrate MESSAGE``)."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{scratch}/scratch.db"
        upgrade(url)
        config = alembic_config()
        engine = create_sync_engine(url)
        try:
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                command.revision(config, message=message, autogenerate=True)
        finally:
            engine.dispose()


def schema_differences(url: str) -> list:
    """What differs between the database at ``url`` and the tables in code."""
    from alembic.autogenerate import compare_metadata

    from tidings.store import all_tables  # noqa: F401
    from tidings.store.metadata import metadata

    engine = create_sync_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


if __name__ == "__main__":
    import sys

    autogenerate(" ".join(sys.argv[1:]) or "schema change")
