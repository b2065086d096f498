"""The largest values the example's commands accept go through every projection into PostgreSQL.

The commands refuse what a column cannot hold (NUL characters, ints beyond 64 bits, splits above
1,000 for 1, holdings above 10**15): what they accept, at its extremes, is projected without a halt.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal

import pytest
from support.postgres import PgDatabase

from example_app.accounts import MAX_HOLDING
from example_app.app import build_router
from example_app.commands import (
    AnnounceCorporateAction,
    CancelCorporateAction,
    CreditHoldings,
    OpenAccount,
    RegisterSecurity,
    ValidateCorporateAction,
)
from example_app.corporate_actions import MAX_SPLIT_RATIO
from framework import Command, CommandBus
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.dispatcher import Dispatcher
from framework.projector import Projector
from framework.storable import INT64_MAX
from framework.worker import ProjectionWorker, WorkerOptions
from projections.cards import CardsProjector, CorporateActionCard
from projections.entitlements import EntitlementRow, EntitlementsProjector
from projections.holdings import AccountRow, Holding, HoldingMovement, HoldingsProjector
from projections.notifications import NotificationRow, NotificationsProjector
from projections.process import CorporateActionProcess

pytestmark = [pytest.mark.postgres]

ISIN = "US0378331005"
SPLIT = "S" * 64  # the longest action ids
CASH = "C" * 64
REASON = "withdrawn " + "r" * 490  # the longest reason: the process quotes it to depositors
HOLDER = "Zoë\t東京 \U0001f600 " + "x" * 180  # any script, a control character that is not NUL


@pytest.fixture
def store(pg_database: PgDatabase, pg_schema: str) -> Iterator[PostgresEventStore]:
    store = PostgresEventStore(pg_database.settings(pg_schema))
    store.create_schema()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def views(pg_database: PgDatabase, pg_schema: str) -> Iterator[PostgresViewStore]:
    views = PostgresViewStore(pg_database.settings(pg_schema))
    views.create_schema()
    try:
        yield views
    finally:
        views.close()


def extremes() -> list[Command]:
    record_date = date.today() + timedelta(days=30)
    split = {"kind": "stock_split", "new_units": MAX_SPLIT_RATIO, "old_units": 1}
    cash = {"kind": "coupon", "amount_per_unit": "999999999999.999999", "currency": "EUR"}
    return [
        RegisterSecurity(isin=ISIN, name="Apple " + "n" * 194, currency="USD"),
        OpenAccount(account_number="A-MAX", holder_name=HOLDER),
        CreditHoldings(account_number="A-MAX", isin=ISIN, quantity=MAX_HOLDING),
        AnnounceCorporateAction.model_validate(
            {"action_id": SPLIT, "isin": ISIN, "record_date": record_date, "terms": split}),
        ValidateCorporateAction(action_id=SPLIT),
        AnnounceCorporateAction.model_validate(
            {"action_id": CASH, "isin": ISIN, "record_date": record_date, "terms": cash}),
        ValidateCorporateAction(action_id=CASH),
    ]


def settle(workers: list[ProjectionWorker], dispatcher: Dispatcher, store: PostgresEventStore) -> None:
    """Apply every worker and dispatch until nothing new is issued and everyone is at the head."""
    while True:
        for worker in workers:
            worker.apply(store.read_all(worker.position, 10_000))
        if not dispatcher.run_once() and all(w.position == store.head() for w in workers):
            return


def test_the_largest_accepted_values_are_projected_into_postgresql(
    store: PostgresEventStore, views: PostgresViewStore
) -> None:
    bus = CommandBus(build_router(), store)
    for command in extremes():
        bus.execute(command)
    projectors: list[Projector] = [HoldingsProjector(), EntitlementsProjector(), CardsProjector(),
                                   NotificationsProjector()]
    options = WorkerOptions(retry_backoff_seconds=0)
    workers = [ProjectionWorker(p, views, store, None, options, sleep=lambda _: None) for p in projectors]
    process = ProjectionWorker(CorporateActionProcess(), views, store, bus, options, sleep=lambda _: None)
    dispatcher = Dispatcher(process, bus)
    settle([*workers, process], dispatcher, store)
    bus.execute(CancelCorporateAction(action_id=SPLIT, reason=REASON))
    settle([*workers, process], dispatcher, store)

    (account,) = views.query("holdings", AccountRow)
    assert account.holder_name == HOLDER
    assert [h.quantity for h in views.query("holdings", Holding)] == [MAX_HOLDING]
    assert [(m.delta, m.balance) for m in views.query("holdings", HoldingMovement)] == [(MAX_HOLDING, MAX_HOLDING)]
    entitlements = {e.action_id: e for e in views.query("entitlements", EntitlementRow)}
    assert entitlements[SPLIT].new_units == (MAX_SPLIT_RATIO - 1) * MAX_HOLDING <= INT64_MAX
    assert entitlements[SPLIT].status == "cancelled"
    assert entitlements[CASH].cash_amount == Decimal("999999999999999999000000000.00")
    assert {c.action_id: c.status for c in views.query("cards", CorporateActionCard)} == {
        SPLIT: "cancelled", CASH: "validated"}
    notices = {(n.action_id, n.kind): n.message for n in views.query("notifications", NotificationRow)}
    assert set(notices) == {(SPLIT, "entitlement"), (CASH, "entitlement"), (SPLIT, "cancellation")}
    assert notices[SPLIT, "cancellation"].endswith(REASON)
