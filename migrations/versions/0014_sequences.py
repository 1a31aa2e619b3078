"""sequences (automations): sequences, their steps, enrolments, and the steps skipped by a condition

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 21:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sequences',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('trigger', sa.String(length=20), nullable=False),
    sa.Column('trigger_list_id', sa.Integer(), nullable=True),
    sa.Column('trigger_webinar_id', sa.Integer(), nullable=True),
    sa.Column('list_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('activated_at', sa.DateTime(), nullable=True),
    sa.Column('triggers_checked_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['list_id'], ['mailing_lists.id'], name=op.f('fk_sequences_list_id_mailing_lists')),
    sa.ForeignKeyConstraint(['trigger_list_id'], ['mailing_lists.id'], name=op.f('fk_sequences_trigger_list_id_mailing_lists')),
    sa.ForeignKeyConstraint(['trigger_webinar_id'], ['webinars.id'], name=op.f('fk_sequences_trigger_webinar_id_webinars')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sequences'))
    )
    op.create_table('enrolments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sequence_id', sa.Integer(), nullable=False),
    sa.Column('contact_id', sa.Integer(), nullable=False),
    sa.Column('enrolled_at', sa.DateTime(), nullable=False),
    sa.Column('last_position', sa.Integer(), nullable=False),
    sa.Column('last_at', sa.DateTime(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('exited_reason', sa.String(length=30), nullable=True),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_enrolments_contact_id_contacts')),
    sa.ForeignKeyConstraint(['sequence_id'], ['sequences.id'], name=op.f('fk_enrolments_sequence_id_sequences')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_enrolments')),
    sa.UniqueConstraint('sequence_id', 'contact_id', name=op.f('uq_enrolments_sequence_id')),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('enrolments') as batch_op:
        batch_op.create_index('ix_enrolments_contact', ['contact_id'], unique=False)
        batch_op.create_index('ix_enrolments_due', ['sequence_id', 'last_position', 'last_at'], unique=False)
    op.create_table('sequence_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sequence_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('subject', sa.String(length=300), nullable=False),
    sa.Column('preheader', sa.String(length=300), nullable=False),
    sa.Column('body_md', sa.Text(), nullable=False),
    sa.Column('layout', sa.String(length=100), nullable=False),
    sa.Column('delay_minutes', sa.Integer(), nullable=False),
    sa.Column('window_days', sa.String(length=30), nullable=False),
    sa.Column('window_start', sa.Integer(), nullable=True),
    sa.Column('window_end', sa.Integer(), nullable=True),
    sa.Column('condition', sa.String(length=20), nullable=True),
    sa.Column('condition_ref_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('deleted_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['sequence_id'], ['sequences.id'], name=op.f('fk_sequence_steps_sequence_id_sequences')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sequence_steps')),
    sa.UniqueConstraint('sequence_id', 'position', name=op.f('uq_sequence_steps_sequence_id'))
    )
    op.create_table('sequence_skips',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enrolment_id', sa.Integer(), nullable=False),
    sa.Column('step_id', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=50), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['step_id'], ['sequence_steps.id'], name=op.f('fk_sequence_skips_step_id_sequence_steps')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sequence_skips')),
    sa.UniqueConstraint('enrolment_id', 'step_id', name=op.f('uq_sequence_skips_enrolment_id'))
    )
    with op.batch_alter_table('sequence_skips') as batch_op:
        batch_op.create_index('ix_sequence_skips_step', ['step_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('sequence_skips') as batch_op:
        batch_op.drop_index('ix_sequence_skips_step')

    op.drop_table('sequence_skips')
    op.drop_table('sequence_steps')
    with op.batch_alter_table('enrolments') as batch_op:
        batch_op.drop_index('ix_enrolments_due')
        batch_op.drop_index('ix_enrolments_contact')

    op.drop_table('enrolments')
    op.drop_table('sequences')
