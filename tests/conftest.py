"""Shared fixtures: database URLs for both engines, and the seed's example (docs/CONTRACT.md, section 1)."""

from __future__ import annotations

import os
import pathlib
import uuid

import pytest

from tidings.platform.sealed import new_key, use_keys

# The secrets key of every platform the tests build in this process (a child
# process finds its own through the command line).
use_keys([new_key()])
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
SEED_EXAMPLE = FIXTURES / "message_created.example.json"
POSTGRES_URL = os.environ.get("TIDINGS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REQUIRE_POSTGRES = os.environ.get("TIDINGS_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def seed_example_bytes() -> bytes:
    """The seed's own example, byte for byte as the seed shows it."""
    return SEED_EXAMPLE.read_bytes()


def _postgres_unavailable_reason() -> str | None:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_URL.replace("postgresql+asyncpg", "postgresql"), connect_timeout=3):
            return None
    except Exception as exc:  # any failure to connect means: no server here
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of a reachable PostgreSQL server; skips (or fails in CI) otherwise."""
    reason = _postgres_unavailable_reason()
    if reason:
        if REQUIRE_POSTGRES:
            pytest.fail(reason + " (TIDINGS_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    return POSTGRES_URL


def _fresh_postgres_database(server_url: str) -> tuple[str, str]:
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"tidings_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    return name, url


def _drop_postgres_database(server_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_server: str):
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    name, url = _fresh_postgres_database(postgres_server)
    yield url
    _drop_postgres_database(postgres_server, name)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    """A new SQLite file for one test."""
    return f"sqlite:///{tmp_path / 'tidings.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """Runs the test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tidings.db'}"
    return request.getfixturevalue("postgres_url")
