"""The example's commands: what a back-office client can ask for."""

from __future__ import annotations

from datetime import date
from typing import Annotated, ClassVar

from pydantic import Field, StringConstraints

from example_app.accounts import MAX_HOLDING
from example_app.corporate_actions import Entitlement, Terms
from example_app.notifications import NotificationKind
from example_app.securities import Isin
from framework import Command

__all__ = [
    "AnnounceCorporateAction",
    "CancelCorporateAction",
    "CreditHoldings",
    "DebitHoldings",
    "NotifyDepositor",
    "OpenAccount",
    "RecordEntitlements",
    "RegisterSecurity",
    "RejectCorporateAction",
    "TransferHoldings",
    "ValidateCorporateAction",
]

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Code = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
# What the process tells a depositor: it quotes a Reason (a cancellation's) after the action id.
Message = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2_000)]
Quantity = Annotated[int, Field(gt=0, le=MAX_HOLDING)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]

# Who may send what over the write API (a token's `roles` or `scope`). RecordEntitlements and
# NotifyDepositor are internal: only the corporate-action process sends them, through the bus.
REGISTRAR: frozenset[str] = frozenset({"registrar"})
CUSTODY: frozenset[str] = frozenset({"custody"})
CORPORATE_ACTIONS: frozenset[str] = frozenset({"corporate-actions"})


class RegisterSecurity(Command):
    allowed_roles: ClassVar[frozenset[str]] = REGISTRAR
    isin: Isin
    name: Name
    currency: Currency


class OpenAccount(Command):
    allowed_roles: ClassVar[frozenset[str]] = CUSTODY
    account_number: Code
    holder_name: Name


class CreditHoldings(Command):
    allowed_roles: ClassVar[frozenset[str]] = CUSTODY
    account_number: Code
    isin: Isin
    quantity: Quantity
    reference: Code | None = None


class DebitHoldings(Command):
    allowed_roles: ClassVar[frozenset[str]] = CUSTODY
    account_number: Code
    isin: Isin
    quantity: Quantity
    reference: Code | None = None


class TransferHoldings(Command):
    allowed_roles: ClassVar[frozenset[str]] = CUSTODY
    from_account: Code
    to_account: Code
    isin: Isin
    quantity: Quantity
    reference: Code | None = None


class AnnounceCorporateAction(Command):
    allowed_roles: ClassVar[frozenset[str]] = CORPORATE_ACTIONS
    action_id: Code
    isin: Isin
    record_date: date
    payment_date: date | None = None
    terms: Terms


class ValidateCorporateAction(Command):
    allowed_roles: ClassVar[frozenset[str]] = CORPORATE_ACTIONS
    action_id: Code


class RejectCorporateAction(Command):
    allowed_roles: ClassVar[frozenset[str]] = CORPORATE_ACTIONS
    action_id: Code
    reasons: Annotated[list[Reason], Field(min_length=1, max_length=20)]


class CancelCorporateAction(Command):
    allowed_roles: ClassVar[frozenset[str]] = CORPORATE_ACTIONS
    action_id: Code
    reason: Reason


class RecordEntitlements(Command, internal=True):
    """Issued by the corporate-action process once an action is validated (no HTTP route)."""

    action_id: Code
    entitlements: Annotated[list[Entitlement], Field(max_length=100_000)]


class NotifyDepositor(Command, internal=True):
    """Issued by the corporate-action process (no HTTP route); a second identical one is refused as a
    duplicate."""

    account_number: Code
    action_id: Code
    kind: NotificationKind
    message: Message
