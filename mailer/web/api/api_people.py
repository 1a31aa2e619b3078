"""API routes for people: mailing lists, subscriptions (double opt-in through the same
path as the public form, withdrawal as by the unsubscribe link), the consent ledger and
contacts (search, detail, Art. 15 export and Art. 17 erasure for owners).
They register on mailer.web.api.api's blueprint, so they share its tokens, errors and
OpenAPI document."""
from __future__ import annotations

from contextlib import contextmanager

import sqlalchemy as sa
from flask import Response, current_app, g, stream_with_context, url_for

from mailer import privacy
from mailer.web.api import api_schemas_people as people
from mailer.audience import consent, contacts, directory, frontdesk, lists
from mailer.staff import users
from mailer.web.api.api_schemas import encode_cursor
from mailer.audience.consent import RequestContext
from mailer.db import utcnow
from mailer.errors import Conflict, InvalidInput, NotFound
from mailer.models import Role, User
from mailer.web import db_reader, db_session, mailer
from mailer.web.api.api import ApiError, bp, error_response, field_renamed, operation

SUBSCRIPTION_ACCEPTED = ("If the address can be mailed, a confirmation request is on its way; the subscription "
                         "starts when the person clicks its link.")


# Shared by the API modules that show personal data -----------------------------------

@bp.errorhandler(Conflict)
def _conflict(exc: Conflict):
    return error_response(409, exc.code, exc.message, exc.field)


def audit(session, action: str, detail: str) -> None:
    """Record, with the token's user, that personal data was shown or changed."""
    users.record(session, g.api_user_id, action, detail)


def token_is_owner(session) -> bool:
    return session.scalar(sa.select(User.role).where(User.id == g.api_user_id)) == Role.OWNER


def require_owner(session) -> None:
    if not token_is_owner(session):
        raise ApiError(403, "forbidden", "Only a token of an owner may do this.")


def ledger_context(source_url: str | None = None) -> RequestContext:
    """Consent evidence for an act through the API: where the person was (when the caller
    says) and which token acted. The caller's IP is a server's, not the person's, so none."""
    return RequestContext(source_url=source_url or None, note=f"api: token '{g.api_token_name}'")


def filters_text(**filters) -> str:
    return ", ".join(f"{name}={value}" for name, value in filters.items() if value is not None) or "all"


def next_cursor(rows: list, limit: int) -> str | None:
    return encode_cursor(rows[limit - 1][0].id) if len(rows) > limit else None


# Mailing lists --------------------------------------------------------------------------

@operation("GET", "/lists", summary="Mailing lists with their subscriber counts", response=people.MailingListList)
def list_lists():
    with db_reader() as session:
        return people.MailingListList(items=[people.MailingList.of(s) for s in lists.list_lists(session)])


@operation("POST", "/lists", summary="Create a mailing list", body=people.ListCreate, response=people.MailingList,
           status=201, answer="The list.", headers={"Location": "The new list's URL."}, errors=(409,),
           description="With the consent wording people agree to when they join (version 1). "
                       "A slug that is taken is answered 409.")
def create_list(body: people.ListCreate):
    with db_session() as session:
        created = people.MailingList.of(lists.create_list(
            session, slug=body.slug, name=body.name, description=body.description, wording=body.consent_wording,
            public=body.public, now=utcnow()))
    _lists_changed()
    return created, {"Location": url_for("api.get_list", id=created.id)}


@operation("GET", "/lists/<int:id>", summary="One mailing list", response=people.MailingList)
def get_list(id: int):
    with db_reader() as session:
        return people.MailingList.of(lists.get_list(session, id))


LIST = "/lists/<int:id>"


def _lists_changed() -> None:
    """The public form of this process sees the change at once (others within their cache's TTL)."""
    current_app.extensions["public_lists"].forget()


@operation("PATCH", LIST, summary="Change a mailing list's name, description or visibility", body=people.ListPatch,
           response=people.MailingList, answer="The list as changed.",
           description="Fields left out keep their values. The slug and the consent wording are not changed "
                       "here: wording changes are new versions (POST /lists/{id}/wordings).")
def update_list(id: int, body: people.ListPatch):
    changes = body.model_dump(exclude_unset=True)
    with db_session() as session:
        changed = people.MailingList.of(lists.update_list(session, id, **changes))
        audit(session, "list_edit", f"list {changed.slug}: {', '.join(sorted(changes)) or 'nothing'}")
    _lists_changed()
    return changed


@operation("POST", LIST + "/archive", summary="Archive a mailing list", body=people.ListArchive, body_required=False,
           response=people.MailingList, answer="The list, archived.", errors=(409,),
           description="The list takes no new signups from then on: the public form, the preferences page, "
                       "POST /subscriptions and imports refuse it. Its subscriptions and consent history stay, "
                       "and unsubscribe links keep working; no new newsletter can be made or scheduled for it. "
                       "Refused (409) while mail is still planned for it: a newsletter scheduled, sending or "
                       "paused, an automation active or paused that sends as it or starts from it. Archiving "
                       "again changes nothing.")
def archive_list(id: int, body: people.ListArchive | None):
    with db_session() as session:
        archived = people.MailingList.of(lists.archive_list(session, id, now=utcnow()))
        audit(session, "list_archive", f"list {archived.slug}")
    _lists_changed()
    return archived


@operation("GET", LIST + "/wordings", summary="Every version of a list's consent wording",
           response=people.ConsentWordingList, answer="The versions, newest first.")
def list_wordings(id: int):
    with db_reader() as session:
        versions = lists.wording_versions(session, id)
    return people.ConsentWordingList(items=[people.ConsentWordingVersion.of(v, current=i == 0)
                                            for i, v in enumerate(versions)])


@operation("POST", LIST + "/wordings", summary="New version of a list's consent wording", body=people.WordingCreate,
           response=people.ConsentWordingVersion, status=201, answer="The new version, now current.",
           errors=(409,),
           description="Everyone who joins from now on is shown this text, and their consent events point at "
                       "this version; people who joined earlier keep the version they were shown. A version "
                       "is never changed. The same text as the current version is refused (422); an archived "
                       "list, or `replaces_version` that is no longer the current one, is answered 409.")
def create_wording(id: int, body: people.WordingCreate):
    with db_session() as session, field_renamed(consent_wording="text"):
        wording = lists.add_wording(session, id, body.text, now=utcnow(), replaces_version=body.replaces_version)
        slug = lists.get_list(session, id).mailing_list.slug
        audit(session, "list_wording", f"list {slug}: consent wording version {wording.version}")
        created = people.ConsentWordingVersion.of(lists.WordingVersion(wording, 0), current=True)
    _lists_changed()
    return created


# Subscriptions --------------------------------------------------------------------------

@operation("GET", "/subscriptions", summary="Subscriptions, newest first", query=people.SubscriptionQuery,
           response=people.SubscriptionPage, answer="One page of subscriptions.",
           description="Personal data: every call is recorded in the audit log.")
def list_subscriptions(query: people.SubscriptionQuery):
    with db_session() as session:
        list_id = lists.list_id_for(session, query.list) if query.list else None
        rows = lists.search_subscriptions(session, contact_id=query.contact_id, list_id=list_id,
                                          status=query.status, before_id=query.cursor, limit=query.limit)
        audit(session, "api_view_subscriptions",
              filters_text(contact=query.contact_id, list=query.list, status=query.status))
    return people.SubscriptionPage(items=[people.Subscription.of(*row) for row in rows[:query.limit]],
                                   next_cursor=next_cursor(rows, query.limit))


@operation("POST", "/subscriptions", summary="Start a subscription (double opt-in)", body=people.SubscriptionCreate,
           response=people.Accepted, status=202, answer="Accepted; the same answer for every address.",
           description="What the public form does: the person gets a mail with a confirmation link, and the "
                       "consent ledger records the request with the list's current wording, `source_url` and "
                       "this token's name. The answer is the same whether the address is new, already "
                       "subscribed, unsubscribed or suppressed (a suppressed address gets no mail).")
def create_subscription(body: people.SubscriptionCreate):
    with db_session() as session, field_renamed(lists="list"):
        contacts.subscribe(session, mailer().settings, email=body.email, name=body.name, lists=[body.list],
                           consent_given=body.consent, timezone=body.timezone,
                           context=ledger_context(body.source_url), now=utcnow())
    return people.Accepted(status="pending_confirmation", message=SUBSCRIPTION_ACCEPTED)


@operation("GET", "/subscriptions/<int:id>", summary="One subscription", response=people.Subscription,
           description="Personal data: every call is recorded in the audit log.")
def get_subscription(id: int):
    with db_session() as session:
        found = people.Subscription.of(*lists.get_subscription(session, id))
        audit(session, "api_view_subscriptions", f"subscription {id}")
    return found


@operation("DELETE", "/subscriptions/<int:id>", summary="Unsubscribe", response=people.Subscription,
           answer="The subscription, unsubscribed.",
           description="As if the person used their unsubscribe link: a withdrawal in the consent ledger (noting "
                       "this token) and mail for the list not yet sent is cancelled. Unsubscribing again "
                       "changes nothing.")
def delete_subscription(id: int):
    with db_session() as session:
        found = people.Subscription.of(*lists.withdraw(session, mailer().settings, id, context=ledger_context(),
                                                       now=utcnow()))
        audit(session, "api_unsubscribe", f"subscription {id}")
    return found


# Consent events -------------------------------------------------------------------------

@operation("GET", "/consent-events", summary="The consent ledger, newest first", query=people.ConsentEventQuery,
           response=people.ConsentEventPage, answer="One page of events.",
           description="Read only: the ledger is append-only. Source URL, IP, user agent and note are personal "
                       "and shown to tokens of owners only. Every call is recorded in the audit log.")
def list_consent_events(query: people.ConsentEventQuery):
    with db_session() as session:
        list_id = lists.list_id_for(session, query.list) if query.list else None
        personal = token_is_owner(session)
        rows = consent.search_events(session, contact_id=query.contact_id, list_id=list_id, action=query.action,
                                     before_id=query.cursor, limit=query.limit)
        audit(session, "api_view_consent_events",
              filters_text(contact=query.contact_id, list=query.list, action=query.action)
              + ("; with personal fields" if personal else ""))
    return people.ConsentEventPage(
        items=[people.ConsentEvent.of(*row, personal=personal) for row in rows[:query.limit]],
        next_cursor=next_cursor(rows, query.limit))


# Contacts -------------------------------------------------------------------------------

CONTACT = "/contacts/<int:id>"
OWNERS_ONLY = "Only for tokens of an owner (403 otherwise). Recorded in the audit log."


def _search_kind(q: str | None) -> str:
    """Audit detail for a search: what was searched by, never the text (it may be an address)."""
    return directory.search_mode(q)


@contextmanager
def _no_contact(contact_id: int):
    try:
        yield
    except NotFound:
        raise ApiError(404, "not_found", f"No contact {contact_id}.") from None


@operation("GET", "/contacts", summary="Search contacts, newest first", query=people.ContactQuery,
           response=people.ContactPage, answer="One page of contacts.",
           description="`q`: a whole address is matched exactly; three or more characters are found anywhere "
                       "in the address or the name (\"maria\", \"example.org\"); one or two are the start of "
                       "a name. `status` is the subscription status on "
                       "`list` (or on any list). Erased contacts are left out. Every call is recorded in the "
                       "audit log.")
def list_contacts(query: people.ContactQuery):
    with db_session() as session:
        list_id = lists.list_id_for(session, query.list) if query.list else None
        rows = directory.search_contacts(session, q=query.q or "", list_id=list_id, status=query.status,
                                         before_id=query.cursor, limit=query.limit)
        audit(session, "api_view_contacts",
              filters_text(search=_search_kind(query.q), list=query.list, status=query.status))
    more = len(rows) > query.limit
    rows = rows[:query.limit]
    return people.ContactPage(items=[people.ContactSummary.of(row) for row in rows],
                              next_cursor=encode_cursor(rows[-1].id) if more else None)


@operation("GET", "/contacts/export", summary="Export contacts (CSV or JSON, streamed)", query=people.ExportQuery,
           response=people.ContactExportList, errors=(403,),
           answer="Every (not erased) contact matching the filters, oldest first.",
           content={"text/csv": {"type": "string"}},
           headers={"Content-Disposition": "attachment; filename=\"contacts.csv\" (or .json)."},
           description="Streamed from the database, so any number of contacts. In the CSV, a cell a spreadsheet "
                       "would run as a formula starts with an apostrophe. " + OWNERS_ONLY)
def export_contacts(query: people.ExportQuery):
    with db_session() as session:
        require_owner(session)
        list_id = lists.list_id_for(session, query.list) if query.list else None
        directory.check_filters(session, list_id, query.status)  # before the stream: it cannot turn into a 4xx
        audit(session, "api_export_contacts", f"format={query.format} " +
              filters_text(list=query.list, status=query.status))
    read_sessions = mailer().read_sessions

    def chunks():
        with read_sessions() as session:
            rows = directory.export_contacts(session, list_id=list_id, status=query.status)
            yield from (directory.contacts_csv(rows) if query.format == "csv" else directory.contacts_json(rows))

    return Response(stream_with_context(chunks()), mimetype="text/csv" if query.format == "csv" else "application/json",
                    headers={"Content-Disposition": f'attachment; filename="contacts.{query.format}"'})


@operation("GET", CONTACT, summary="One contact", response=people.ContactDetail,
           description="Subscriptions, registrations, recent mail and consent history. Recorded in the audit log.")
def get_contact(id: int):
    with db_session() as session, _no_contact(id):
        found = people.ContactDetail.of(directory.contact_detail(session, id))
        audit(session, "api_view_contact", f"contact {id}")
    return found


def _staff(session) -> frontdesk.Staff:
    return frontdesk.staff_member(session, g.api_user_id, f"api token '{g.api_token_name}'")


@operation("POST", "/contacts", summary="Add a contact (the front desk)", body=people.ContactCreate,
           response=people.ContactDetail, status=201, answer="The contact.", errors=(409,),
           headers={"Location": "The new contact's URL."},
           description="Joining `lists` needs either `consent_note` (how the person gave consent: recorded in the "
                       "consent ledger per list, with this token's user as the source, and the lists are active "
                       "at once) or `send_confirmation` (double opt-in: pending until the person clicks). A known "
                       "address is answered 409, as is a suppressed one. Recorded in the audit log.")
def create_contact(body: people.ContactCreate):
    with db_session() as session:
        added = frontdesk.add_contact(session, mailer().settings, _staff(session), email=body.email, name=body.name,
                                      timezone=body.timezone, lists=body.lists, consent_note=body.consent_note,
                                      send_confirmation=body.send_confirmation, now=utcnow())
        found = people.ContactDetail.of(directory.contact_detail(session, added.contact_id))
    return found, {"Location": url_for("api.get_contact", id=found.id)}


@operation("PATCH", CONTACT, summary="Correct a contact's name or time zone", body=people.ContactUpdate,
           response=people.ContactDetail, errors=(409,),
           description="Each change is recorded in the audit log with its old and new value. The address cannot "
                       "be changed. An erased contact is answered 409.")
def update_contact(id: int, body: people.ContactUpdate):
    changes = body.model_dump(exclude_unset=True)
    with db_session() as session, _no_contact(id):
        frontdesk.edit_contact(session, _staff(session), id, **changes, now=utcnow())
        found = people.ContactDetail.of(directory.contact_detail(session, id))
    return found


@operation("POST", CONTACT + "/unsubscribe", summary="Unsubscribe a contact from one list or all",
           body=people.ContactUnsubscribe, response=people.Unsubscribed, errors=(409,),
           description="For a person who asked staff: as their unsubscribe link does, a withdrawal in the consent "
                       "ledger (with this token's user as the source and `note`) and queued mail for the list "
                       "cancelled. Give `list`, or `all: true`. Recorded in the audit log.")
def unsubscribe_contact(id: int, body: people.ContactUnsubscribe):
    if (body.list is None) == (not body.all):
        raise InvalidInput("list", "Give either a list or all: true.")
    with db_session() as session, _no_contact(id):
        withdrawn = frontdesk.unsubscribe_contact(session, mailer().settings, _staff(session), id,
                                                  list_slug=None if body.all else body.list, note=body.note,
                                                  now=utcnow())
    return people.Unsubscribed(withdrawn=withdrawn)


@operation("POST", CONTACT + "/invite", summary="Invite a contact to a list (double opt-in)",
           body=people.ContactInvite, response=people.Invited, errors=(409,),
           description="The only way back onto a list: a confirmation mail, as the public form sends; the person "
                       "joins when they click its link. For a pending subscription, resends it (at most once per "
                       "resend interval). A suppressed or erased contact is answered 409. Recorded in the audit "
                       "log.")
def invite_contact(id: int, body: people.ContactInvite):
    with db_session() as session, _no_contact(id), field_renamed(lists="list"):
        outcome = frontdesk.invite(session, mailer().settings, _staff(session), id, list_slug=body.list,
                                   now=utcnow())
    return people.Invited(outcome=outcome.value)


@operation("GET", CONTACT + "/export", summary="Everything held about one person (GDPR Art. 15)",
           response=people.ContactExport, errors=(403,), description=OWNERS_ONLY)
def export_contact(id: int):
    with db_session() as session, _no_contact(id):
        require_owner(session)
        found = people.ContactExport.model_validate(privacy.export_contact_by_id(session, id))
        audit(session, "api_export_contact", f"contact {id}")
    return found


@operation("DELETE", CONTACT, summary="Erase a person (GDPR Art. 17)", response=people.ErasureResult,
           answer="What was done.",
           description="The address goes on the suppression list as a keyed hash (no later signup or import mails "
                       "it), unsent mail is cancelled, subscriptions end, seats at webinars to come go to the "
                       "waitlist, and the name, address and zone are removed everywhere; the consent ledger keeps "
                       "its events, redacted. Erasing again changes nothing. Needs a write token of an owner "
                       "(403 otherwise). Recorded in the audit log.")
def erase_contact(id: int):
    with db_session() as session, _no_contact(id):
        require_owner(session)
        report = privacy.erase_contact(session, mailer().settings, id, now=utcnow())
        audit(session, "api_erase_contact", f"contact {id}")
    return people.ErasureResult.of(report)
