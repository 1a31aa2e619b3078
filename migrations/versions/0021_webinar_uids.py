"""webinar calendar identity: webinars.organizer_email and registrations.calendar_uid,
each stored by the first invite sent, so updates match the event in the attendee's calendar;
registrations.mail_stopped_at (List-Unsubscribe stops reminders, keeps the seat);
webinars.reminder_text (staff's words in every reminder)

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 10:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('webinars') as batch_op:
        batch_op.add_column(sa.Column('organizer_email', sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column('reminder_text', sa.Text(), nullable=False, server_default=''))
    with op.batch_alter_table('registrations') as batch_op:
        batch_op.add_column(sa.Column('calendar_uid', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('mail_stopped_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('registrations') as batch_op:
        batch_op.drop_column('mail_stopped_at')
        batch_op.drop_column('calendar_uid')
    with op.batch_alter_table('webinars') as batch_op:
        batch_op.drop_column('reminder_text')
        batch_op.drop_column('organizer_email')
