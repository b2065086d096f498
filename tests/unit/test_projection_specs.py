"""The example's projections and its corporate-action process, specified with given/when/then
(``framework.testing.ProjectionSpec`` / ``ProcessSpec``): given events, then rows; given events, then
commands issued. Every ``then`` also checks the rows against a replay of the same events."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from example_app.accounts import Account, AccountOpened, SecuritiesCredited, SecuritiesDebited
from example_app.commands import NotifyDepositor, RecordEntitlements
from example_app.corporate_actions import (
    CashTerms,
    CorporateAction,
    CorporateActionAnnounced,
    CorporateActionCancelled,
    CorporateActionValidated,
    Entitlement,
    EntitlementsCalculated,
)
from example_app.securities import Security, SecurityRegistered
from framework.errors import InvalidTransition
from framework.testing import GIVEN_AT, ProcessSpec, ProjectionSpec
from projections.cards import CardsProjector, CorporateActionCard, SecurityRow
from projections.entitlements import EntitlementRow, EntitlementsProjector
from projections.holdings import AccountRow, Holding, HoldingMovement, HoldingsProjector
from projections.process import CorporateActionProcess

from .domain import APPLE

ADA, BOB = Account.id_for("A-1"), Account.id_for("B-2")
ACTION = CorporateAction.id_for("CA-1")
RECORD = GIVEN_AT.date() + timedelta(days=10)
DIVIDEND = CashTerms(kind="cash_dividend", amount_per_unit=Decimal("0.50"), currency="USD")
ANNOUNCED = CorporateActionAnnounced(action_id="CA-1", isin=APPLE, record_date=RECORD, payment_date=None,
                                     terms=DIVIDEND)
ADA_ENTITLED = Entitlement(account_number="A-1", holding=10, cash_amount=Decimal("5.00"), currency="USD")
BOB_ENTITLED = Entitlement(account_number="B-2", holding=4, cash_amount=Decimal("2.00"), currency="USD")


def opened(number: str, holder: str = "Ada") -> AccountOpened:
    return AccountOpened(account_number=number, holder_name=holder)


# --- holdings ------------------------------------------------------------------------------------


def test_a_credit_and_a_debit_leave_the_difference() -> None:
    spec = ProjectionSpec(HoldingsProjector()).given(
        Account, ADA, opened("A-1"), SecuritiesCredited(isin=APPLE, quantity=10),
        SecuritiesDebited(isin=APPLE, quantity=4))
    spec.then(
        AccountRow(aggregate_id=ADA, account_number="A-1", holder_name="Ada", opened_at=GIVEN_AT),
        Holding(account_number="A-1", isin=APPLE, quantity=6),
        HoldingMovement(account_number="A-1", isin=APPLE, position=2, value_date=GIVEN_AT.date(), delta=10, balance=10),
        HoldingMovement(account_number="A-1", isin=APPLE, position=3, value_date=GIVEN_AT.date(), delta=-4, balance=6),
    )


def test_a_holding_debited_to_nothing_disappears_and_its_history_stays() -> None:
    later = GIVEN_AT + timedelta(days=2)
    spec = ProjectionSpec(HoldingsProjector())
    spec.given(Account, ADA, opened("A-1"), SecuritiesCredited(isin=APPLE, quantity=3))
    spec.given(Account, ADA, SecuritiesDebited(isin=APPLE, quantity=3), at=later)  # a second delivery
    spec.then_no_rows(Holding)
    assert [(m.value_date, m.balance) for m in spec.rows(HoldingMovement)] == [(GIVEN_AT.date(), 3), (later.date(), 0)]


def test_accounts_are_held_apart() -> None:
    spec = ProjectionSpec(HoldingsProjector())
    spec.given(Account, ADA, opened("A-1"), SecuritiesCredited(isin=APPLE, quantity=1))
    spec.given(Account, BOB, opened("B-2", "Bob"), SecuritiesCredited(isin=APPLE, quantity=2))
    spec.then(Holding(account_number="B-2", isin=APPLE, quantity=2),  # in any order
              Holding(account_number="A-1", isin=APPLE, quantity=1))


# --- cards and entitlements ------------------------------------------------------------------------


def test_an_announced_action_is_a_card_named_after_its_security() -> None:
    validated_at = GIVEN_AT + timedelta(hours=1)
    spec = ProjectionSpec(CardsProjector()).given(
        Security, Security.id_for(APPLE), SecurityRegistered(isin=APPLE, name="Apple Inc.", currency="USD"))
    spec.given(CorporateAction, ACTION, ANNOUNCED)
    spec.given(CorporateAction, ACTION, CorporateActionValidated(action_id="CA-1"), at=validated_at)
    spec.then(
        SecurityRow(isin=APPLE, name="Apple Inc.", currency="USD"),
        CorporateActionCard(action_id="CA-1", isin=APPLE, security_name="Apple Inc.", kind="cash_dividend",
                            record_date=RECORD, payment_date=None, terms=DIVIDEND.model_dump(mode="json"),
                            status="validated", announced_at=GIVEN_AT, updated_at=validated_at,
                            position=3),  # of the validation: the card's last change
    )


def test_a_cancelled_action_cancels_its_entitlements() -> None:
    calculated = EntitlementsCalculated(action_id="CA-1", record_date=RECORD, entitlements=[ADA_ENTITLED])
    spec = ProjectionSpec(EntitlementsProjector()).given(CorporateAction, ACTION, calculated)
    row = EntitlementRow(action_id="CA-1", account_number="A-1", record_date=RECORD, holding=10,
                         cash_amount=Decimal("5.00"), currency="USD", new_units=None, status="active")
    spec.then(row)
    spec.when(CorporateAction, ACTION, CorporateActionCancelled(action_id="CA-1", reason="withdrawn"))
    spec.then(row.model_copy(update={"status": "cancelled"}))


# --- the corporate-action process --------------------------------------------------------------------


def holders() -> ProcessSpec[CorporateActionProcess]:
    """Ada holds 10 and Bob 4 on the record date; a credit after it does not count."""
    return (ProcessSpec(CorporateActionProcess())
            .given(Account, ADA, opened("A-1"), SecuritiesCredited(isin=APPLE, quantity=10))
            .given(Account, BOB, opened("B-2", "Bob"), SecuritiesCredited(isin=APPLE, quantity=4))
            .given(Account, BOB, SecuritiesCredited(isin=APPLE, quantity=99), at=GIVEN_AT + timedelta(days=30))
            .given(CorporateAction, ACTION, ANNOUNCED))


def test_a_validated_action_issues_its_entitlements_from_holdings_at_the_record_date() -> None:
    spec = holders().when(CorporateAction, ACTION, CorporateActionValidated(action_id="CA-1"))
    spec.then_issued(RecordEntitlements(action_id="CA-1", entitlements=[ADA_ENTITLED, BOB_ENTITLED]))
    spec.then_scheduled()


def test_recorded_entitlements_notify_each_depositor_in_their_own_order() -> None:
    calculated = EntitlementsCalculated(action_id="CA-1", record_date=RECORD, entitlements=[ADA_ENTITLED, BOB_ENTITLED])
    spec = holders().given(CorporateAction, ACTION, CorporateActionValidated(action_id="CA-1"))
    spec.when(CorporateAction, ACTION, calculated).then_issued(
        NotifyDepositor(account_number="A-1", action_id="CA-1", kind="entitlement",
                        message="Corporate action CA-1: 5.00 USD on 10 units held at the record date"),
        NotifyDepositor(account_number="B-2", action_id="CA-1", kind="entitlement",
                        message="Corporate action CA-1: 2.00 USD on 4 units held at the record date"),
    )
    assert [e.ordering_key for e in spec.issued[-2:]] == ["A-1", "B-2"]


def test_a_cancellation_reaches_the_depositors_who_were_told() -> None:
    calculated = EntitlementsCalculated(action_id="CA-1", record_date=RECORD, entitlements=[BOB_ENTITLED])
    spec = holders().given(CorporateAction, ACTION, CorporateActionValidated(action_id="CA-1"), calculated)
    spec.when(CorporateAction, ACTION, CorporateActionCancelled(action_id="CA-1", reason="withdrawn")).then_issued(
        NotifyDepositor(account_number="B-2", action_id="CA-1", kind="cancellation",
                        message="Corporate action CA-1 was cancelled: withdrawn"))


def test_entitlements_refused_because_the_action_was_cancelled_are_business_as_usual() -> None:
    spec = holders().given(CorporateAction, ACTION, CorporateActionValidated(action_id="CA-1"))
    cancelled = InvalidTransition("cannot calculate entitlements of CA-1: it is cancelled", reason="action_cancelled")
    spec.when_refused(RecordEntitlements, cancelled).then_issued()
    assert spec.issued == [] and spec.views.dead_letters() == []


def test_any_other_refusal_is_parked_for_an_operator() -> None:
    spec = holders().given(CorporateAction, ACTION, CorporateActionValidated(action_id="CA-1"))
    spec.when_refused(RecordEntitlements, InvalidTransition("already", reason="already_calculated")).then_issued()
    (letter,) = spec.views.dead_letters()
    assert (letter.event_name, letter.error) == ("command RecordEntitlements", "InvalidTransition: already")
