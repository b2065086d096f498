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

# Text a person reads: surrounding whitespace is removed, and the document says so by asking for text that
# starts and ends with a visible character (and holds no NUL, which no command takes).
_EDGE = r"[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000\ufeff]"
_TEXT = {"pattern": rf"^{_EDGE}([^\u0000]*{_EDGE})?$"}

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
                 Field(json_schema_extra=_TEXT)]
Code = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500),
                   Field(examples=["the record date falls on a public holiday"], json_schema_extra=_TEXT)]
# What the process tells a depositor: it quotes a Reason (a cancellation's) after the action id.
Message = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2_000),
                    Field(examples=["DIV-2026-01: 25.00 USD will be paid on 2026-07-15"], json_schema_extra=_TEXT)]
Quantity = Annotated[int, Field(gt=0, le=MAX_HOLDING, examples=[100])]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$"), Field(examples=["USD"])]

# The same codes, with an example each in the OpenAPI document.
AccountNumber = Annotated[Code, Field(examples=["ACC-0001"])]
ActionId = Annotated[Code, Field(examples=["DIV-2026-01"])]
Reference = Annotated[Code, Field(examples=["SETTLE-42"])]

# Who may send what over the write API (a token's `roles` or `scope`). RecordEntitlements and
# NotifyDepositor are internal: only the corporate-action process sends them, through the bus.
REGISTRAR: frozenset[str] = frozenset({"registrar"})
CUSTODY: frozenset[str] = frozenset({"custody"})
CORPORATE_ACTIONS: frozenset[str] = frozenset({"corporate-actions"})


class RegisterSecurity(Command):
    allowed_roles: ClassVar[frozenset[str]] = REGISTRAR
    isin: Isin
    name: Annotated[Name, Field(examples=["Apple Inc. common stock"])]
    currency: Currency


class OpenAccount(Command):
    allowed_roles: ClassVar[frozenset[str]] = CUSTODY
    account_number: AccountNumber
    holder_name: Annotated[Name, Field(examples=["Ann Example"])]


class CreditHoldings(Command):
    allowed_roles: ClassVar[frozenset[str]] = CUSTODY
    account_number: AccountNumber
    isin: Isin
    quantity: Quantity
    reference: Reference | None = None


class DebitHoldings(Command):
    allowed_roles: ClassVar[frozenset[str]] = CUSTODY
    account_number: AccountNumber
    isin: Isin
    quantity: Quantity
    reference: Reference | None = None


class TransferHoldings(Command):
    allowed_roles: ClassVar[frozenset[str]] = CUSTODY
    from_account: AccountNumber
    to_account: Annotated[Code, Field(examples=["ACC-0002"])]
    isin: Isin
    quantity: Quantity
    reference: Reference | None = None


class AnnounceCorporateAction(Command):
    allowed_roles: ClassVar[frozenset[str]] = CORPORATE_ACTIONS
    action_id: ActionId
    isin: Isin
    record_date: Annotated[date, Field(examples=["2026-06-30"])]
    payment_date: Annotated[date | None, Field(examples=["2026-07-15"])] = None
    terms: Terms


class ValidateCorporateAction(Command):
    allowed_roles: ClassVar[frozenset[str]] = CORPORATE_ACTIONS
    action_id: ActionId


class RejectCorporateAction(Command):
    allowed_roles: ClassVar[frozenset[str]] = CORPORATE_ACTIONS
    action_id: ActionId
    reasons: Annotated[list[Reason], Field(min_length=1, max_length=20)]


class CancelCorporateAction(Command):
    allowed_roles: ClassVar[frozenset[str]] = CORPORATE_ACTIONS
    action_id: ActionId
    reason: Reason


class RecordEntitlements(Command, internal=True):
    """Issued by the corporate-action process once an action is validated (no HTTP route)."""

    action_id: ActionId
    entitlements: Annotated[list[Entitlement], Field(max_length=100_000)]


class NotifyDepositor(Command, internal=True):
    """Issued by the corporate-action process (no HTTP route); a second identical one is refused as a
    duplicate."""

    account_number: AccountNumber
    action_id: ActionId
    kind: NotificationKind
    message: Message
