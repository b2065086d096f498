"""``rebuild_aggregate``: one aggregate's rows rebuilt in a new version that is otherwise a copy of the
active one, compared with a full replay; refused for projections whose rows combine aggregates."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from example_app.accounts import Account, AccountOpened, SecuritiesCredited
from example_app.commands import CreditHoldings, DebitHoldings, OpenAccount, RegisterSecurity
from example_app.handlers import router
from framework import AggregateNotFound, CommandBus, ConfigurationError
from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_views import MemoryViewStore
from framework.projector import HandlerContext, ProcessManager, Projector, on
from framework.readmodel import ReadModel
from framework.replay import rebuild, rebuild_aggregate
from framework.worker import ProjectionHalted, ProjectionWorker
from projections.cards import CardsProjector
from projections.holdings import AccountRow, Holding, HoldingMovement, HoldingsProjector
from projections.notifications import NotificationsProjector

APPLE, SAP = "US0378331005", "DE0007164600"


def rows(views: MemoryViewStore, projector: Projector) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    return {model.table: {row.key_values(): row.model_dump() for row in views.query(projector.name, model)}
            for model in projector.read_models}


def replayed(store: MemoryEventStore, projector: Projector) -> MemoryViewStore:
    views = MemoryViewStore()
    ProjectionWorker(type(projector)(), views, store).catch_up()
    return views


@pytest.fixture
def store() -> MemoryEventStore:
    store = MemoryEventStore()
    bus = CommandBus(router, store)
    bus.execute(RegisterSecurity(isin=APPLE, name="Apple", currency="USD"))
    bus.execute(RegisterSecurity(isin=SAP, name="SAP", currency="EUR"))
    for number in ("ACC-1", "ACC-2"):
        bus.execute(OpenAccount(account_number=number, holder_name=number))
        bus.execute(CreditHoldings(account_number=number, isin=APPLE, quantity=10))
    bus.execute(CreditHoldings(account_number="ACC-1", isin=SAP, quantity=3))
    bus.execute(DebitHoldings(account_number="ACC-1", isin=SAP, quantity=3))  # its holding row is deleted
    return store


def damage(views: MemoryViewStore) -> None:
    """What a bug in the handlers could have left for ACC-1: a wrong quantity, a lost account row,
    a holding that should have gone."""
    version = views.active_version("holdings")
    account_id = Account.id_for("ACC-1")
    with views.batch("holdings", version) as batch:
        holding = batch.get(Holding, "ACC-1", APPLE)
        assert holding is not None
        batch.put(holding.model_copy(update={"quantity": 999}))
        batch.delete(AccountRow, account_id)
        batch.put(Holding(account_number="ACC-1", isin=SAP, quantity=3))


def test_an_aggregate_s_rows_are_rebuilt_as_a_full_replay_makes_them(store: MemoryEventStore) -> None:
    views = MemoryViewStore()
    ProjectionWorker(HoldingsProjector(), views, store).catch_up()
    damage(views)
    other_before = rows(views, HoldingsProjector())["holdings"][("ACC-2", APPLE)]

    done = rebuild_aggregate(HoldingsProjector(), views, store, Account.id_for("ACC-1"))

    assert (done.version, views.active_version("holdings")) == (2, 2)
    assert (done.written, done.deleted) == (5, 1)  # the account, its holding, its 3 movements; SAP's holding
    assert rows(views, HoldingsProjector()) == rows(replayed(store, HoldingsProjector()), HoldingsProjector())
    assert rows(views, HoldingsProjector())["holdings"][("ACC-2", APPLE)] == other_before
    assert views.position("holdings", 2) == store.head()


def test_only_the_aggregate_s_rows_change_and_the_others_are_copied(store: MemoryEventStore) -> None:
    views = MemoryViewStore()
    ProjectionWorker(HoldingsProjector(), views, store).catch_up()
    damage(views)
    with views.batch("holdings", 1) as batch:  # ACC-2 damaged too: not rebuilt, so copied as it is
        batch.put(Holding(account_number="ACC-2", isin=APPLE, quantity=-1))
    rebuild_aggregate(HoldingsProjector(), views, store, Account.id_for("ACC-1"))
    current = rows(views, HoldingsProjector())
    assert current["holdings"][("ACC-2", APPLE)]["quantity"] == -1
    assert current["holdings"][("ACC-1", APPLE)]["quantity"] == 10


def test_events_stored_after_the_copy_are_applied_before_the_switch(store: MemoryEventStore) -> None:
    views = MemoryViewStore()
    worker = ProjectionWorker(HoldingsProjector(), views, store)
    worker.catch_up()
    CommandBus(router, store).execute(CreditHoldings(account_number="ACC-1", isin=APPLE, quantity=5))
    CommandBus(router, store).execute(CreditHoldings(account_number="ACC-2", isin=APPLE, quantity=7))
    damage(views)
    rebuild_aggregate(HoldingsProjector(), views, store, Account.id_for("ACC-1"))  # the worker is behind
    assert rows(views, HoldingsProjector()) == rows(replayed(store, HoldingsProjector()), HoldingsProjector())
    assert views.query("holdings", HoldingMovement)[-1].position == store.head()


def test_the_previous_version_is_kept_for_rollback_and_older_ones_dropped(store: MemoryEventStore) -> None:
    views = MemoryViewStore()
    ProjectionWorker(HoldingsProjector(), views, store).catch_up()
    assert rebuild(HoldingsProjector(), views, store) == 2
    assert rebuild_aggregate(HoldingsProjector(), views, store, Account.id_for("ACC-1")).version == 3
    assert sorted(s.version for s in views.states() if s.name == "holdings") == [2, 3]


def test_a_projection_whose_rows_combine_aggregates_is_refused(store: MemoryEventStore) -> None:
    views = MemoryViewStore()
    with pytest.raises(ConfigurationError) as refused:
        rebuild_aggregate(CardsProjector(), views, store, Account.id_for("ACC-1"))
    assert refused.value.message == (
        "cards cannot be rebuilt for one aggregate: it does not declare that each of its rows comes from one"
        " aggregate's events (per_aggregate = True); `eventfold replay cards` rebuilds it whole")
    assert views.states() == []


def test_an_aggregate_without_events_is_not_found(store: MemoryEventStore) -> None:
    views = MemoryViewStore()
    with pytest.raises(AggregateNotFound, match="there are no events of aggregate"):
        rebuild_aggregate(NotificationsProjector(), views, store, Account.id_for("ACC-404"))
    assert views.states() == []


class FailingHoldings(HoldingsProjector):
    @on(SecuritiesCredited)
    def credited(self, event: SecuritiesCredited, context: HandlerContext) -> None:
        raise ValueError("a bug")


def test_a_failing_handler_stops_it_and_leaves_the_active_version_alone(store: MemoryEventStore) -> None:
    views = MemoryViewStore()
    ProjectionWorker(HoldingsProjector(), views, store).catch_up()
    before = rows(views, HoldingsProjector())
    with pytest.raises(ProjectionHalted, match="holdings: SecuritiesCredited at position 4 failed: ValueError: a bug"):
        rebuild_aggregate(FailingHoldings(), views, store, Account.id_for("ACC-1"))
    assert views.active_version("holdings") == 1 and rows(views, HoldingsProjector()) == before
    assert [s.version for s in views.states() if s.name == "holdings"] == [1]  # the new version was dropped


class Welcomed(ReadModel):
    table = "welcomed"
    key = ("account_number",)

    account_number: str


class Welcomer(ProcessManager):
    name = "welcomer"
    read_models = (Welcomed,)
    per_aggregate = True

    @on(AccountOpened)
    def opened(self, event: AccountOpened, context: HandlerContext) -> None:
        context.views.put(Welcomed(account_number=event.account_number))
        context.issue(CreditHoldings(account_number=event.account_number, isin=APPLE, quantity=1))


def test_a_process_manager_s_rebuild_issues_nothing(store: MemoryEventStore) -> None:
    views = MemoryViewStore()
    ProjectionWorker(Welcomer(), views, store, CommandBus(router, store)).catch_up()
    issued = views.outbox("welcomer", 10)
    assert len(issued) == 2
    with views.batch("welcomer", 1) as batch:
        batch.delete(Welcomed, "ACC-1")
    rebuild_aggregate(Welcomer(), views, store, Account.id_for("ACC-1"))
    assert views.outbox("welcomer", 10) == issued and views.due_deadlines("welcomer", datetime.now(UTC), 10) == []
    assert [r.account_number for r in views.query("welcomer", Welcomed)] == ["ACC-1", "ACC-2"]
