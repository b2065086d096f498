"""Corporate actions: announced with a record date and terms, then validated or rejected, maybe cancelled."""

from __future__ import annotations

from datetime import date
from decimal import Decimal, localcontext
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from framework import Aggregate, Event, InvalidTransition, RuleViolation, event

__all__ = [
    "MAX_SPLIT_RATIO",
    "ActionStatus",
    "CashTerms",
    "CorporateAction",
    "CorporateActionAnnounced",
    "CorporateActionCancelled",
    "CorporateActionRejected",
    "CorporateActionValidated",
    "Entitlement",
    "EntitlementsCalculated",
    "SplitTerms",
    "Terms",
]


MAX_SPLIT_RATIO = 1_000
"""A split gives at most this many new units for each unit held.

Real splits stay far below it (1,000-for-1 is already extreme). With ``accounts.MAX_HOLDING`` it
keeps a split's new units within 10**18, so they fit the entitlements' bigint column. The event's
terms allow any ratio, so actions recorded before this rule still read back: the rule is the
announcement's.
"""
# Cash entitlements are exact: an amount per unit of up to 18 digits times a holding of up to 16
# has 34 digits; the default context (28) would round it, and quantize() would fail above 28.
_CASH_PRECISION = 40


class CashTerms(BaseModel):
    """A cash distribution per unit held: a dividend on shares, a coupon on bonds."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["cash_dividend", "coupon"]
    amount_per_unit: Annotated[Decimal, Field(gt=0, max_digits=18, decimal_places=6, examples=["0.25"])]
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$", examples=["USD"])]


class SplitTerms(BaseModel):
    """``new_units`` for every ``old_units`` held."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["stock_split"]
    new_units: Annotated[int, Field(gt=0, examples=[2])]
    old_units: Annotated[int, Field(gt=0, examples=[1])]


Terms = Annotated[CashTerms | SplitTerms, Field(discriminator="kind")]


class ActionStatus(StrEnum):
    NONE = "none"
    ANNOUNCED = "announced"
    VALIDATED = "validated"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


class Entitlement(BaseModel):
    """What one account is due: cash for a distribution, new units for a split."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    account_number: Annotated[str, Field(examples=["ACC-0001"])]
    holding: Annotated[int, Field(gt=0, examples=[1_000])]
    cash_amount: Annotated[Decimal | None, Field(examples=["250.00"])] = None
    currency: Annotated[str | None, Field(examples=["USD"])] = None
    new_units: int | None = None


class CorporateActionAnnounced(Event):
    action_id: str
    isin: str
    record_date: date
    payment_date: date | None
    terms: Terms


class CorporateActionValidated(Event):
    action_id: str


class CorporateActionRejected(Event):
    action_id: str
    reasons: list[str]


class EntitlementsCalculated(Event):
    action_id: str
    record_date: date
    entitlements: list[Entitlement]


class CorporateActionCancelled(Event):
    action_id: str
    reason: str


class CorporateAction(Aggregate):
    action_id: str = ""
    isin: str = ""
    record_date: date | None = None
    payment_date: date | None = None
    terms: Terms | None = None
    status: ActionStatus = ActionStatus.NONE
    entitlements_calculated: bool = False

    @classmethod
    def announce(
        cls, action_id: str, isin: str, record_date: date, payment_date: date | None, terms: Terms
    ) -> CorporateAction:
        if payment_date is not None and payment_date < record_date:
            raise RuleViolation(
                f"payment date {payment_date} is before record date {record_date}",
                reason="payment_before_record_date",
            )
        if isinstance(terms, SplitTerms) and terms.new_units > MAX_SPLIT_RATIO * terms.old_units:
            raise RuleViolation(
                f"a split of {terms.new_units} for {terms.old_units} gives more than"
                f" {MAX_SPLIT_RATIO} new units per unit held",
                reason="split_ratio_out_of_range",
            )
        action = cls.blank(cls.id_for(action_id))
        action._announced(
            action_id=action_id, isin=isin, record_date=record_date,
            payment_date=payment_date, terms=terms,
        )
        return action

    def validate_action(self) -> None:
        self._require(ActionStatus.ANNOUNCED, "validate")
        self._validated(action_id=self.action_id)

    def reject(self, reasons: list[str]) -> None:
        self._require(ActionStatus.ANNOUNCED, "reject")
        self._rejected(action_id=self.action_id, reasons=reasons)

    def entitle(self, holdings: dict[str, int]) -> list[Entitlement]:
        """The entitlements of these holdings at the record date, under this action's terms."""
        assert self.terms is not None
        return [_entitlement(self.terms, account, held) for account, held in sorted(holdings.items())
                if held > 0]

    def record_entitlements(self, entitlements: list[Entitlement]) -> None:
        self._require(ActionStatus.VALIDATED, "calculate entitlements of")
        if self.entitlements_calculated:
            raise InvalidTransition(
                f"entitlements of {self.action_id} are already calculated", reason="already_calculated"
            )
        assert self.record_date is not None
        self._entitlements_calculated(
            action_id=self.action_id, record_date=self.record_date, entitlements=entitlements
        )

    def cancel(self, reason: str) -> None:
        self._require(ActionStatus.ANNOUNCED, "cancel", also=ActionStatus.VALIDATED)
        self._cancelled(action_id=self.action_id, reason=reason)

    def _require(self, status: ActionStatus, verb: str, also: ActionStatus | None = None) -> None:
        if self.status not in (status, also):
            raise InvalidTransition(
                f"cannot {verb} corporate action {self.action_id}: it is {self.status}",
                reason=f"action_{self.status}",
            )

    @event(CorporateActionAnnounced)
    def _announced(
        self, action_id: str, isin: str, record_date: date, payment_date: date | None, terms: Terms
    ) -> None:
        self.action_id, self.isin, self.terms = action_id, isin, terms
        self.record_date, self.payment_date = record_date, payment_date
        self.status = ActionStatus.ANNOUNCED

    @event(CorporateActionValidated)
    def _validated(self, action_id: str) -> None:
        self.status = ActionStatus.VALIDATED

    @event(CorporateActionRejected)
    def _rejected(self, action_id: str, reasons: list[str]) -> None:
        self.status = ActionStatus.REJECTED

    @event(EntitlementsCalculated)
    def _entitlements_calculated(
        self, action_id: str, record_date: date, entitlements: list[Entitlement]
    ) -> None:
        self.entitlements_calculated = True

    @event(CorporateActionCancelled)
    def _cancelled(self, action_id: str, reason: str) -> None:
        self.status = ActionStatus.CANCELLED


def _entitlement(terms: Terms, account_number: str, holding: int) -> Entitlement:
    if isinstance(terms, CashTerms):
        with localcontext(prec=_CASH_PRECISION):
            amount = (terms.amount_per_unit * holding).quantize(Decimal("0.01"))
        return Entitlement(account_number=account_number, holding=holding, cash_amount=amount,
                           currency=terms.currency)
    new_units = holding * terms.new_units // terms.old_units - holding
    return Entitlement(account_number=account_number, holding=holding, new_units=new_units)
