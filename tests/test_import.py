"""CSV import: every row accounted for, consent recorded, suppressed and unsubscribed
people never re-activated, an import without a consent note refused."""
from __future__ import annotations

import sqlalchemy as sa
from click.testing import CliRunner

from mailer.audience import consent
from mailer.delivery import suppression
from mailer.cli import main
from mailer.db import session_scope, utcnow
from mailer.models import ConsentEvent, Contact, Subscription
from tests.conftest import SECRET, signup

CSV = """Email,Name
ada@example.com,Ada
ADA@example.com,Ada again
not-an-address,Nobody
bounced@example.com,Bounce
gone@example.com,Gone
new@example.com,"Nia, the second"
"""


def run(database_url, tmp_path, *args, input=None):
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "instance")}
    return CliRunner().invoke(main, list(args), env=env, input=input)


def test_import_accounts_for_every_row_and_never_reactivates(client, mailer, db, database_url, tmp_path):
    with session_scope(mailer.sessions) as session:
        suppression.suppress_address(session, mailer.settings, "bounced@example.com", reason="hard_bounce", now=utcnow())
    signup(client, "gone@example.com")
    db.write(sa.update(Subscription).values(status="unsubscribed"))

    refused = run(database_url, tmp_path, "import", "-", "--consent-note", "ok", input=CSV)
    assert refused.exit_code == 1 and "Say how these people gave their consent" in refused.output

    note = "Paper signup sheet at the clinic desk, 2025"
    result = run(database_url, tmp_path, "import", "-", "--consent-note", note, input=CSV)
    assert result.exit_code == 0, result.output
    assert "6 rows: 2 imported, 1 invalid, 2 duplicate or already on the list, 1 suppressed" in result.output
    assert "invalid: row 4: 'not-an-address'" in result.output
    statuses = dict(db.execute(sa.select(Contact.email, Subscription.status).join(Subscription)))
    assert statuses == {"ada@example.com": "active", "new@example.com": "active", "gone@example.com": "unsubscribed"}
    assert db.scalar(sa.select(Contact.name).where(Contact.email == "new@example.com")) == "Nia, the second"
    events = db.scalars(sa.select(ConsentEvent).where(ConsentEvent.action == "imported").order_by(ConsentEvent.id))
    assert [e.note for e in events] == [note, note]
    assert {e.source_url for e in events} == {"import:-"}
    with mailer.read_sessions() as session:
        assert consent.verify_chain(session).intact

    again = run(database_url, tmp_path, "import", "-", "--consent-note", note, input=CSV)
    assert "6 rows: 0 imported, 1 invalid, 4 duplicate or already on the list, 1 suppressed" in again.output


def test_import_needs_an_email_column_and_a_known_list(database_url, tmp_path):
    note = "Paper signup sheet at the clinic desk"
    assert "needs an 'email' column" in run(database_url, tmp_path, "import", "-", "--consent-note", note,
                                             input="who\nx@example.com\n").output
    assert "No list 'vip'" in run(database_url, tmp_path, "import", "-", "--list", "vip", "--consent-note", note,
                                   input="email\nx@example.com\n").output
