"""mailing_lists.archived_at: an archived list takes no new signups (form, API, imports);
its subscribers and their consent history stay; consent_events.wording_id indexed (a
list's page counts the events of each wording version)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-10 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('mailing_lists') as batch_op:
        batch_op.add_column(sa.Column('archived_at', sa.DateTime(), nullable=True))
    op.create_index('ix_consent_events_wording_id', 'consent_events', ['wording_id'])


def downgrade() -> None:
    op.drop_index('ix_consent_events_wording_id', table_name='consent_events')
    with op.batch_alter_table('mailing_lists') as batch_op:
        batch_op.drop_column('archived_at')
