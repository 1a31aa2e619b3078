"""audit log indexes for the owners' filters

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 15:45:00
"""
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_audit_log_user', 'audit_log', ['user_id', 'id'], unique=False)
    op.create_index('ix_audit_log_action', 'audit_log', ['action', 'id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_audit_log_action', table_name='audit_log')
    op.drop_index('ix_audit_log_user', table_name='audit_log')
