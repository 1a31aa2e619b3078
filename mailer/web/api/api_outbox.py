"""API routes for mail and seats: deliveries (the outbox, read only) and webinar
registrations made or cancelled on a visitor's behalf. They register on
mailer.web.api.api's blueprint."""
from __future__ import annotations

from mailer.web.api import api_schemas_people as people
from mailer.campaigns import webinars
from mailer.delivery import outbox
from mailer.web.api.api_schemas import WebinarRegistration
from mailer.db import utcnow
from mailer.errors import NotFound
from mailer.web import db_session, mailer
from mailer.web.api.api import ApiError, operation
from mailer.web.api.api_people import audit, filters_text, ledger_context, next_cursor

REGISTERED = ("The seat is reserved, or a place on the waitlist when the webinar is full; the person gets the "
              "details by mail.")


# Deliveries -----------------------------------------------------------------------------

@operation("GET", "/deliveries", summary="Deliveries (the outbox), newest first", query=people.DeliveryQuery,
           response=people.DeliveryPage, answer="One page of deliveries.",
           description="Every message to one person is one delivery. Filter by status, kind, text in the last "
                       "error, contact or what it is about (`ref_id`). Recipients are personal data: every "
                       "call is recorded in the audit log.")
def list_deliveries(query: people.DeliveryQuery):
    with db_session() as session:
        rows = outbox.search_deliveries(session, status=query.status, kind=query.kind, error=query.error,
                                        contact_id=query.contact_id, ref_id=query.ref_id, before_id=query.cursor,
                                        limit=query.limit)
        audit(session, "api_view_deliveries",
              filters_text(status=query.status, kind=query.kind, error=query.error and "(text)",
                           contact=query.contact_id, ref=query.ref_id))
    return people.DeliveryPage(items=[people.Delivery.of(*row) for row in rows[:query.limit]],
                               next_cursor=next_cursor(rows, query.limit))


@operation("GET", "/deliveries/<int:id>", summary="One delivery", response=people.Delivery,
           description="Personal data: every call is recorded in the audit log.")
def get_delivery(id: int):
    with db_session() as session:
        found = people.Delivery.of(*outbox.get_delivery(session, id))
        audit(session, "api_view_deliveries", f"delivery {id}")
    return found


# Webinar registrations ------------------------------------------------------------------

@operation("POST", "/webinars/<int:id>/registrations", summary="Reserve a seat for a visitor",
           body=people.RegistrationCreate, response=people.Accepted, status=202,
           answer="Accepted; the same answer whether or not the address was registered already.",
           description="Registers at once: a seat, or a place on the waitlist when the webinar is full, and a "
                       "mail with the details (and a calendar invitation for a seat). (The public form only "
                       "stores the request, which the worker registers within about a second, so that its "
                       "answer tells a visitor nothing; this caller holds a token and may read the registrants.) "
                       "Only a published webinar that has not started takes registrations (422 otherwise).")
def create_registration(id: int, body: people.RegistrationCreate):
    with db_session() as session:
        webinar = webinars.get_webinar(session, id)
        try:
            webinars.register(session, mailer().settings, webinar.slug, email=body.email, name=body.name,
                              timezone=body.timezone, newsletter=body.newsletter,
                              context=ledger_context(body.source_url), now=utcnow())
        except NotFound:
            raise ApiError(422, "not_open", "This webinar is not open for registration: it is a draft, "
                                            "cancelled, or has started.") from None
    return people.Accepted(status="registered_or_waitlisted", message=REGISTERED)


@operation("DELETE", "/registrations/<int:id>", summary="Cancel a registration", response=WebinarRegistration,
           answer="The registration, cancelled.",
           description="As if the registrant used the cancel link in their mails: their webinar mail not yet sent "
                       "is cancelled and, if they had a seat, the first person on the waitlist gets it and is "
                       "told. Cancelling again changes nothing. Recorded in the audit log.")
def delete_registration(id: int):
    with db_session() as session:
        registration = webinars.get_registration(session, id)
        webinars.cancel_registration(session, registration.token, now=utcnow())
        audit(session, "api_cancel_registration", f"registration {id}")
        return WebinarRegistration.of(registration, registration.contact.email, registration.contact.name)
