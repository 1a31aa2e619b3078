"""Real-browser test (Chromium through Playwright) of the front desk: an editor adds a person
with a note of how consent was obtained, corrects the name and zone, and unsubscribes them from
one list when they phone; the contact's page shows each step. Every page is checked at desktop
width and at 390 px, where nothing may overflow sideways. Skipped without /usr/bin/chromium,
except in CI (CI=true), where that is a failure (tests/browser_support.py)."""
from __future__ import annotations

import re

import sqlalchemy as sa

from mailer.audience import contacts
from mailer.db import session_scope, utcnow
from mailer.models import ConsentEvent, Contact, MailingList, Subscription
from tests import browser_support
from tests.browser_support import PHONE, action, expect, shot
from tests.test_browser_console import live, log_in, page  # noqa: F401  (fixtures)

browser = browser_support.browser


def fits_a_phone(page, name: str) -> None:
    """At 390 px wide the page scrolls only downwards; the desktop size comes back afterwards."""
    size = page.viewport_size
    page.set_viewport_size(PHONE)
    try:
        # The new size reaches the page's layout a moment later on a busy machine.
        page.wait_for_function(f"window.innerWidth === {PHONE['width']}")
        width = page.evaluate("document.documentElement.scrollWidth")
        wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > innerWidth + 0.5)
            .map(e => e.tagName + '#' + e.id + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))
            .slice(0, 5)""")
        assert width <= PHONE["width"], f"{name}: {width} px wide at {PHONE['width']} px: {wide}"
    finally:
        page.set_viewport_size(size)
    shot(page, name)
    shot(page, name, phone=True)


def test_front_desk_adds_corrects_and_unsubscribes_a_contact(live, page):  # noqa: F811
    app, base = live
    with session_scope(app.extensions["mailer"].sessions) as session:
        contacts.ensure_list(session, "clinic-news", "Clinic news", "Yes, send me clinic news.")
    log_in(page, base, "editor", "/admin/contacts")
    action(page, "Add a contact").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Add a contact")
    fits_a_phone(page, "1-add-form")

    page.get_by_label("Email address").fill("maria.lopez@example.org")
    page.get_by_label("Name").fill("Maria Lopes")
    page.get_by_label("Time zone").fill("Europe/Madrid")
    page.get_by_label("Monthly newsletter").check()
    page.get_by_label("Clinic news").check()
    # Without a word on how consent was given, nobody joins a list.
    with page.expect_navigation():
        page.get_by_role("button", name="Add contact").click()
    expect(page.get_by_role("alert")).to_contain_text("Say how these people gave their consent")
    fits_a_phone(page, "2-add-refused")
    page.get_by_label("How and when").fill("signed the paper form at the desk on 3 March")
    with page.expect_navigation():
        page.get_by_role("button", name="Add contact").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("maria.lopez@example.org")
    expect(page.get_by_role("status")).to_contain_text("Contact added, on newsletter, clinic-news")
    fits_a_phone(page, "3-added")

    action(page, "Edit name or zone").click()
    expect(page.get_by_label("Name")).to_have_value("Maria Lopes")
    fits_a_phone(page, "4-edit-form")
    page.get_by_label("Name").fill("María López")
    page.get_by_label("Time zone").fill("Europe/Lisbon")
    with page.expect_navigation():
        page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text('name: "Maria Lopes" → "María López"')
    expect(page.get_by_role("definition").first).to_have_text("María López")

    action(page, "Unsubscribe").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Unsubscribe maria.lopez@example.org")
    fits_a_phone(page, "5-unsubscribe-form")
    page.get_by_label("From").select_option("newsletter")
    page.get_by_label("How they asked").fill("phoned the desk")
    with page.expect_navigation():
        page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("status")).to_contain_text("Unsubscribed from newsletter")
    subscriptions = page.get_by_role("row", name=re.compile("^Monthly newsletter"))
    expect(subscriptions).to_contain_text("unsubscribed")
    history = page.get_by_role("row").filter(has_text="staff: editor@clinic.example (console)")
    expect(history).to_have_count(3)
    expect(page.get_by_role("button", name="Send confirmation mail")).to_be_visible()
    fits_a_phone(page, "6-after-the-call")

    # Found by a part of her name and of her address.
    for text in ("lópez", "example.org"):
        page.goto(f"{base}/admin/contacts")
        page.get_by_label("Email address or name, or part of one").fill(text)
        with page.expect_navigation():
            page.get_by_role("button", name="Search").click()
        expect(page.get_by_role("link", name="maria.lopez@example.org")).to_be_visible()
    fits_a_phone(page, "7-found")
    with app.extensions["mailer"].read_sessions() as session:
        actions = session.scalars(sa.select(ConsentEvent.action).order_by(ConsentEvent.id)).all()
    assert actions == ["recorded", "recorded", "withdrawn"]


def test_a_search_result_is_unsubscribed_in_bulk_after_a_confirmation_with_its_count(live, page):  # noqa: F811
    app, base = live
    mailer = app.extensions["mailer"]
    with session_scope(mailer.sessions) as session:
        for address in ("ann@north.example", "bo@north.example", "cy@south.example"):
            contacts.get_or_create_contact(session, mailer.settings, address, name="Reader", now=utcnow())
            contact_id = session.scalar(sa.select(Contact.id).where(Contact.email == address))
            list_id = session.scalar(sa.select(MailingList.id).where(MailingList.slug == contacts.DEFAULT_LIST))
            session.add(Subscription(contact_id=contact_id, list_id=list_id, status="active", confirmed_at=utcnow()))
    log_in(page, base, "editor", "/admin/contacts")
    page.get_by_label("Email address or name, or part of one").fill("north.example")
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("heading", name="Do something with everyone this search found")).to_be_visible()
    fits_a_phone(page, "bulk-1-search")
    with page.expect_navigation():
        page.get_by_role("button", name="Unsubscribe…").click()
    expect(page.locator("main")).to_contain_text(
        "This unsubscribes 2 contacts found by your search from Monthly newsletter")
    fits_a_phone(page, "bulk-2-confirm")
    with page.expect_navigation():
        page.get_by_role("button", name="Unsubscribe them").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("unsubscribe from Monthly newsletter")
    mailer.drain()  # the worker's console-jobs job
    page.reload()
    expect(page.locator("table.bulk-jobs")).to_contain_text("done")
    expect(page.locator("table.bulk-jobs")).to_contain_text("2 of 2")
    fits_a_phone(page, "bulk-3-done")
    with mailer.read_sessions() as session:
        left = session.scalars(sa.select(Contact.email).join(Subscription, Subscription.contact_id == Contact.id)
                               .where(Subscription.status == "active")).all()
    assert left == ["cy@south.example"]
