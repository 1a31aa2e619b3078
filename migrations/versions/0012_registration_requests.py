"""registration_requests: the public webinar form stores the request; the worker registers

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 05:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('registration_requests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('webinar_id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=True),
    sa.Column('newsletter', sa.Boolean(), nullable=False),
    sa.Column('newsletter_version', sa.Integer(), nullable=True),
    sa.Column('source_url', sa.Text(), nullable=True),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('user_agent', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['webinar_id'], ['webinars.id'],
                            name=op.f('fk_registration_requests_webinar_id_webinars')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_registration_requests'))
    )


def downgrade() -> None:
    op.drop_table('registration_requests')
