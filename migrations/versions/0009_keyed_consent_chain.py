"""consent_events.contact_id nullable: the keyed chain's re-anchoring event has no contact

The re-anchoring itself needs the secret key, which a migration never sees: it happens
at the next start (migrate, worker, web app) through mailer.consent.ensure_anchored.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 05:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('consent_events', schema=None) as batch_op:
        batch_op.alter_column('contact_id', existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM consent_events WHERE contact_id IS NULL")
    with op.batch_alter_table('consent_events', schema=None) as batch_op:
        batch_op.alter_column('contact_id', existing_type=sa.Integer(), nullable=False)
