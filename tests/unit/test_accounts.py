"""Accounts: credits, debits, transfers; a holding never goes negative."""

from __future__ import annotations

from typing import Any

import pytest

from example_app.accounts import MAX_HOLDING, Account, AccountOpened, SecuritiesCredited, SecuritiesDebited
from example_app.commands import CreditHoldings, DebitHoldings, OpenAccount, TransferHoldings
from example_app.handlers import router
from example_app.securities import Security, SecurityRegistered
from framework import (
    AggregateNotFound,
    AlreadyExists,
    CommandBus,
    ConcurrencyConflict,
    InvalidCommand,
    RuleViolation,
)
from framework.adapters.memory import MemoryEventStore
from framework.mapper import from_stored
from framework.store import IdempotencyCompletion, StoredEvent
from framework.testing import CommandSpec, given

from .domain import APPLE, SAP, append_events

OPENED = AccountOpened(account_number="A-1", holder_name="Ada")
OPENED_B = AccountOpened(account_number="B-2", holder_name="Bob")
APPLE_REGISTERED = SecurityRegistered(isin=APPLE, name="Apple", currency="USD")


def credited(quantity: int, isin: str = APPLE, reference: str | None = None) -> SecuritiesCredited:
    return SecuritiesCredited(isin=isin, quantity=quantity, reference=reference)


def debited(quantity: int, isin: str = APPLE, reference: str | None = None) -> SecuritiesDebited:
    return SecuritiesDebited(isin=isin, quantity=quantity, reference=reference)


# --- the aggregate ---------------------------------------------------------------------------


def test_opening_records_the_account() -> None:
    given(Account).when(lambda _: Account.open("A-1", "Ada")).then(OPENED)


def test_account_ids_come_from_account_numbers() -> None:
    assert Account.open("A-1", "Ada").id == Account.id_for("A-1")


def test_credit() -> None:
    given(Account, OPENED).when(lambda a: a.credit(APPLE, 10, "ref-1")).then(credited(10, reference="ref-1"))


def test_debit_within_the_holding() -> None:
    given(Account, OPENED, credited(10)).when(lambda a: a.debit(APPLE, 4)).then(debited(4))


def test_debit_of_the_whole_holding_is_allowed() -> None:
    given(Account, OPENED, credited(10)).when(lambda a: a.debit(APPLE, 10)).then(debited(10))


def test_debit_beyond_the_holding_is_refused() -> None:
    given(Account, OPENED, credited(10)).when(lambda a: a.debit(APPLE, 11)).then_raises(
        RuleViolation, match="cannot debit 11", reason="insufficient_holdings"
    )


def test_debit_of_a_security_never_held_is_refused() -> None:
    given(Account, OPENED, credited(10)).when(lambda a: a.debit(SAP, 1)).then_raises(
        RuleViolation, reason="insufficient_holdings"
    )


def test_debit_after_the_holding_was_spent_is_refused() -> None:
    spent = given(Account, OPENED, credited(10), debited(7), debited(3))
    spent.when(lambda a: a.debit(APPLE, 1)).then_raises(RuleViolation, reason="insufficient_holdings")


@pytest.mark.parametrize("quantity", [0, -1, -100])
@pytest.mark.parametrize("method", ["credit", "debit"])
def test_quantities_must_be_positive(method: str, quantity: int) -> None:
    given(Account, OPENED, credited(10)).when(lambda a: getattr(a, method)(APPLE, quantity)).then_raises(
        RuleViolation, reason="non_positive_quantity"
    )


def test_a_credit_up_to_the_holding_limit_is_allowed() -> None:
    given(Account, OPENED, credited(MAX_HOLDING - 10)).when(lambda a: a.credit(APPLE, 10)).then(credited(10))


def test_a_credit_beyond_the_holding_limit_is_refused() -> None:
    # 10**15 units: far above any issue, and what keeps holdings, balances and a split's new units in a bigint.
    given(Account, OPENED, credited(MAX_HOLDING - 10), credited(5, SAP)).when(
        lambda a: a.credit(APPLE, 11)
    ).then_raises(RuleViolation, match="exceed the limit of 1000000000000000 units", reason="holding_limit_exceeded")


def test_the_holding_limit_is_per_security() -> None:
    given(Account, OPENED, credited(MAX_HOLDING)).when(lambda a: a.credit(SAP, MAX_HOLDING)).then(
        credited(MAX_HOLDING, SAP)
    )


def test_holdings_are_folded_per_isin_and_empty_ones_disappear() -> None:
    account = Account.from_events(
        Account.id_for("A-1"), [OPENED, credited(10), credited(5, SAP), debited(10), credited(2, SAP)]
    )
    assert account.holdings == {SAP: 7}
    assert account.holding(APPLE) == 0
    assert account.version == 5


def test_a_refused_debit_leaves_the_state_alone() -> None:
    account = Account.from_events(Account.id_for("A-1"), [OPENED, credited(3)])
    with pytest.raises(RuleViolation):
        account.debit(APPLE, 4)
    assert account.holding(APPLE) == 3
    assert account.version == 2
    assert account.pending_events == ()


# --- the handlers ----------------------------------------------------------------------------


def spec_with_accounts(*extra: Any) -> CommandSpec:
    spec = CommandSpec(router).given(Security, Security.id_for(APPLE), APPLE_REGISTERED)
    spec.given(Account, Account.id_for("A-1"), OPENED, *extra)
    return spec.given(Account, Account.id_for("B-2"), OPENED_B)


def test_open_account_command() -> None:
    CommandSpec(router).when(OpenAccount(account_number="A-1", holder_name="Ada")).then(OPENED)


def test_opening_an_account_twice_raises_already_exists() -> None:
    spec_with_accounts().when(OpenAccount(account_number="A-1", holder_name="Someone")).then_raises(
        AlreadyExists, match="A-1"
    )


def test_credit_command() -> None:
    spec_with_accounts().when(
        CreditHoldings(account_number="A-1", isin=APPLE, quantity=5, reference="r1")
    ).then(credited(5, reference="r1"))


def test_credit_of_an_unknown_security_raises_not_found() -> None:
    spec_with_accounts().when(CreditHoldings(account_number="A-1", isin=SAP, quantity=5)).then_raises(
        AggregateNotFound, match=SAP
    )


def test_credit_to_an_unknown_account_raises_not_found() -> None:
    spec_with_accounts().when(CreditHoldings(account_number="Z-9", isin=APPLE, quantity=5)).then_raises(
        AggregateNotFound, match="Z-9"
    )


def test_debit_command() -> None:
    spec_with_accounts(credited(5)).when(DebitHoldings(account_number="A-1", isin=APPLE, quantity=5)).then(
        debited(5)
    )


def test_debit_command_never_makes_a_balance_negative() -> None:
    spec_with_accounts(credited(5)).when(
        DebitHoldings(account_number="A-1", isin=APPLE, quantity=6)
    ).then_raises(RuleViolation, reason="insufficient_holdings")


def test_a_transfer_that_would_overfill_the_target_is_refused_and_debits_nothing() -> None:
    spec = spec_with_accounts(credited(5))
    spec.given(Account, Account.id_for("B-2"), credited(MAX_HOLDING - 4))
    spec.when(TransferHoldings(from_account="A-1", to_account="B-2", isin=APPLE, quantity=5)).then_raises(
        RuleViolation, reason="holding_limit_exceeded"
    )


def test_debit_from_an_unknown_account_raises_not_found() -> None:
    spec_with_accounts().when(DebitHoldings(account_number="Z-9", isin=APPLE, quantity=1)).then_raises(
        AggregateNotFound
    )


@pytest.mark.parametrize("quantity", [0, -5, 10**15 + 1])
def test_command_quantities_are_bounded(quantity: int) -> None:
    with pytest.raises(InvalidCommand) as caught:
        router.parse("CreditHoldings", {"account_number": "A-1", "isin": APPLE, "quantity": quantity})
    assert [e.path for e in caught.value.errors] == ["/quantity"]


@pytest.mark.parametrize("number", ["", "-lead", "has space", "x" * 65, "ü"])
def test_account_numbers_are_codes(number: str) -> None:
    with pytest.raises(InvalidCommand) as caught:
        router.parse("OpenAccount", {"account_number": number, "holder_name": "Ada"})
    assert [e.path for e in caught.value.errors] == ["/account_number"]


def transfer(quantity: int, source: str = "A-1", target: str = "B-2") -> TransferHoldings:
    return TransferHoldings(
        from_account=source, to_account=target, isin=APPLE, quantity=quantity, reference="t1"
    )


def test_transfer_debits_one_account_and_credits_the_other_in_one_command() -> None:
    spec_with_accounts(credited(10)).when(transfer(4)).then(
        debited(4, reference="t1"), credited(4, reference="t1")
    )


def test_transfer_to_the_same_account_is_refused() -> None:
    spec_with_accounts(credited(10)).when(transfer(4, "A-1", "A-1")).then_raises(
        RuleViolation, reason="same_account"
    )


def test_transfer_beyond_the_holding_is_refused_and_writes_nothing() -> None:
    spec = spec_with_accounts(credited(3))
    head = spec.store.head()
    spec.when(transfer(4)).then_raises(RuleViolation, reason="insufficient_holdings")
    assert spec.store.head() == head


def test_transfer_to_an_unknown_account_writes_nothing() -> None:
    spec = spec_with_accounts(credited(10))
    head = spec.store.head()
    spec.when(transfer(4, "A-1", "Z-9")).then_raises(AggregateNotFound, match="Z-9")
    assert spec.store.head() == head


def test_transfer_from_an_unknown_account_writes_nothing() -> None:
    spec = spec_with_accounts()
    head = spec.store.head()
    spec.when(transfer(4, "Z-9", "A-1")).then_raises(AggregateNotFound, match="Z-9")
    assert spec.store.head() == head


class ConflictOnTarget(MemoryEventStore):
    """Before each of the first ``times`` appends, another writer credits account B-2,
    taking the version the transfer is about to give B-2's credit."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times
        self.armed = False

    def append(
        self, events: list[StoredEvent], completion: IdempotencyCompletion | None = None  # type: ignore[override]
    ) -> list[int]:
        if self.armed and self.times > 0:
            self.times -= 1
            append_events(self, Account, Account.id_for("B-2"), credited(1000, SAP))
        return super().append(events, completion)


def seed_for_transfer(store: MemoryEventStore) -> None:
    append_events(store, Security, Security.id_for(APPLE), APPLE_REGISTERED)
    append_events(store, Account, Account.id_for("A-1"), OPENED, credited(10))
    append_events(store, Account, Account.id_for("B-2"), OPENED_B)


def account(store: MemoryEventStore, number: str) -> Account:
    events = [from_stored(s).event for s in store.read_stream(Account.id_for(number))]
    return Account.from_events(Account.id_for(number), events)


def test_a_transfer_whose_credit_conflicts_writes_neither_side() -> None:
    store = ConflictOnTarget(times=1)
    seed_for_transfer(store)
    store.armed = True
    with pytest.raises(ConcurrencyConflict):
        CommandBus(router, store, max_attempts=1).execute(transfer(4))
    assert account(store, "A-1").holdings == {APPLE: 10}  # the debit did not land alone
    assert account(store, "B-2").holdings == {SAP: 1000}


def test_a_transfer_retried_after_a_conflict_lands_both_sides_on_fresh_state() -> None:
    store = ConflictOnTarget(times=1)
    seed_for_transfer(store)
    store.armed = True
    CommandBus(router, store, max_attempts=2).execute(transfer(4))
    assert account(store, "A-1").holdings == {APPLE: 6}
    assert account(store, "B-2").holdings == {SAP: 1000, APPLE: 4}
