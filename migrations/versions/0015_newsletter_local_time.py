"""newsletters.send_local_time and send_zone_fallback: an issue sent at a wall-clock
time in each reader's own time zone

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 21:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('newsletters') as batch_op:
        batch_op.add_column(sa.Column('send_local_time', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('send_zone_fallback', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('newsletters') as batch_op:
        batch_op.drop_column('send_zone_fallback')
        batch_op.drop_column('send_local_time')
