"""Domain errors: the web layer maps them to 4xx answers, the CLI to messages."""


class DomainError(Exception):
    code = "error"


class InvalidInput(DomainError):
    """Input a person can correct; `field` names what to correct."""

    code = "invalid"

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class NotFound(DomainError):
    code = "not_found"


class Conflict(InvalidInput):
    """Input that clashes with what exists (a slug taken); the API answers 409."""

    code = "conflict"
