"""Substring search of contacts by address or name: pg_trgm GIN indexes on PostgreSQL, an
FTS5 trigram table kept in step by triggers on SQLite

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-08 10:00:00
"""
from alembic import op


revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None

# External content: the FTS table holds only the trigram index; the text stays in contacts.
SQLITE_UP = [
    "CREATE VIRTUAL TABLE contacts_fts USING fts5(email, name_key, content='contacts', content_rowid='id', "
    "tokenize='trigram')",
    "CREATE TRIGGER contacts_fts_insert AFTER INSERT ON contacts BEGIN "
    "INSERT INTO contacts_fts (rowid, email, name_key) VALUES (new.id, new.email, new.name_key); END",
    "CREATE TRIGGER contacts_fts_delete AFTER DELETE ON contacts BEGIN "
    "INSERT INTO contacts_fts (contacts_fts, rowid, email, name_key) VALUES ('delete', old.id, old.email, "
    "old.name_key); END",
    "CREATE TRIGGER contacts_fts_update AFTER UPDATE OF email, name_key ON contacts BEGIN "
    "INSERT INTO contacts_fts (contacts_fts, rowid, email, name_key) VALUES ('delete', old.id, old.email, "
    "old.name_key); "
    "INSERT INTO contacts_fts (rowid, email, name_key) VALUES (new.id, new.email, new.name_key); END",
    "INSERT INTO contacts_fts (contacts_fts) VALUES ('rebuild')",
]
SQLITE_DOWN = ["DROP TRIGGER contacts_fts_update", "DROP TRIGGER contacts_fts_delete",
               "DROP TRIGGER contacts_fts_insert", "DROP TABLE contacts_fts"]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.create_index('ix_contacts_email_trgm', 'contacts', ['email'], postgresql_using='gin',
                        postgresql_ops={'email': 'gin_trgm_ops'})
        op.create_index('ix_contacts_name_key_trgm', 'contacts', ['name_key'], postgresql_using='gin',
                        postgresql_ops={'name_key': 'gin_trgm_ops'})
    else:
        for statement in SQLITE_UP:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index('ix_contacts_name_key_trgm', table_name='contacts')
        op.drop_index('ix_contacts_email_trgm', table_name='contacts')
    else:
        for statement in SQLITE_DOWN:
            op.execute(statement)
