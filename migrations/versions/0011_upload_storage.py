"""job_uploads: console uploads stored in the database, readable by a worker on any host

A job queued before this keeps its upload as a file (jobs.file_path) and is read from that
file until it ends; new uploads go into job_uploads.

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-06 05:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('job_uploads',
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_job_uploads_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'seq', name=op.f('pk_job_uploads'))
    )


def downgrade() -> None:
    op.drop_table('job_uploads')
