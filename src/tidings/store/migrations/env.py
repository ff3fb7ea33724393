"""Alembic environment: the URL comes from ``tidings.store.migrate``."""

from alembic import context

from tidings.store import all_tables  # noqa: F401  (registers every table on the metadata)
from tidings.store.metadata import metadata

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes["connection"]
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
