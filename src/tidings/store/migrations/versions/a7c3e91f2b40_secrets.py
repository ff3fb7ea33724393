"""Secrets kept as secrets: API keys listed and revoked, dashboard sessions on the server, room for encrypted secrets

API keys get a prefix (for lists), a last use and a revocation time; the
dashboard's sessions are rows holding the SHA-256 of their id; a webhook
configuration's secrets grow to hold a Fernet token.

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
