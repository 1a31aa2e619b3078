"""custom contact fields and their values per contact

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-08 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'contact_fields',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('key', sa.String(length=40), nullable=False),
        sa.Column('label', sa.String(length=100), nullable=False),
        sa.Column('type', sa.String(length=10), nullable=False),
        sa.Column('choices', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.Column('archived_at', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_contact_fields')),
        sa.UniqueConstraint('key', name=op.f('uq_contact_fields_key')),
    )
    op.create_table(
        'contact_field_values',
        sa.Column('contact_id', sa.Integer(), nullable=False),
        sa.Column('field_id', sa.Integer(), nullable=False),
        sa.Column('value', sa.String(length=500), nullable=False),
        sa.Column('number', sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_contact_field_values_contact_id_contacts')),
        sa.ForeignKeyConstraint(['field_id'], ['contact_fields.id'],
                                name=op.f('fk_contact_field_values_field_id_contact_fields')),
        sa.PrimaryKeyConstraint('contact_id', 'field_id', name=op.f('pk_contact_field_values')),
    )
    op.create_index('ix_contact_field_values_field_value', 'contact_field_values', ['field_id', 'value'])
    op.create_index('ix_contact_field_values_field_number', 'contact_field_values', ['field_id', 'number'])


def downgrade() -> None:
    op.drop_index('ix_contact_field_values_field_number', table_name='contact_field_values')
    op.drop_index('ix_contact_field_values_field_value', table_name='contact_field_values')
    op.drop_table('contact_field_values')
    op.drop_table('contact_fields')
