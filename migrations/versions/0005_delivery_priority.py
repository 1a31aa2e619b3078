"""deliveries.priority: transactional mail is claimed before newsletters

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 15:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('deliveries', sa.Column('priority', sa.SmallInteger(), server_default='0', nullable=False))
    # Newsletter issues are the bulk mail (mailer.models.Priority.BULK); everything else stays 0.
    op.execute("UPDATE deliveries SET priority = 1 WHERE kind = 'newsletter'")
    op.create_index('ix_deliveries_claim', 'deliveries', ['status', 'priority', 'next_attempt_at', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_deliveries_claim', table_name='deliveries')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('priority')
