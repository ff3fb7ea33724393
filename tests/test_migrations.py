"""Migrations build exactly the schema that the code declares, on both engines."""

from __future__ import annotations

from tidings.store.migrate import head_revision, schema_differences, upgrade


def test_migrations_build_the_declared_schema(db_url):
    assert upgrade(db_url) == head_revision() != "base"
    assert schema_differences(db_url) == []


def test_upgrade_is_idempotent(db_url):
    first = upgrade(db_url)
    assert upgrade(db_url) == first
