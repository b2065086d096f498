"""Snapshots: opt-in per type, exact typed round trip, ignored when outdated, written by the bus."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Any, ClassVar
from uuid import UUID, uuid4

import pytest
from pydantic import Field

from example_app.accounts import Account, AccountOpened, SecuritiesCredited
from example_app.commands import CreditHoldings, OpenAccount, RegisterSecurity
from example_app.corporate_actions import CashTerms, CorporateAction, CorporateActionAnnounced
from example_app.handlers import router as example_router
from framework import Aggregate, Command, CommandBus, EventStore, StoreUnavailable, UnitOfWork
from framework.adapters.memory import MemoryEventStore
from framework.mapper import from_stored
from framework.snapshots import from_snapshot, snapshot_due, to_snapshot
from framework.store import StoredEvent

from .domain import APPLE, Counter, IncrementCounter, PlainCounter, StartCounter
from .domain import counter_router as make_counter_router


class Tier(Enum):
    BRONZE = 1
    GOLD = 3


class Stage(StrEnum):
    DRAFT = "draft"
    LIVE = "live"


class Portfolio(Aggregate):
    """State of every awkward JSON type: Decimal, date, datetime, UUID, enums, nested dicts, optionals."""

    snapshot_every: ClassVar[int | None] = 2

    label: str = ""
    opened_on: date | None = None
    closed_at: datetime | None = None
    owner: UUID | None = None
    balance: Decimal = Decimal("0")
    tier: Tier = Tier.BRONZE
    stage: Stage = Stage.DRAFT
    positions: dict[str, dict[str, Decimal]] = Field(default_factory=dict)
    limits: dict[str, int | None] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    pair: tuple[int, str] | None = None
    note: str | None = None


def rich_portfolio() -> Portfolio:
    return Portfolio(
        id=uuid4(),
        version=17,
        label="pension",
        opened_on=date(1999, 12, 31),
        closed_at=datetime(2030, 1, 1, 12, 30, 45, 123456, tzinfo=UTC),
        owner=uuid4(),
        balance=Decimal("1234567890.123456789"),
        tier=Tier.GOLD,
        stage=Stage.LIVE,
        positions={APPLE: {"qty": Decimal("10"), "cost": Decimal("0.10")}, "DE0007164600": {}},
        limits={"daily": 5, "weekly": None},
        tags=["b", "a"],
        pair=(7, "seven"),
        note=None,
    )


def test_typed_round_trip_is_exact() -> None:
    original = rich_portfolio()
    restored = from_snapshot(Portfolio, to_snapshot(original))
    assert restored == original
    assert restored is not None
    assert type(restored.balance) is Decimal and str(restored.balance) == "1234567890.123456789"
    assert str(restored.positions[APPLE]["cost"]) == "0.10"
    assert type(restored.opened_on) is date
    assert restored.closed_at == original.closed_at and restored.closed_at is not None
    assert restored.closed_at.utcoffset() is not None
    assert type(restored.owner) is UUID
    assert restored.tier is Tier.GOLD and restored.stage is Stage.LIVE
    assert restored.pair == (7, "seven")
    assert restored.note is None and restored.limits["weekly"] is None
    assert restored.version == 17 and restored.id == original.id


def test_example_aggregates_round_trip() -> None:
    action = CorporateAction.from_events(
        CorporateAction.id_for("CA-1"),
        [
            CorporateActionAnnounced(
                action_id="CA-1",
                isin=APPLE,
                record_date=date(2024, 6, 14),
                payment_date=None,
                terms=CashTerms(kind="coupon", amount_per_unit=Decimal("0.000125"), currency="USD"),
            )
        ],
    )
    account = Account.from_events(
        Account.id_for("A-1"),
        [AccountOpened(account_number="A-1", holder_name="Ada"), SecuritiesCredited(isin=APPLE, quantity=3)],
    )
    for aggregate in (action, account):
        assert from_snapshot(type(aggregate), to_snapshot(aggregate)) == aggregate
    restored_action = from_snapshot(CorporateAction, to_snapshot(action))
    assert restored_action is not None and isinstance(restored_action.terms, CashTerms)


def test_snapshot_records_type_version_and_position() -> None:
    portfolio = rich_portfolio()
    snapshot = to_snapshot(portfolio)
    assert (snapshot.originator_id, snapshot.originator_version, snapshot.topic) == (
        portfolio.id,
        17,
        "Portfolio",
    )
    assert json.loads(snapshot.state)["v"] == Portfolio.snapshot_version


def _rewritten(snapshot: StoredEvent, **document: Any) -> StoredEvent:
    content = {**json.loads(snapshot.state), **document}
    return StoredEvent(
        snapshot.originator_id, snapshot.originator_version, snapshot.topic, json.dumps(content).encode()
    )


def test_a_snapshot_of_another_shape_version_is_ignored() -> None:
    assert from_snapshot(Portfolio, _rewritten(to_snapshot(rich_portfolio()), v=2)) is None


def test_a_snapshot_whose_state_no_longer_validates_is_ignored() -> None:
    snapshot = to_snapshot(rich_portfolio())
    state = {**json.loads(snapshot.state)["state"], "balance": "not a number"}
    assert from_snapshot(Portfolio, _rewritten(snapshot, state=state)) is None


def test_a_snapshot_of_another_type_is_ignored() -> None:
    counter = Counter.start(uuid4(), "c")
    assert from_snapshot(Portfolio, to_snapshot(counter)) is None


@pytest.mark.parametrize(
    ("every", "before", "after", "due"),
    [
        (None, 0, 100, False),
        (3, 0, 2, False),
        (3, 0, 3, True),
        (3, 2, 3, True),
        (3, 2, 4, True),  # crossed, not landed on
        (3, 3, 5, False),
        (3, 5, 6, True),
        (3, 1, 7, True),
    ],
)
def test_snapshot_due_when_a_multiple_is_crossed(
    every: int | None, before: int, after: int, due: bool
) -> None:
    class Probe(Aggregate):
        snapshot_every: ClassVar[int | None] = every

    assert snapshot_due(Probe(id=uuid4(), version=after), before) is due


# --- loading through the unit of work ---------------------------------------------------------


def seeded(store: EventStore, counter_type: type[Counter], increments: list[int]) -> UUID:
    bus = CommandBus(make_counter_router(counter_type), store)
    counter_id = uuid4()
    bus.execute(StartCounter(counter_id=counter_id, label="c"))
    for by in increments:
        bus.execute(IncrementCounter(counter_id=counter_id, by=by))
    return counter_id


def full_replay(store: EventStore, counter_id: UUID) -> Counter:
    return Counter.from_events(counter_id, [from_stored(s).event for s in store.read_stream(counter_id)])


def test_loading_from_a_snapshot_plus_later_events_equals_a_full_replay(store: EventStore) -> None:
    counter_id = seeded(store, Counter, [1, 2, 3, 4, 5, 6, 7])  # versions 1..8; snapshot at 6
    snapshot = store.latest_snapshot(counter_id)
    assert snapshot is not None and snapshot.originator_version == 6
    loaded = UnitOfWork(store).get(Counter, counter_id)
    assert loaded == full_replay(store, counter_id)
    assert (loaded.version, loaded.total, loaded.increments) == (8, 28, [1, 2, 3, 4, 5, 6, 7])


def test_the_snapshot_is_really_used(store: EventStore) -> None:
    """A doctored (but well-formed) snapshot shows through: only later events are replayed."""
    counter_id = seeded(store, Counter, [1, 2, 3, 4, 5, 6, 7])
    snapshot = store.latest_snapshot(counter_id)
    assert snapshot is not None
    state = {**json.loads(snapshot.state)["state"], "label": "from the snapshot", "total": 1000}
    store.save_snapshot(
        _rewritten(StoredEvent(counter_id, 7, snapshot.topic, snapshot.state), state={**state, "version": 7})
    )
    loaded = UnitOfWork(store).get(Counter, counter_id)
    assert loaded.label == "from the snapshot"
    assert (loaded.version, loaded.total) == (8, 1007)  # snapshot's 1000 + event 8's 7


def test_an_outdated_snapshot_is_ignored_and_the_aggregate_rebuilt(store: EventStore) -> None:
    counter_id = seeded(store, Counter, [1, 2, 3, 4])  # versions 1..5; snapshot at 3
    doctored = {"id": str(counter_id), "version": 4, "label": "stale", "total": -1, "increments": []}
    store.save_snapshot(
        StoredEvent(counter_id, 4, "Counter", json.dumps({"v": 0, "state": doctored}).encode())
    )
    loaded = UnitOfWork(store).get(Counter, counter_id)
    assert loaded == full_replay(store, counter_id)
    assert (loaded.label, loaded.total, loaded.version) == ("c", 10, 5)


def test_types_without_snapshot_every_never_read_or_write_snapshots(store: EventStore) -> None:
    counter_id = seeded(store, PlainCounter, [1, 2, 3, 4, 5, 6, 7])
    assert store.latest_snapshot(counter_id) is None
    snapshot = to_snapshot(PlainCounter(id=counter_id, version=7, label="doctored", total=-5))
    assert from_snapshot(PlainCounter, snapshot) is not None  # it would be accepted if read
    store.save_snapshot(snapshot)
    loaded = UnitOfWork(store).get(PlainCounter, counter_id)
    assert (loaded.label, loaded.total, loaded.version) == ("c", 28, 8)


# --- written by the bus ----------------------------------------------------------------------


def snapshot_versions(
    store: MemoryEventStore, counter_id: UUID, bus: CommandBus, times: list[int]
) -> list[int]:
    seen = []
    for count in times:
        bus.execute(IncrementCounter(counter_id=counter_id, times=count))
        latest = store.latest_snapshot(counter_id)
        seen.append(latest.originator_version if latest else 0)
    return seen


def test_the_bus_snapshots_when_a_multiple_of_snapshot_every_is_crossed() -> None:
    store = MemoryEventStore()
    bus = CommandBus(make_counter_router(), store)
    counter_id = uuid4()
    bus.execute(StartCounter(counter_id=counter_id))  # version 1
    # versions after each command: 2, 4 (crosses 3), 5, 9 (crosses 6), 10, 12 (lands on 12)
    assert snapshot_versions(store, counter_id, bus, [1, 2, 1, 4, 1, 2]) == [0, 4, 4, 9, 9, 12]
    snapshot = store.latest_snapshot(counter_id)
    assert snapshot is not None
    assert from_snapshot(Counter, snapshot) == full_replay(store, counter_id)


def test_the_bus_snapshots_a_new_aggregate_created_past_the_threshold() -> None:
    class UnitBigStart(Command):
        counter_id: UUID

    store = MemoryEventStore()
    router = make_counter_router()

    def big_start(command: UnitBigStart, unit: UnitOfWork) -> Counter:
        counter = unit.add(Counter.start(command.counter_id, "big"))
        for _ in range(3):
            counter.increment(1)
        return counter

    router.route(UnitBigStart, big_start)
    counter_id = uuid4()
    CommandBus(router, store).execute(UnitBigStart(counter_id=counter_id))
    snapshot = store.latest_snapshot(counter_id)
    assert snapshot is not None and snapshot.originator_version == 4


def test_the_example_account_snapshots_every_fifty_versions() -> None:
    store = MemoryEventStore()
    bus = CommandBus(example_router, store)
    bus.execute(RegisterSecurity(isin=APPLE, name="Apple", currency="USD"))
    bus.execute(OpenAccount(account_number="A-1", holder_name="Ada"))
    account_id = Account.id_for("A-1")
    for _ in range(48):
        bus.execute(CreditHoldings(account_number="A-1", isin=APPLE, quantity=1))
    assert store.latest_snapshot(account_id) is None  # version 49
    bus.execute(CreditHoldings(account_number="A-1", isin=APPLE, quantity=1))
    snapshot = store.latest_snapshot(account_id)
    assert snapshot is not None and snapshot.originator_version == 50
    restored = from_snapshot(Account, snapshot)
    assert restored is not None and restored.holdings == {APPLE: 49}


class SnapshotsFail(MemoryEventStore):
    def save_snapshot(self, snapshot: StoredEvent) -> None:
        raise StoreUnavailable("snapshot table is gone")


def test_a_failing_snapshot_does_not_fail_the_committed_command() -> None:
    store = SnapshotsFail()
    bus = CommandBus(make_counter_router(), store)
    counter_id = uuid4()
    bus.execute(StartCounter(counter_id=counter_id))
    executed = bus.execute(IncrementCounter(counter_id=counter_id, times=5))
    assert executed.result.version == 6
    assert len(store.read_stream(counter_id)) == 6
    assert store.latest_snapshot(counter_id) is None


def test_a_corrupt_snapshot_is_ignored() -> None:
    assert from_snapshot(Counter, StoredEvent(uuid4(), 3, "Counter", b"\x00garbage")) is None
