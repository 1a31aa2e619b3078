"""bounces read from the bounce mailbox (issue 16): one row per delivery status notification
and recipient, matched to its delivery (hard, soft or policy)

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 12:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'bounces',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('delivery_id', sa.Integer(), nullable=True),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('notice_key', sa.String(length=64), nullable=False),
        sa.Column('received_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'], name=op.f('fk_bounces_delivery_id_deliveries'),
                                ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_bounces')),
        sa.UniqueConstraint('notice_key', name=op.f('uq_bounces_notice_key')),
    )
    op.create_index(op.f('ix_bounces_delivery_id'), 'bounces', ['delivery_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_bounces_delivery_id'), table_name='bounces')
    op.drop_table('bounces')
