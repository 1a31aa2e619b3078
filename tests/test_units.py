"""Pure rules, settings and the schema, tested directly."""
from __future__ import annotations

import datetime as dt
import random

import pytest

from mailer.demo import first_weekday_of_next_month
from mailer.logtext import loggable
from mailer.delivery.outbox import retry_delay
from mailer.clock import format_local, format_local_short
from mailer.delivery.rendering import one_line
from mailer.settings import SettingsError, load_settings
from mailer.delivery.transports import SMTPTransport, classify_smtp_reply

UTC = dt.timezone.utc


def test_local_time_is_shown_in_the_readers_zone_across_the_dst_change():
    before = dt.datetime(2027, 3, 27, 18, 0, tzinfo=UTC)  # London still on GMT
    after = dt.datetime(2027, 3, 28, 18, 0, tzinfo=UTC)  # London on BST since 01:00 UTC
    assert format_local(before, "Europe/London") == "Saturday 27 March 2027, 18:00 GMT"
    assert format_local(after, "Europe/London") == "Sunday 28 March 2027, 19:00 BST"
    assert format_local(after, "America/New_York") == "Sunday 28 March 2027, 14:00 EDT"
    assert format_local(after, "Australia/Sydney") == "Monday 29 March 2027, 05:00 AEDT"


def test_a_table_cells_time_is_compact_on_one_line_in_the_readers_zone():
    after = dt.datetime(2027, 3, 28, 18, 0, tzinfo=UTC)
    assert format_local_short(after, "Europe/London") == "Sun\xa028\xa0Mar\xa02027\xa019:00\xa0BST"
    assert format_local_short(after, "Australia/Sydney").replace("\xa0", " ") == "Mon 29 Mar 2027 05:00 AEDT"
    assert " " not in format_local_short(after, "America/New_York")  # no breakable space


def test_a_consent_events_source_is_shown_as_its_page_without_tokens():
    from mailer.audience.consent import source_page

    assert source_page("https://clinic.example/blog/posture?utm_source=mail#top") == "https://clinic.example/blog/posture"
    assert source_page("https://news.example.org/confirm/WzEsMV0.abc-DEF_123") == "https://news.example.org/confirm/…"
    assert source_page("https://news.example.org/preferences/WzEsMV0.x?lists=a") == "https://news.example.org/preferences/…"
    assert source_page("https://news.example.org/webinars/spine-health/cancel/WzQsMl0.sig") == \
        "https://news.example.org/webinars/spine-health/cancel/…"
    assert source_page("https://user:secret@clinic.example/" + "a1B2" * 10) == "https://clinic.example/…"
    assert source_page("staff:owner@clinic.example") == "staff:owner@clinic.example"  # not a web page: as stored
    assert source_page("bounce webhook") == "bounce webhook"
    assert source_page(None) is None and source_page("") == ""


def test_plural_and_kind_words():
    from mailer.delivery import registry
    from mailer.web import plural

    assert [plural("active subscription", n) for n in (0, 1, 2)] == [
        "active subscriptions", "active subscription", "active subscriptions"]
    assert plural("contact matches", 3, "contacts match") == "contacts match"
    assert registry.kind_label("no_such_kind") == "no_such_kind"
    from mailer import mail_kinds

    labels = {name: registry.label_of(name, kind) for name, kind in mail_kinds().items()}
    assert all(label and "_" not in label and label[0].isupper() for label in labels.values()), labels
    assert labels["webinar_confirmation"] == "Webinar confirmation"
    assert len(set(labels.values())) == len(labels)  # staff can tell every kind apart


def test_first_tuesday_at_18_local_is_the_right_utc_instant_on_both_sides_of_dst():
    # Tuesday 2 March 2027 18:00 GMT = 18:00 UTC; Tuesday 6 April 2027 18:00 BST = 17:00 UTC.
    assert first_weekday_of_next_month(dt.datetime(2027, 2, 10, tzinfo=UTC), "Europe/London", 1, 18) == \
        dt.datetime(2027, 3, 2, 18, 0, tzinfo=UTC)
    assert first_weekday_of_next_month(dt.datetime(2027, 3, 10, tzinfo=UTC), "Europe/London", 1, 18) == \
        dt.datetime(2027, 4, 6, 17, 0, tzinfo=UTC)
    assert first_weekday_of_next_month(dt.datetime(2027, 12, 10, tzinfo=UTC), "Europe/London", 1, 18) == \
        dt.datetime(2028, 1, 4, 18, 0, tzinfo=UTC)


def test_retry_delay_grows_exponentially_with_jitter_and_a_cap():
    rng = random.Random(1)
    delays = [retry_delay(n, base_seconds=60, cap_seconds=3600, rng=rng).total_seconds() for n in range(1, 10)]
    assert 48 <= delays[0] <= 72
    assert 96 <= delays[1] <= 144
    assert all(d <= 3600 * 1.2 for d in delays)
    assert delays[-1] >= 3600 * 0.8


def test_smtp_reply_classification():
    assert classify_smtp_reply(451, "try later").temporary
    assert not classify_smtp_reply(550, "no such user").temporary
    assert classify_smtp_reply(421, "closing").connection_lost


def test_smtp_url_parsing():
    t = SMTPTransport("smtp://user%40x:p%2Fw@mail.example:587?starttls=1")
    assert (t.host, t.port, t.username, t.password, t.starttls, t.ssl) == ("mail.example", 587, "user@x", "p/w", True, False)
    s = SMTPTransport("smtps://mail.example")
    assert (s.port, s.ssl) == (465, True)
    with pytest.raises(ValueError):
        SMTPTransport("http://mail.example")


def test_one_line_removes_line_breaks():
    assert one_line("a\r\nBcc: b\n c") == "a Bcc: b c"


def test_settings_from_environment(tmp_path):
    env = {"MAILER_FROM": "Clinic <hi@clinic.example>", "MAILER_SEND_BATCH_SIZE": "7",
           "MAILER_INSTANCE_PATH": str(tmp_path), "MAILER_BASE_URL": "https://x.example/"}
    settings = load_settings(environ=env)
    assert settings.from_email == "hi@clinic.example"
    assert settings.send_batch_size == 7
    assert settings.base_url == "https://x.example"
    assert settings.database_url == f"sqlite:///{tmp_path / 'mailer.db'}"
    assert settings.reply_to == "Clinic <hi@clinic.example>"
    # The generated secret key is kept, so links keep working after a restart.
    assert load_settings(environ=env).secret_key == settings.secret_key


@pytest.mark.parametrize("name,value,message", [
    ("MAILER_SEND_BATCH_SIZE", "lots", "must be a whole number"),
    ("MAILER_TIMEZONE", "Mars/Olympus", "is not an IANA time zone"),
    ("MAILER_FROM", "nobody", "has no email address"),
])
def test_bad_settings_are_named(tmp_path, name, value, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(environ={name: value, "MAILER_INSTANCE_PATH": str(tmp_path)})


def test_drain_progress_draws_a_bar_on_a_terminal_and_lines_otherwise():
    import io

    from mailer.cli import DrainProgress
    from mailer.delivery.sender import BatchResult

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    bar = DrainProgress(200, screen)
    bar(BatchResult(sent=100, deferred=3, failed=1))
    assert screen.getvalue().startswith("\r[###############...............] 101/200 sent 100 deferred 3 failed 1 | ")
    assert "ETA" in screen.getvalue()

    log = io.StringIO()
    lines = DrainProgress(200, log, interval=3600)
    lines(BatchResult(sent=10))
    assert log.getvalue() == ""  # not yet: one line per interval
    lines(BatchResult(sent=200), final=True)
    assert log.getvalue().startswith("progress: 200/200 sent 200 deferred 0 failed 0 | ")


def test_loggable_escapes_what_could_forge_a_log_line_and_bounds_the_length():
    assert loggable("arn:topic\r\nFAKE LOG LINE\x1b[2J\x00\x7f\u2028\tend") == \
        "arn:topic\\r\\nFAKE LOG LINE\\x1b[2J\\x00\\x7f\\u2028\\tend"
    assert loggable("C:\\x1b is text") == "C:\\\\x1b is text"  # an escape cannot be faked
    assert loggable("Grüße, 日本 ok") == "Grüße, 日本 ok"
    assert loggable(None) == "None" and loggable({"k": "a\nb"}) == "{'k': 'a\\\\nb'}"  # str() of a dict
    assert loggable("x" * 300) == "x" * 200 + "…"
    assert loggable("ab\n", limit=3) == "ab…"  # an escape is never cut in half
    assert loggable("abc", limit=3) == "abc"
