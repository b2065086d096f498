"""A rebuild (bulk catch-up into fresh tables, binary flushes, "no such row" from the row cache)
produces the same read model as the projection applied live, event by event and in small
deliveries; and every column type survives the binary bulk flush."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4

import pytest
from pydantic import Field
from support.postgres import PgDatabase

import framework.adapters.postgres_views as postgres_views
from example_app.accounts import Account, AccountOpened, SecuritiesCredited, SecuritiesDebited
from framework.adapters.memory_views import MemoryViewStore
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.events import EventEnvelope, EventMetadata
from framework.mapper import to_stored
from framework.projector import HandlerContext, Projector, on
from framework.readmodel import ReadModel
from framework.replay import rebuild
from framework.worker import ProjectionWorker, WorkerOptions
from projections.holdings import Holding, HoldingsProjector

pytestmark = [pytest.mark.postgres]


class Kind(StrEnum):
    CREDIT = "credit"
    DEBIT = "debit"


class Ledger(ReadModel):
    """Every column type the PostgreSQL adapter maps, nullable ones too."""

    table = "ledgers"
    key = ("account_number", "isin")

    account_number: str
    isin: str
    quantity: int
    ratio: float
    amount: Decimal
    active: bool
    day: date
    at: datetime
    ref: UUID
    kind: Kind
    note: str | None = None
    big: int | None = None
    tags: list[str] = Field(default_factory=list)
    extra: dict[str, int] | None = None


class Tally(ReadModel):
    """Per account: created on open, updated by every movement, deleted and created again."""

    table = "tallies"
    key = ("aggregate_id",)

    aggregate_id: UUID
    account_number: str
    moves: int
    last: Kind | None = None


class Entry(ReadModel):
    """Written, never read back (a movement history)."""

    table = "entries"
    key = ("position",)

    position: int
    account_number: str
    delta: int


class EquivalenceProjector(Projector):
    name = "equivalence"
    read_models = (Ledger, Tally, Entry)

    @on(AccountOpened)
    def opened(self, event: AccountOpened, context: HandlerContext) -> None:
        context.views.put(Tally(aggregate_id=context.envelope.aggregate_id,
                                account_number=event.account_number, moves=0))

    @on(SecuritiesCredited)
    def credited(self, event: SecuritiesCredited, context: HandlerContext) -> None:
        self._move(context, event.isin, event.quantity, Kind.CREDIT)

    @on(SecuritiesDebited)
    def debited(self, event: SecuritiesDebited, context: HandlerContext) -> None:
        self._move(context, event.isin, -event.quantity, Kind.DEBIT)

    def _move(self, context: HandlerContext, isin: str, delta: int, kind: Kind) -> None:
        views, envelope = context.views, context.envelope
        assert envelope.position is not None
        tally = views.get(Tally, envelope.aggregate_id)
        if tally is None:  # deleted below: starts again
            tally = Tally(aggregate_id=envelope.aggregate_id, account_number=f"re-{envelope.aggregate_id}", moves=0)
        tally.moves += 1  # handlers may mutate what they get, then put it
        tally.last = kind
        if tally.moves % 7 == 0:
            views.delete(Tally, envelope.aggregate_id)
        else:
            views.put(tally)
        ledger = views.get(Ledger, tally.account_number, isin)
        quantity = (ledger.quantity if ledger else 0) + delta
        if quantity <= 0:
            views.delete(Ledger, tally.account_number, isin)
        else:
            position = envelope.position
            views.put(Ledger(
                account_number=tally.account_number, isin=isin, quantity=quantity, ratio=quantity / 3,
                amount=Decimal(quantity) / Decimal(7), active=position % 2 == 0,
                day=envelope.metadata.recorded_at.date(),
                # naive datetimes now and then: such a batch goes out as text arrays
                at=envelope.metadata.recorded_at if position % 11 else datetime(2024, 1, 2, 3, 4, 5),
                ref=envelope.metadata.event_id, kind=kind,
                note=None if position % 3 else f"note {position}", big=2**62 + position if position % 5 else None,
                tags=[isin, kind.value], extra={"position": position} if position % 4 else None,
            ))
        views.put(Entry(position=envelope.position, account_number=tally.account_number, delta=delta))


def _events(count: int, accounts: int = 6) -> list[Any]:
    """Opens, then credits and debits (some to zero) at random, deterministic."""
    rng = random.Random(20261123)
    ids = [Account.id_for(f"EQ-{i:03d}") for i in range(accounts)]
    versions = [0] * accounts
    held: dict[tuple[int, str], int] = {}
    stored = []
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(count):
        a = i % accounts if i < accounts else rng.randrange(accounts)
        event: Any
        if i < accounts:
            event = AccountOpened(account_number=f"EQ-{a:03d}", holder_name=f"Holder {a}")
        else:
            isin = rng.choice(["XS0000000001", "XS0000000002", "XS0000000003"])
            balance = held.get((a, isin), 0)
            if balance and rng.random() < 0.4:
                quantity = balance if rng.random() < 0.5 else rng.randint(1, balance)
                event, held[(a, isin)] = SecuritiesDebited(isin=isin, quantity=quantity), balance - quantity
            else:
                quantity = rng.randint(1, 50)
                event, held[(a, isin)] = SecuritiesCredited(isin=isin, quantity=quantity), balance + quantity
        versions[a] += 1
        meta = EventMetadata(recorded_at=start + timedelta(minutes=i), correlation_id=f"eq-{i}")
        stored.append(to_stored(EventEnvelope("Account", ids[a], versions[a], event, meta)))
    return stored


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


def _rows(views: PostgresViewStore, projector: Projector) -> dict[str, dict[tuple[Any, ...], dict[str, Any]]]:
    return {model.table: {row.key_values(): row.model_dump() for row in views.query(projector.name, model)}
            for model in projector.read_models}


def _apply_live(projector: Projector, views: PostgresViewStore, store: PostgresEventStore) -> None:
    """As the live worker does from a bus: deliveries of a few events, one transaction each."""
    worker = ProjectionWorker(projector, views, store, None, WorkerOptions(retry_backoff_seconds=0),
                              sleep=lambda _: None)
    notifications = store.read_all(0, 1_000_000)
    rng = random.Random(7)
    at = 0
    while at < len(notifications):
        size = rng.choice([1, 1, 2, 3, 9])
        worker.apply(notifications[at:at + size])
        at += size
    assert worker.position == store.head()


@pytest.mark.parametrize("projector_type", [EquivalenceProjector, HoldingsProjector])
@pytest.mark.parametrize("batch_size", [5, 64, 5000])
def test_a_rebuild_equals_the_live_projection(store: PostgresEventStore, views: PostgresViewStore,
                                             projector_type: type[Projector], batch_size: int) -> None:
    store.append(_events(400))
    projector = projector_type()
    _apply_live(projector, views, store)
    live = _rows(views, projector)
    assert all(live.values()), "every table has rows"

    version = rebuild(projector_type(), views, store, options=WorkerOptions(catch_up_batch=batch_size))

    assert version == 2 and views.active_version(projector.name) == 2
    assert views.position(projector.name, 2) == store.head()
    assert _rows(views, projector) == live


def test_rows_in_tables_that_were_not_empty_are_read(store: PostgresEventStore, views: PostgresViewStore) -> None:
    """Only tables empty when the cache starts may be answered "no such row" without a query."""
    store.append(_events(60, accounts=1))
    projector = HoldingsProjector()
    _apply_live(projector, views, store)
    live = {row.isin: row.quantity for row in views.query(projector.name, Holding)}

    views.ensure_tables(projector.name, 9, projector.read_models)
    with views.batch(projector.name, 9, follow_active=False) as batch:
        batch.put(Holding(account_number="EQ-000", isin="XS0000000001", quantity=1_000_000))
    views.cache_empty_tables(projector.name, 9, projector.read_models)
    worker = ProjectionWorker(projector, views, store, None, WorkerOptions(catch_up_batch=3), version=9,
                              follow_active=False)
    assert worker.catch_up() == store.head()

    with views._connection() as conn:
        source = postgres_views._Source(conn, postgres_views._Tables(views._schema, projector.name, 9))
        rebuilt = {row.isin: row.quantity for row in source.load_where(Holding, {})}
    assert rebuilt["XS0000000001"] == 1_000_000 + live.get("XS0000000001", 0)
    assert {isin: q for isin, q in rebuilt.items() if isin != "XS0000000001"} == {
        isin: q for isin, q in live.items() if isin != "XS0000000001"}


@pytest.mark.parametrize("binary", [True, False])
def test_every_column_type_round_trips_the_bulk_flush(views: PostgresViewStore, binary: bool,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if not binary:
        monkeypatch.setattr(postgres_views, "_binary_ok", lambda columns: False)
    flushed: list[bool] = []
    decide = postgres_views._binary_ok
    monkeypatch.setattr(postgres_views, "_binary_ok", lambda columns: flushed.append(decide(columns)) or flushed[-1])
    projector = EquivalenceProjector()
    views.ensure_tables(projector.name, 1, projector.read_models)
    aware = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
    rows = [
        Ledger(account_number="A", isin="I1", quantity=-(2**63), ratio=-0.0, amount=Decimal("1e-30"), active=True,
               day=date(1, 1, 1), at=aware, ref=uuid4(), kind=Kind.CREDIT, note="", big=2**63 - 1,
               tags=[], extra={}),
        Ledger(account_number="A", isin="I2", quantity=0, ratio=1.5e300, amount=Decimal("-123456789.000000001"),
               active=False, day=date(9999, 12, 31), at=aware.replace(year=1970), ref=uuid4(), kind=Kind.DEBIT,
               note="ünïcødé 'quoted' \"double\" {brace} \\ ,", big=None, tags=["a", "b,c", '"'],
               extra={"x": 1}),
        Ledger(account_number="B", isin="I1", quantity=7, ratio=2.0, amount=Decimal(0), active=True,
               day=date(2026, 2, 28), at=aware, ref=uuid4(), kind=Kind.CREDIT, note=None, big=None, tags=["z"],
               extra=None),
    ]
    tallies = [Tally(aggregate_id=uuid4(), account_number="A", moves=1, last=None),
               Tally(aggregate_id=uuid4(), account_number="B", moves=2, last=Kind.DEBIT)]
    with views.batch(projector.name, 1) as batch:
        for row in [*rows, *tallies]:
            batch.put(row)
    assert flushed and all(flushed) == binary

    assert views.query(projector.name, Ledger) == sorted(rows, key=lambda r: r.key_values())
    assert sorted(views.query(projector.name, Tally), key=lambda r: r.account_number) == tallies

    # deletes (binary key arrays too) and an update of one row in the same batch
    with views.batch(projector.name, 1) as batch:
        batch.delete(Ledger, "A", "I1")
        batch.delete(Tally, tallies[0].aggregate_id)
        batch.put(rows[2].model_copy(update={"quantity": 8}))
    assert [r.key_values() for r in views.query(projector.name, Ledger)] == [("A", "I2"), ("B", "I1")]
    assert views.query(projector.name, Ledger)[1].quantity == 8
    assert views.query(projector.name, Tally) == [tallies[1]]


def test_a_column_of_mixed_naive_and_aware_datetimes_goes_out_as_text(views: PostgresViewStore) -> None:
    assert postgres_views._binary_ok([[datetime(2026, 1, 1, tzinfo=UTC), None, datetime(2026, 1, 2, tzinfo=UTC)]])
    assert not postgres_views._binary_ok([[datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2)]])
    assert not postgres_views._binary_ok([[1, 2.5]])
    projector = EquivalenceProjector()
    views.ensure_tables(projector.name, 1, projector.read_models)
    base = dict(isin="I", quantity=1, ratio=1.0, amount=Decimal(1), active=True, day=date(2026, 1, 1),
                ref=uuid4(), kind=Kind.CREDIT)
    with views.batch(projector.name, 1) as batch:
        batch.put(Ledger(account_number="A", at=datetime(2026, 1, 1, tzinfo=UTC), **base))
        batch.put(Ledger(account_number="B", at=datetime(2026, 1, 1), **base))
    assert len(views.query(projector.name, Ledger)) == 2


def test_a_standby_that_takes_over_reads_the_rows_the_active_worker_wrote(
    store: PostgresEventStore, views: PostgresViewStore
) -> None:
    """Both workers start on empty tables (so their row caches know every table to be empty); the
    standby takes over after the active one wrote rows. It must read those rows, not trust its cache."""
    events = _events(120)
    store.append(events[:100])
    active = ProjectionWorker(HoldingsProjector(), views, store)
    standby = ProjectionWorker(HoldingsProjector(), views, store)  # constructed at position 0, waiting
    active.catch_up()
    standby.reload()  # what run_projection does once it holds the lease
    store.append(events[100:])
    standby.apply(store.read_all(standby.position, 1_000))
    replayed = MemoryViewStore()
    ProjectionWorker(HoldingsProjector(), replayed, store).catch_up()
    assert _rows(views, HoldingsProjector()) == {
        model.table: {row.key_values(): row.model_dump() for row in replayed.query("holdings", model)}
        for model in HoldingsProjector.read_models}
