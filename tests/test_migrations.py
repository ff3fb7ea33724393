"""Migrations build exactly the schema that the code declares, on both engines."""

from __future__ import annotations

from tidings.store.migrate import head_revision, schema_differences, upgrade


def test_migrations_build_the_declared_schema(db_url):
    assert upgrade(db_url) == head_revision() != "base"
    assert schema_differences(db_url) == []


def test_upgrade_is_idempotent(db_url):
    first = upgrade(db_url)
    assert upgrade(db_url) == first


def test_the_deleted_configurations_migration_keeps_rows_and_frees_a_deleted_event_type(db_url):
    """From the first schema, with an organization, a configuration, a delivery
    and its attempt: the rows stay, a deleted configuration no longer holds its
    event type, and a delivery's attempts go with it."""
    from datetime import UTC, datetime

    from sqlalchemy import delete, func, insert, select, update

    from tidings.store.engine import create_sync_engine
    from tidings.store.platform_tables import attempts, deliveries, webhook_configs

    assert upgrade(db_url, "ce25cb513307") == "ce25cb513307"
    now = datetime.now(UTC)
    engine = create_sync_engine(db_url)
    try:
        with engine.begin() as conn:
            seed_one_attempt(conn, now, custom_headers_json="{}", request_headers={})
        assert upgrade(db_url) == head_revision()
        assert schema_differences(db_url) == []
        with engine.begin() as conn:
            assert conn.execute(select(func.count()).select_from(attempts)).scalar_one() == 1
            conn.execute(update(webhook_configs).values(deleted_at=now))
            conn.execute(insert(webhook_configs).values(
                id=2, org_id=1, url="https://b.example/h", event_type="message_created", custom_headers={},
                secret="whsec_y", created_at=now, updated_at=now))  # the event type is free again
            conn.execute(delete(deliveries).where(deliveries.c.id == 1))
            assert conn.execute(select(func.count()).select_from(attempts)).scalar_one() == 0
    finally:
        engine.dispose()


def test_the_secrets_migration_masks_the_custom_headers_of_recorded_attempts(db_url):
    """Attempts recorded before it keep their headers' names; the values of
    possible custom headers (``X-``, not the vendor's) are masked."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from tidings.store.engine import create_sync_engine
    from tidings.store.platform_tables import attempts

    assert upgrade(db_url, "de8d93eb7f77") == "de8d93eb7f77"
    now = datetime.now(UTC)
    sent = {"X-Shop-Token": "tok-123", "X-Tidings-Signature-v1": "sig", "webhook-id": "msg_1",
            "Content-Type": "application/json"}
    engine = create_sync_engine(db_url)
    try:
        with engine.begin() as conn:
            seed_one_attempt(conn, now, custom_headers_json='{"X-Shop-Token": "tok-123"}', request_headers=sent)
        assert upgrade(db_url) == head_revision()
        with engine.connect() as conn:
            [recorded] = conn.execute(select(attempts.c.request_headers)).scalars()
    finally:
        engine.dispose()
    assert recorded == {**sent, "X-Shop-Token": "********"}


def seed_one_attempt(conn, now, *, custom_headers_json: str, request_headers: dict) -> None:
    """An organization, a configuration (in the columns of the migrated schema), an event, a failed delivery and its attempt."""
    from sqlalchemy import insert

    from tidings.store.platform_tables import attempts, deliveries, events, organizations

    conn.execute(insert(organizations).values(id=1, name="Acme", created_at=now))
    conn.exec_driver_sql(
        "INSERT INTO webhook_configs (id, org_id, url, event_type, custom_headers, ordering, secret, paused, "
        "created_at, updated_at) VALUES (1, 1, 'https://a.example/h', 'message_created', "
        f"'{custom_headers_json}', 'conversation', 'whsec_x', false, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)")
    conn.execute(insert(events).values(id=1, org_id=1, event_type="message_created", body=b"{}", created_at=now))
    conn.execute(insert(deliveries).values(id=1, event_id=1, webhook_config_id=1, org_id=1, webhook_id="msg_1",
                                           signature="s", status="failed", attempt_count=1, next_attempt_at=0,
                                           created_at=now))
    conn.execute(insert(attempts).values(delivery_id=1, number=1, started_at=now, duration_ms=1.0,
                                         request_headers=request_headers))
