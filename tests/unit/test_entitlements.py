"""Entitlements at the record date, and depositor notifications sent exactly once."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest

from example_app.accounts import MAX_HOLDING, Account, AccountOpened
from example_app.commands import (
    AnnounceCorporateAction,
    CancelCorporateAction,
    CreditHoldings,
    NotifyDepositor,
    OpenAccount,
    RecordEntitlements,
    RegisterSecurity,
    ValidateCorporateAction,
)
from example_app.corporate_actions import (
    MAX_SPLIT_RATIO,
    CashTerms,
    CorporateAction,
    CorporateActionAnnounced,
    CorporateActionCancelled,
    CorporateActionRejected,
    CorporateActionValidated,
    Entitlement,
    EntitlementsCalculated,
    SplitTerms,
    Terms,
)
from example_app.handlers import router
from example_app.notifications import DepositorNotified, Notification
from framework import AggregateNotFound, AlreadyExists, CommandBus, CommandRejected, Event, InvalidTransition
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_views import MemoryViewStore
from framework.dispatcher import Dispatcher
from framework.mapper import from_stored
from framework.projector import HandlerContext, Refusal
from framework.storable import INT64_MAX
from framework.testing import CommandSpec, given
from framework.views import OutboxStats
from framework.worker import ProjectionWorker
from projections.process import CorporateActionProcess

from .domain import APPLE

RECORD = date(2024, 6, 14)


def announced(terms: Terms) -> CorporateActionAnnounced:
    return CorporateActionAnnounced(action_id="CA-1", isin=APPLE, record_date=RECORD, payment_date=None, terms=terms)


DIVIDEND = CashTerms(kind="cash_dividend", amount_per_unit=Decimal("0.125"), currency="USD")
VALIDATED = CorporateActionValidated(action_id="CA-1")


def action(terms: Terms, *events: Event) -> CorporateAction:
    return CorporateAction.from_events(CorporateAction.id_for("CA-1"), [announced(terms), *events])


def test_cash_entitlements_are_amount_per_unit_times_holding_in_cents() -> None:
    entitlements = action(DIVIDEND).entitle({"B-2": 3, "A-1": 100})
    assert entitlements == [
        Entitlement(account_number="A-1", holding=100, cash_amount=Decimal("12.50"), currency="USD"),
        Entitlement(account_number="B-2", holding=3, cash_amount=Decimal("0.38"), currency="USD"),
    ]  # sorted by account; 0.375 rounds to the even cent
    assert [e.cash_amount.as_tuple().exponent for e in entitlements if e.cash_amount] == [-2, -2]


@pytest.mark.parametrize(
    ("new", "old", "holding", "units"),
    [(2, 1, 10, 10), (3, 2, 10, 5), (3, 2, 11, 5), (1, 10, 25, -23)],  # fractions are dropped
)
def test_split_entitlements_are_the_new_units_due(new: int, old: int, holding: int, units: int) -> None:
    terms = SplitTerms(kind="stock_split", new_units=new, old_units=old)
    (entitlement,) = action(terms).entitle({"A-1": holding})
    assert entitlement == Entitlement(account_number="A-1", holding=holding, new_units=units)


def test_the_largest_split_of_the_largest_holding_fits_64_bits() -> None:
    terms = SplitTerms(kind="stock_split", new_units=MAX_SPLIT_RATIO, old_units=1)
    (entitlement,) = action(terms).entitle({"A-1": MAX_HOLDING})
    assert entitlement.new_units == (MAX_SPLIT_RATIO - 1) * MAX_HOLDING
    assert entitlement.new_units <= INT64_MAX
    assert RecordEntitlements(action_id="CA-1", entitlements=[entitlement])  # the command takes it


def test_cash_of_the_largest_amount_on_the_largest_holding_is_exact() -> None:
    # 34 digits before rounding to the cent: the default decimal context (28) would fail to quantize it.
    terms = CashTerms(kind="coupon", amount_per_unit=Decimal("999999999999.999999"), currency="EUR")
    (entitlement,) = action(terms).entitle({"A-1": MAX_HOLDING})
    assert entitlement.cash_amount == Decimal("999999999999999999000000000.00")
    assert str(entitlement.cash_amount) == "999999999999999999000000000.00"


def test_accounts_holding_nothing_are_not_entitled() -> None:
    assert action(DIVIDEND).entitle({"A-1": 0, "B-2": 0}) == []


def entitlements() -> list[Entitlement]:
    return [Entitlement(account_number="A-1", holding=4, cash_amount=Decimal("0.50"), currency="USD")]


def calculated() -> EntitlementsCalculated:
    return EntitlementsCalculated(action_id="CA-1", record_date=RECORD, entitlements=entitlements())


def test_entitlements_are_recorded_once_validated() -> None:
    given(CorporateAction, announced(DIVIDEND), VALIDATED).when(
        lambda a: a.record_entitlements(entitlements())
    ).then(calculated())


@pytest.mark.parametrize(
    ("history", "reason"),
    [
        ((), "action_announced"),
        ((CorporateActionRejected(action_id="CA-1", reasons=["x"]),), "action_rejected"),
        ((CorporateActionCancelled(action_id="CA-1", reason="x"),), "action_cancelled"),
        ((VALIDATED, CorporateActionCancelled(action_id="CA-1", reason="x")), "action_cancelled"),
    ],
)
def test_entitlements_need_a_validated_action(history: tuple[Event, ...], reason: str) -> None:
    given(CorporateAction, announced(DIVIDEND), *history).when(
        lambda a: a.record_entitlements(entitlements())
    ).then_raises(InvalidTransition, reason=reason)


def test_entitlements_are_recorded_only_once() -> None:
    given(CorporateAction, announced(DIVIDEND), VALIDATED, calculated()).when(
        lambda a: a.record_entitlements(entitlements())
    ).then_raises(InvalidTransition, reason="already_calculated")


def test_an_action_with_entitlements_can_still_be_cancelled() -> None:
    cancelled = CorporateActionCancelled(action_id="CA-1", reason="withdrawn")
    given(CorporateAction, announced(DIVIDEND), VALIDATED, calculated()).when(
        lambda a: a.cancel("withdrawn")
    ).then(cancelled)


def test_record_entitlements_command() -> None:
    spec = CommandSpec(router).given(
        CorporateAction, CorporateAction.id_for("CA-1"), announced(DIVIDEND), VALIDATED
    )
    spec.when(RecordEntitlements(action_id="CA-1", entitlements=entitlements())).then(calculated())


def test_record_entitlements_for_an_unknown_action_is_not_found() -> None:
    CommandSpec(router).when(RecordEntitlements(action_id="CA-9", entitlements=[])).then_raises(
        AggregateNotFound, match="CA-9"
    )


# --- notifications ---------------------------------------------------------------------------


def notify(kind: str = "entitlement", account: str = "A-1") -> NotifyDepositor:
    return NotifyDepositor.model_validate(
        {"account_number": account, "action_id": "CA-1", "kind": kind, "message": "You are entitled"}
    )


def with_account() -> CommandSpec:
    opened = AccountOpened(account_number="A-1", holder_name="Ada")
    return CommandSpec(router).given(Account, Account.id_for("A-1"), opened)


def test_a_depositor_is_notified() -> None:
    with_account().when(notify()).then(
        DepositorNotified(account_number="A-1", action_id="CA-1", kind="entitlement", message="You are entitled")
    )


def test_the_same_notification_twice_is_refused() -> None:
    spec = with_account()
    spec.when(notify()).then(
        DepositorNotified(account_number="A-1", action_id="CA-1", kind="entitlement", message="You are entitled")
    )
    spec.when(notify()).then_raises(AlreadyExists, match="CA-1/A-1/entitlement")


def test_a_cancellation_is_a_different_notification() -> None:
    spec = with_account()
    spec.when(notify("entitlement")).then(
        DepositorNotified(account_number="A-1", action_id="CA-1", kind="entitlement", message="You are entitled")
    )
    spec.when(notify("cancellation")).then(
        DepositorNotified(account_number="A-1", action_id="CA-1", kind="cancellation", message="You are entitled")
    )


def test_notifying_an_unknown_account_is_not_found() -> None:
    with_account().when(notify(account="Z-9")).then_raises(AggregateNotFound, match="Z-9")


def test_one_notification_id_per_action_account_and_kind() -> None:
    ids = {
        Notification.id_for(Notification.natural_key(action_id, account, kind))
        for action_id in ("CA-1", "CA-2")
        for account in ("A-1", "A-2")
        for kind in ("entitlement", "cancellation")
    }
    assert len(ids) == 8


def test_the_process_can_tell_depositors_the_longest_cancellation_reason() -> None:
    """The process quotes the reason (up to 500 characters) after the action id (up to 64) in a
    NotifyDepositor it builds itself: a message bounded like the reason would be refused in its
    handler, and the process would stop at the cancellation."""
    store = MemoryEventStore()
    bus = CommandBus(router, store)
    action_id, reason = "C" * 64, "r" * 500
    record_date = date.today() + timedelta(days=30)
    for command in [
        RegisterSecurity(isin=APPLE, name="Apple", currency="USD"),
        OpenAccount(account_number="A-1", holder_name="Ada"),
        CreditHoldings(account_number="A-1", isin=APPLE, quantity=10),
        AnnounceCorporateAction(action_id=action_id, isin=APPLE, record_date=record_date, terms=DIVIDEND),
        ValidateCorporateAction(action_id=action_id),
    ]:
        bus.execute(command)
    worker = ProjectionWorker(CorporateActionProcess(), MemoryViewStore(), store, bus)
    dispatcher = Dispatcher(worker, bus)
    _settle(worker, dispatcher, store)
    bus.execute(CancelCorporateAction(action_id=action_id, reason=reason))
    _settle(worker, dispatcher, store)

    notices = [from_stored(n).event for n in store.read_all(0, 1_000)]
    told = [(n.kind, n.message) for n in notices if isinstance(n, DepositorNotified)]
    assert [kind for kind, _ in told] == ["entitlement", "cancellation"]
    assert told[1][1] == f"Corporate action {action_id} was cancelled: {reason}"


def _settle(worker: ProjectionWorker, dispatcher: Dispatcher, store: MemoryEventStore) -> None:
    while True:
        worker.apply(store.read_all(worker.position, 10_000))
        if not dispatcher.run_once() and worker.position == store.head():
            return


def _validated_action(bus: CommandBus, action_id: str) -> None:
    for command in [
        RegisterSecurity(isin=APPLE, name="Apple", currency="USD"),
        OpenAccount(account_number="A-1", holder_name="Ada"),
        CreditHoldings(account_number="A-1", isin=APPLE, quantity=10),
        AnnounceCorporateAction(action_id=action_id, isin=APPLE, record_date=date.today() + timedelta(days=30),
                                terms=DIVIDEND),
        ValidateCorporateAction(action_id=action_id),
    ]:
        bus.execute(command)


def test_entitlements_of_an_action_cancelled_before_the_process_saw_it_are_not_a_dead_letter() -> None:
    """Validated, then cancelled before the process ran its RecordEntitlements: the refusal
    (``action_cancelled``) is business as usual, handled by ``on_refused``: nothing parked, nobody told."""
    store, views = MemoryEventStore(), MemoryViewStore()
    bus = CommandBus(router, store)
    _validated_action(bus, "CA-9")
    worker = ProjectionWorker(CorporateActionProcess(), views, store, bus)
    worker.apply(store.read_all(0, 1_000))  # RecordEntitlements is in the outbox, not sent yet
    assert views.outbox_stats()[CorporateActionProcess.name].pending == 1
    bus.execute(CancelCorporateAction(action_id="CA-9", reason="withdrawn"))
    _settle(worker, Dispatcher(worker, bus), store)

    events = [from_stored(n).event for n in store.read_all(0, 1_000)]
    assert not [e for e in events if isinstance(e, EntitlementsCalculated | DepositorNotified)]
    assert views.dead_letters() == []
    assert views.outbox_stats().get(CorporateActionProcess.name, OutboxStats()).pending == 0



@pytest.mark.parametrize(("command", "error", "handled"), [
    (RecordEntitlements(action_id="CA-1", entitlements=[]),
     InvalidTransition("cannot calculate entitlements of corporate action CA-1: it is cancelled",
                       reason="action_cancelled"), True),
    (RecordEntitlements(action_id="CA-1", entitlements=[]),
     InvalidTransition("entitlements of CA-1 are already calculated", reason="already_calculated"), False),
    (NotifyDepositor(account_number="A-1", action_id="CA-1", kind="entitlement", message="m"),
     InvalidTransition("cancelled", reason="action_cancelled"), False),
    (NotifyDepositor(account_number="A-1", action_id="CA-1", kind="entitlement", message="m"),
     AggregateNotFound("Account A-1 does not exist"), False),
    (None, InvalidTransition("cancelled", reason="action_cancelled"), False),
])
def test_only_the_cancellation_race_is_handled_anything_else_is_parked(
    command: RecordEntitlements | NotifyDepositor | None, error: CommandRejected, handled: bool,
) -> None:
    refusal = Refusal(command=command, error=error, idempotency_key="k")
    context = HandlerContext(envelope=None, views=None)  # type: ignore[arg-type]  # not looked at
    assert CorporateActionProcess().on_refused(refusal, context) is handled
