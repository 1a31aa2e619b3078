"""API models for custom fields and a contact's values of them."""
from __future__ import annotations

from typing import Annotated, Dict, List, Literal, Union

from pydantic import Field as Described, StringConstraints

from mailer.audience import fields
from mailer.web.api.api_schemas import Request, Response, Text, UtcDatetime, omittable

FieldKey = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,39}$"),
                     Described(description="Lowercase letters, digits and underscores, starting with a letter; mail "
                                           "reads it as {{ contact.fields.<key> }}. Cannot change later.",
                               examples=["clinic"])]
Label = Annotated[Text(1, 100), Described(examples=["Clinic"])]
Choices = Annotated[List[Text(1, fields.CHOICE_MAX)], Described(
    max_length=fields.CHOICES_MAX, description="The allowed values of a `choice` field (none for other types).",
    examples=[["North", "South"]])]
FieldTypeName = Annotated[Literal[fields.TYPES], Described(
    description="text, number, date (YYYY-MM-DD), yes_no (yes / no) or choice (one of `choices`).")]
Value = Union[Annotated[str, StringConstraints(max_length=fields.VALUE_MAX)], float, bool, None]


class FieldCreate(Request):
    key: FieldKey
    label: Label
    type: FieldTypeName
    choices: Choices = []


class FieldPatch(Request):
    """Only the fields given change; the key and type never do."""

    label: Label = omittable()
    choices: Choices = omittable()


class CustomField(Response):
    id: int
    key: str
    label: str
    type: str
    choices: list[str]
    created_at: UtcDatetime
    updated_at: UtcDatetime
    archived_at: UtcDatetime | None = Described(description="Set once archived: no longer offered; values stay.")

    @classmethod
    def of(cls, row) -> "CustomField":
        return cls(id=row.id, key=row.key, label=row.label, type=row.type, choices=fields.choices_of(row),
                   created_at=row.created_at, updated_at=row.updated_at, archived_at=row.archived_at)


class FieldPage(Response):
    items: list[CustomField]


class ContactFieldsPatch(Request):
    values: Annotated[Dict[str, Value], Described(
        max_length=200, description="Values by field key, checked by the field's type (a number field refuses "
                                    "\"abc\", naming the field); null or \"\" clears a value. Keys not given stay.",
        examples=[{"clinic": "North", "visits": 3}])]


class ContactFields(Response):
    contact_id: int
    values: dict[str, str] = Described(description="The contact's values by field key, in canonical text.")
