"""segments (saved rules over contacts) and newsletters narrowed by one

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 23:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'segments',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('rules', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.Column('archived_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('newsletters') as batch_op:
        batch_op.add_column(sa.Column('segment_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('segment_rules', sa.Text(), nullable=True))
        batch_op.create_foreign_key('fk_newsletters_segment_id_segments', 'segments', ['segment_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('newsletters') as batch_op:
        batch_op.drop_constraint('fk_newsletters_segment_id_segments', type_='foreignkey')
        batch_op.drop_column('segment_rules')
        batch_op.drop_column('segment_id')
    op.drop_table('segments')
