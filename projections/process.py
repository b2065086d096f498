"""The corporate-action process: entitlements at the record date, then exactly-once notifications.

Its commands go through its outbox: recorded with its position, dispatched after the commit.
Notices to one depositor run in order (the ordering key is the account), so a cancellation
notice never overtakes the entitlement notice it withdraws; different depositors' run concurrently.

It keeps its own copy of what it needs (accounts, net movements per day, announced
actions, who was entitled) in its own tables, updated in the same
transaction as its position, so its decisions never depend on how far
another projection has got.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from typing import Any
from uuid import UUID

from pydantic import TypeAdapter

from example_app.accounts import AccountOpened, SecuritiesCredited, SecuritiesDebited
from example_app.commands import NotifyDepositor, RecordEntitlements
from example_app.corporate_actions import (
    CorporateAction,
    CorporateActionAnnounced,
    CorporateActionCancelled,
    CorporateActionValidated,
    EntitlementsCalculated,
    Terms,
)
from framework.errors import RuleViolation
from framework.read import HandlerContext, ProcessManager, ReadModel, Refusal, on

__all__ = ["CorporateActionProcess"]

_TERMS: TypeAdapter[Any] = TypeAdapter(Terms)


class ProcessAccount(ReadModel):
    table = "accounts"
    key = ("aggregate_id",)

    aggregate_id: UUID
    account_number: str


class ProcessDailyDelta(ReadModel):
    """Net movement of one account in one security on one day: the holding at a record date is
    the sum of the days up to it, whatever the number of movements."""

    table = "daily_deltas"
    key = ("isin", "account_number", "value_date")

    isin: str
    account_number: str
    value_date: date
    delta: int


class ProcessAction(ReadModel):
    table = "actions"
    key = ("action_id",)

    action_id: str
    isin: str
    record_date: date
    terms: dict[str, Any]


class ProcessEntitled(ReadModel):
    table = "entitled"
    key = ("action_id", "account_number")

    action_id: str
    account_number: str


class CorporateActionProcess(ProcessManager):
    name = "corporate_action_process"
    read_models = (ProcessAccount, ProcessDailyDelta, ProcessAction, ProcessEntitled)

    @on(AccountOpened)
    def opened(self, event: AccountOpened, context: HandlerContext) -> None:
        context.views.put(ProcessAccount(
            aggregate_id=context.envelope.aggregate_id, account_number=event.account_number
        ))

    @on(SecuritiesCredited)
    def credited(self, event: SecuritiesCredited, context: HandlerContext) -> None:
        self._move(context, event.isin, event.quantity)

    @on(SecuritiesDebited)
    def debited(self, event: SecuritiesDebited, context: HandlerContext) -> None:
        self._move(context, event.isin, -event.quantity)

    def _move(self, context: HandlerContext, isin: str, delta: int) -> None:
        envelope = context.envelope
        account = context.views.get(ProcessAccount, envelope.aggregate_id)
        assert account is not None and envelope.position is not None
        day = envelope.metadata.recorded_at.date()
        known = context.views.get(ProcessDailyDelta, isin, account.account_number, day)
        context.views.put(ProcessDailyDelta(
            isin=isin, account_number=account.account_number, value_date=day,
            delta=(known.delta if known else 0) + delta,
        ))

    @on(CorporateActionAnnounced)
    def announced(self, event: CorporateActionAnnounced, context: HandlerContext) -> None:
        context.views.put(ProcessAction(
            action_id=event.action_id, isin=event.isin, record_date=event.record_date,
            terms=event.terms.model_dump(mode="json"),
        ))

    @on(CorporateActionValidated)
    def validated(self, event: CorporateActionValidated, context: HandlerContext) -> None:
        action = context.views.get(ProcessAction, event.action_id)
        assert action is not None, f"validated unknown action {event.action_id}"
        holdings = self._holdings_at(context, action.isin, action.record_date)
        terms_holder = CorporateAction.blank(CorporateAction.id_for(action.action_id))
        terms_holder.terms = _TERMS.validate_python(action.terms)
        entitlements = terms_holder.entitle(holdings)
        # Refused if the action was cancelled meanwhile: then nobody is told of entitlements (on_refused).
        context.issue(RecordEntitlements(action_id=action.action_id, entitlements=entitlements),
                      discriminator="entitlements")

    @on(EntitlementsCalculated)
    def entitled(self, event: EntitlementsCalculated, context: HandlerContext) -> None:
        for entitlement in event.entitlements:
            context.views.put(ProcessEntitled(action_id=event.action_id,
                                              account_number=entitlement.account_number))
            context.issue(NotifyDepositor(
                account_number=entitlement.account_number, action_id=event.action_id,
                kind="entitlement", message=_entitlement_message(event.action_id, entitlement),
            ), discriminator=f"notify:{entitlement.account_number}", ordering_key=entitlement.account_number)

    @on(CorporateActionCancelled)
    def cancelled(self, event: CorporateActionCancelled, context: HandlerContext) -> None:
        for entitled in context.views.select(ProcessEntitled, action_id=event.action_id):
            context.issue(NotifyDepositor(
                account_number=entitled.account_number, action_id=event.action_id,
                kind="cancellation",
                message=f"Corporate action {event.action_id} was cancelled: {event.reason}",
            ), discriminator=f"cancel:{entitled.account_number}", ordering_key=entitled.account_number)

    def on_refused(self, refusal: Refusal, context: HandlerContext) -> bool:
        """Entitlements refused because the action was cancelled first are business as usual: nobody
        was told of them, so there is nothing to withdraw. Anything else is parked for an operator."""
        return (isinstance(refusal.command, RecordEntitlements) and isinstance(refusal.error, RuleViolation)
                and refusal.error.reason == "action_cancelled")

    @staticmethod
    def _holdings_at(context: HandlerContext, isin: str, record_date: date) -> dict[str, int]:
        holdings: dict[str, int] = defaultdict(int)
        for day in context.views.select(ProcessDailyDelta, isin=isin):
            if day.value_date <= record_date:
                holdings[day.account_number] += day.delta
        return dict(holdings)


def _entitlement_message(action_id: str, entitlement: Any) -> str:
    if entitlement.cash_amount is not None:
        return (f"Corporate action {action_id}: {entitlement.cash_amount} {entitlement.currency}"
                f" on {entitlement.holding} units held at the record date")
    return f"Corporate action {action_id}: {entitlement.new_units} new units for {entitlement.holding} held"
