"""What delivery is handed when the app is built (mailer.build): the kinds of mail, each
with its builder and the subscription state its list mail needs, and the audience
hooks, the few things delivery asks of the audience (the unsubscribe and preferences
links of a list message, withdrawing a complainer, an address's canonical form).
Delivery defines no kind of mail and imports nothing from audience/ or campaigns/: the
modules that define the kinds declare them (their MAIL_KINDS)."""
from __future__ import annotations

import dataclasses
from typing import Callable

from mailer.models import SubscriptionStatus


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of mail, as the module that makes it declares it to the sender."""

    # (batch, delivery) → template context (dict), a compiled template (with .render), or outbox.Skip.
    builder: Callable
    # Mail tied to a list goes out only while the person's subscription is in this state.
    required_subscription: str = SubscriptionStatus.ACTIVE
    # What staff read for it (deliveries, a contact's mail): "Webinar confirmation".
    label: str = ""


@dataclasses.dataclass(frozen=True)
class AudienceHooks:
    """What delivery asks of the audience; mailer.build fills it from mailer.audience."""

    # (settings, contact_id, list_id) → (https link, mailto) to unsubscribe from that list.
    unsubscribe_links: Callable[..., tuple[str, str]]
    # (settings, contact_id) → the link to the person's preferences page.
    preferences_url: Callable[..., str]
    # (session, address, *, source_url, note, now) → how many list subscriptions were withdrawn.
    unsubscribe_everywhere: Callable[..., int]
    # (raw address) → its canonical form; errors.InvalidInput when it is not an address.
    normalise_email: Callable[[str], str]


# The registry of this process: kind → builder, kind → the subscription state it needs.
BUILDERS: dict[str, Callable] = {}
REQUIRED_SUBSCRIPTION: dict[str, str] = {}
LABELS: dict[str, str] = {}
_hooks: list[AudienceHooks] = []


def register(kinds: dict[str, Kind], hooks: AudienceHooks) -> None:
    """Hand delivery the kinds of mail and the audience hooks (mailer.build does, for
    every app, worker and command)."""
    BUILDERS.clear()
    REQUIRED_SUBSCRIPTION.clear()
    LABELS.clear()
    for name, kind in kinds.items():
        BUILDERS[name] = kind.builder
        REQUIRED_SUBSCRIPTION[name] = kind.required_subscription
        LABELS[name] = label_of(name, kind)
    _hooks[:] = [hooks]


def label_of(name: str, kind: Kind) -> str:
    """Its declared words, else its key made readable ("blog_digest" → "Blog digest")."""
    return kind.label or name.replace("_", " ").capitalize()


def kind_label(kind: str) -> str:
    """A kind of mail in words, for staff pages; an unregistered key as it is stored."""
    return LABELS.get(kind, kind)


def audience() -> AudienceHooks:
    if not _hooks:
        raise RuntimeError("delivery has no audience hooks: build the app first (mailer.build)")
    return _hooks[0]
