"""Secrets kept as secrets: API keys listed and revoked, dashboard sessions on the server, room for encrypted secrets

API keys get a prefix (for lists), a last use and a revocation time; the
dashboard's sessions are rows holding the SHA-256 of their id; a webhook
configuration's secrets grow to hold a Fernet token; the custom headers'
values in attempts already recorded are masked.

Revision ID: a7c3e91f2b40
Revises: de8d93eb7f77
Create Date: 2026-12-07 03:40:00
"""

from alembic import op
import sqlalchemy as sa
import tidings.store.types


revision = 'a7c3e91f2b40'
down_revision = 'de8d93eb7f77'
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
_BATCH = 1000
_MASKED = "********"


def masked_custom_values(headers: dict) -> dict:
    """An attempt's recorded headers with every possible custom header's value
    masked: any ``X-`` header but the default vendor's (``X-Tidings-``)."""
    return {name: _MASKED if name.lower().startswith("x-") and not name.lower().startswith("x-tidings-") else value
            for name, value in headers.items()}


def _mask_recorded_attempts() -> None:
    """Masks the custom headers' values in the attempts already recorded, a batch at a time."""
    connection = op.get_bind()
    table = sa.table('attempts', sa.column('id', sa.BigInteger), sa.column('request_headers', sa.JSON))
    after = -1
    while True:
        rows = connection.execute(sa.select(table.c.id, table.c.request_headers).where(table.c.id > after)
                                  .order_by(table.c.id).limit(_BATCH)).all()
        if not rows:
            return
        for row_id, headers in rows:
            masked = masked_custom_values(headers or {})
            if masked != headers:
                connection.execute(table.update().where(table.c.id == row_id).values(request_headers=masked))
        after = rows[-1][0]


def upgrade() -> None:
    with op.batch_alter_table('api_keys') as batch:
        batch.add_column(sa.Column('key_prefix', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('last_used_at', tidings.store.types.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('revoked_at', tidings.store.types.UTCDateTime(timezone=True), nullable=True))
    op.create_table(
        'dashboard_sessions',
        sa.Column('id_hash', sa.String(length=64), nullable=False),
        sa.Column('api_key_id', _ID, nullable=False),
        sa.Column('org_id', _ID, nullable=False),
        sa.Column('created_at', tidings.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['api_key_id'], ['api_keys.id'], name=op.f('fk_dashboard_sessions_api_key_id_api_keys'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_dashboard_sessions_org_id_organizations')),
        sa.PrimaryKeyConstraint('id_hash', name=op.f('pk_dashboard_sessions')),
    )
    op.create_index(op.f('ix_dashboard_sessions_api_key_id'), 'dashboard_sessions', ['api_key_id'], unique=False)
    with op.batch_alter_table('webhook_configs') as batch:
        batch.alter_column('secret', existing_type=sa.String(length=100), type_=sa.String(length=500),
                           existing_nullable=False)
        batch.alter_column('previous_secret', existing_type=sa.String(length=100), type_=sa.String(length=500),
                           existing_nullable=True)
    _mask_recorded_attempts()


def downgrade() -> None:
    with op.batch_alter_table('webhook_configs') as batch:
        batch.alter_column('previous_secret', existing_type=sa.String(length=500), type_=sa.String(length=100),
                           existing_nullable=True)
        batch.alter_column('secret', existing_type=sa.String(length=500), type_=sa.String(length=100),
                           existing_nullable=False)
    op.drop_index(op.f('ix_dashboard_sessions_api_key_id'), table_name='dashboard_sessions')
    op.drop_table('dashboard_sessions')
    with op.batch_alter_table('api_keys') as batch:
        batch.drop_column('revoked_at')
        batch.drop_column('last_used_at')
        batch.drop_column('key_prefix')
