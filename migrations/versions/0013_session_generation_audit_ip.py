"""users.session_generation (logout and access changes end sessions server-side);
audit_log.ip (the client address, resolved through MAILER_PROXY_COUNT)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 16:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('users') as batch_op:
        batch_op.add_column(sa.Column('session_generation', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('audit_log') as batch_op:
        batch_op.add_column(sa.Column('ip', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('audit_log') as batch_op:
        batch_op.drop_column('ip')
    with op.batch_alter_table('users') as batch_op:
        batch_op.drop_column('session_generation')
