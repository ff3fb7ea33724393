"""receiver: the SHA-256 of each stored body, to recognise a replay without its webhook-* headers

Revision ID: de8d93eb7f77
Revises: 3f1c2a9d7b10
Create Date: 2026-12-01 10:00:00.000000
"""

import hashlib

import sqlalchemy as sa
from alembic import op

revision = 'de8d93eb7f77'
down_revision = '3f1c2a9d7b10'
branch_labels = None
depends_on = None

_TABLES = ("receiver_events", "receiver_quarantine")
_BATCH = 1000


def _fill_digests(table_name: str) -> None:
    """Computes the digest of every row already stored, a batch at a time."""
    connection = op.get_bind()
    table = sa.table(table_name, sa.column("id", sa.BigInteger), sa.column("body", sa.LargeBinary),
                     sa.column("body_sha256", sa.LargeBinary))
    after = -1
    while True:
        rows = connection.execute(
            sa.select(table.c.id, table.c.body).where(table.c.id > after).order_by(table.c.id).limit(_BATCH)
        ).all()
        if not rows:
            return
        for row_id, body in rows:
            connection.execute(table.update().where(table.c.id == row_id)
                               .values(body_sha256=hashlib.sha256(bytes(body)).digest()))
        after = rows[-1][0]


def upgrade() -> None:
    for table_name in _TABLES:
        with op.batch_alter_table(table_name, schema=None) as batch_op:
            batch_op.add_column(sa.Column('body_sha256', sa.LargeBinary(length=32), nullable=True))
        _fill_digests(table_name)
        with op.batch_alter_table(table_name, schema=None) as batch_op:
            batch_op.alter_column('body_sha256', existing_type=sa.LargeBinary(length=32), nullable=False)
            batch_op.create_index(f'ix_{table_name}_body_sha256', ['body_sha256'], unique=False)


def downgrade() -> None:
    for table_name in _TABLES:
        with op.batch_alter_table(table_name, schema=None) as batch_op:
            batch_op.drop_index(f'ix_{table_name}_body_sha256')
            batch_op.drop_column('body_sha256')
