"""contacts.name_key for name prefix search; subscription indexes for list/status pages

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 14:50:00
"""
import unicodedata

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

BATCH = 5000


def _key(name):
    # Same as mailer.models.name_search_key, frozen here as it was at this revision.
    return unicodedata.normalize("NFKC", name or "").casefold()[:100]


def upgrade() -> None:
    op.add_column('contacts', sa.Column('name_key', sa.String(length=100), nullable=False, server_default=''))
    conn = op.get_bind()
    contacts = sa.table('contacts', sa.column('id', sa.Integer), sa.column('name', sa.String),
                        sa.column('name_key', sa.String))
    last_id = 0
    while True:
        rows = conn.execute(sa.select(contacts.c.id, contacts.c.name).where(contacts.c.id > last_id)
                            .order_by(contacts.c.id).limit(BATCH)).all()
        if not rows:
            break
        last_id = rows[-1].id
        changed = [{"cid": row.id, "key": _key(row.name)} for row in rows if row.name]
        if changed:
            conn.execute(contacts.update().where(contacts.c.id == sa.bindparam("cid"))
                         .values(name_key=sa.bindparam("key")), changed)
    op.create_index('ix_contacts_name_key', 'contacts', ['name_key'], unique=False,
                    postgresql_ops={'name_key': 'varchar_pattern_ops'})
    op.drop_index('ix_subscriptions_list_status', table_name='subscriptions')
    op.create_index('ix_subscriptions_list_status_contact', 'subscriptions', ['list_id', 'status', 'contact_id'],
                    unique=False)
    op.create_index('ix_subscriptions_list_contact', 'subscriptions', ['list_id', 'contact_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_subscriptions_list_contact', table_name='subscriptions')
    op.drop_index('ix_subscriptions_list_status_contact', table_name='subscriptions')
    op.create_index('ix_subscriptions_list_status', 'subscriptions', ['list_id', 'status'], unique=False)
    op.drop_index('ix_contacts_name_key', table_name='contacts')
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_column('name_key')
