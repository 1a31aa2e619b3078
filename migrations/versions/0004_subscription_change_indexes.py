"""indexes on subscriptions.confirmed_at and unsubscribed_at for the dashboard

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 15:05:00
"""
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_subscriptions_confirmed', 'subscriptions', ['confirmed_at', 'list_id', 'status'], unique=False)
    op.create_index('ix_subscriptions_unsubscribed', 'subscriptions', ['unsubscribed_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_subscriptions_unsubscribed', table_name='subscriptions')
    op.drop_index('ix_subscriptions_confirmed', table_name='subscriptions')
