"""deliveries.to_email, and contact_id nullable: a test copy goes to an address without
making it a contact

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-08 11:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite rebuilds the table (batch mode) to drop NOT NULL; PostgreSQL alters it in place.
    with op.batch_alter_table('deliveries') as batch_op:
        batch_op.add_column(sa.Column('to_email', sa.String(length=320), nullable=True))
        batch_op.alter_column('contact_id', existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM deliveries WHERE contact_id IS NULL")
    with op.batch_alter_table('deliveries') as batch_op:
        batch_op.alter_column('contact_id', existing_type=sa.Integer(), nullable=False)
        batch_op.drop_column('to_email')
