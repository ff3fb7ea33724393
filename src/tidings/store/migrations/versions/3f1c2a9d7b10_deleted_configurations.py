"""Deleted configurations: kept, marked, until nothing refers to them

A deleted webhook configuration stays, with ``deleted_at``, while a worker
still sends one of its deliveries; one live configuration per organization
and event type becomes a partial unique index; a delivery's attempts go
with it (ON DELETE CASCADE).

Revision ID: 3f1c2a9d7b10
Revises: ce25cb513307
Create Date: 2026-12-07 01:10:00
"""

from alembic import op
import sqlalchemy as sa
import tidings.store.types


revision = '3f1c2a9d7b10'
down_revision = 'ce25cb513307'
branch_labels = None
depends_on = None

_LIVE = sa.text("deleted_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table('webhook_configs') as batch:
        batch.add_column(sa.Column('deleted_at', tidings.store.types.UTCDateTime(timezone=True), nullable=True))
        batch.drop_constraint('uq_webhook_configs_org_event', type_='unique')
    op.create_index('uq_webhook_configs_org_event', 'webhook_configs', ['org_id', 'event_type'], unique=True,
                    postgresql_where=_LIVE, sqlite_where=_LIVE)
    with op.batch_alter_table('attempts') as batch:
        batch.drop_constraint('fk_attempts_delivery_id_deliveries', type_='foreignkey')
        batch.create_foreign_key('fk_attempts_delivery_id_deliveries', 'deliveries', ['delivery_id'], ['id'],
                                 ondelete='CASCADE')


def downgrade() -> None:
    with op.batch_alter_table('attempts') as batch:
        batch.drop_constraint('fk_attempts_delivery_id_deliveries', type_='foreignkey')
        batch.create_foreign_key('fk_attempts_delivery_id_deliveries', 'deliveries', ['delivery_id'], ['id'])
    op.drop_index('uq_webhook_configs_org_event', table_name='webhook_configs')
    op.execute("DELETE FROM webhook_configs WHERE deleted_at IS NOT NULL")
    with op.batch_alter_table('webhook_configs') as batch:
        batch.create_unique_constraint('uq_webhook_configs_org_event', ['org_id', 'event_type'])
        batch.drop_column('deleted_at')
