"""API routes for custom fields (list, create, read, change, archive) and a contact's
values of them (read, change: audited). Each view calls mailer.audience.fields; they
register on mailer.web.api.api's blueprint."""
from __future__ import annotations

from flask import g, url_for

from mailer.audience import fields
from mailer.audience.directory import get_contact
from mailer.db import utcnow
from mailer.errors import InvalidInput
from mailer.staff import users
from mailer.web import db_reader, db_session
from mailer.web.api import api_schemas_fields as schemas
from mailer.web.api.api import operation

FIELD = "/fields/<int:id>"


@operation("GET", "/fields", summary="Custom fields by label, archived ones too", response=schemas.FieldPage)
def list_fields():
    with db_reader() as session:
        return schemas.FieldPage(items=[schemas.CustomField.of(f) for f in fields.list_fields(session, archived=True)])


@operation("POST", "/fields", summary="Create a custom field", body=schemas.FieldCreate, response=schemas.CustomField,
           status=201, answer="The field.", headers={"Location": "The new field's URL."}, errors=(409,),
           description="A key in use (archived fields keep theirs) is a 409.")
def create_field(body: schemas.FieldCreate):
    with db_session() as session:
        row = fields.create_field(session, key=body.key, label=body.label, type=body.type, choices=body.choices,
                                  now=utcnow())
        created = schemas.CustomField.of(row)
        users.record(session, g.api_user_id, "field.create", f"field {row.key}")
    return created, {"Location": url_for("api.get_field", id=created.id)}


@operation("GET", FIELD, summary="One custom field", response=schemas.CustomField)
def get_field(id: int):
    with db_reader() as session:
        return schemas.CustomField.of(fields.get_field(session, id))


@operation("PATCH", FIELD, summary="Change a custom field's label or choices", body=schemas.FieldPatch,
           response=schemas.CustomField, answer="The field as changed.",
           description="A choice that contacts still hold cannot be removed.")
def update_field(id: int, body: schemas.FieldPatch):
    with db_session() as session:
        row = fields.update_field(session, id, label=body.label, choices=body.choices, now=utcnow())
        users.record(session, g.api_user_id, "field.update", f"field {row.key}")
        return schemas.CustomField.of(row)


@operation("POST", FIELD + "/archive", summary="Archive a custom field", response=schemas.CustomField,
           answer="The field, archived.", description="No longer offered for editing or imports; values stay.")
def archive_field(id: int):
    with db_session() as session:
        row = fields.archive_field(session, id, now=utcnow())
        users.record(session, g.api_user_id, "field.archive", f"field {row.key}")
        return schemas.CustomField.of(row)


@operation("GET", "/contacts/<int:id>/fields", summary="A contact's custom field values",
           response=schemas.ContactFields, description="Personal data: recorded in the audit log.")
def get_contact_fields(id: int):
    with db_session() as session:
        get_contact(session, id)
        found = schemas.ContactFields(contact_id=id, values=fields.values_of(session, id))
        users.record(session, g.api_user_id, "api_view_contact_fields", f"contact {id}")
    return found


@operation("PATCH", "/contacts/<int:id>/fields", summary="Change a contact's custom field values",
           body=schemas.ContactFieldsPatch, response=schemas.ContactFields, answer="The contact's values now.",
           description="Every value is checked before any is stored; a problem names the field's key. Recorded "
                       "in the audit log, old → new, by key.")
def update_contact_fields(id: int, body: schemas.ContactFieldsPatch):
    with db_session() as session:
        try:
            changes = fields.set_values(session, id, body.values)
        except InvalidInput as exc:
            raise InvalidInput(f"values.{exc.field}", exc.message) from None
        if changes:
            users.record(session, g.api_user_id, "contact.fields", f"contact {id}: {fields.change_text(changes)}")
        return schemas.ContactFields(contact_id=id, values=fields.values_of(session, id))
