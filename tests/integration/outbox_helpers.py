"""Pieces of the process-manager outbox tests: a clock to step over backoff, event stores that fail
on purpose (conflicts, outages), and counts of what was executed, read from the store."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.dispatcher import Dispatcher
from framework.errors import ConcurrencyConflict, StoreUnavailable
from framework.events import EventEnvelope
from framework.mapper import from_stored
from framework.store import ClaimOutcome, EventStore, IdempotencyCompletion, StoredEvent
from framework.views import OutboxEntry, ViewStore
from framework.worker import ProjectionWorker

__all__ = [
    "ConflictingStore",
    "FailingClaims",
    "SteppingClock",
    "drain",
    "envelopes",
    "movements",
    "outbox_rows",
    "postgres_stores",
]


class SteppingClock:
    """An aware UTC clock that only moves when told (``advance``): a dispatcher's backoff is stepped
    over instead of waited for."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += timedelta(seconds=seconds)


class MonotonicClock:
    """A float clock for a ``CircuitBreaker``, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def postgres_stores(pg_database: Any, schema: str, pool_size: int = 4) -> Iterator[tuple[PostgresEventStore,
                                                                                         PostgresViewStore]]:
    """An event store and a view store on one fresh schema, their tables created; closed after."""
    store = PostgresEventStore(pg_database.settings(schema, pool_size=pool_size))
    views = PostgresViewStore(pg_database.settings(schema, pool_size=pool_size))
    try:
        store.create_schema()
        views.create_schema()
        yield store, views
    finally:
        views.close()
        store.close()


def outbox_rows(pg_database: Any, schema: str) -> list[dict[str, Any]]:
    """Every row of ``<schema>.eventfold_outbox``, as PostgreSQL holds it (any projection)."""
    with psycopg.connect(pg_database.url(), autocommit=True) as conn:
        cursor = conn.execute(sql.SQL("SELECT id, projection, key, command_name, ordering_key, attempts,"
                                      " next_attempt_at, last_error FROM {}.eventfold_outbox ORDER BY id")
                              .format(sql.Identifier(schema)))
        columns = [c.name for c in cursor.description or ()]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def envelopes(store: EventStore, name: str | None = None) -> list[EventEnvelope]:
    """Stored events (of one type, if named), in position order."""
    found = [from_stored(n) for n in store.read_all(0, 1_000_000_000)]
    return [e for e in found if name is None or e.event_name == name]


def movements(store: EventStore) -> Counter[tuple[str, str, str]]:
    """(account number, "credit" | "debit", reference) -> how many such events the store holds."""
    accounts: dict[UUID, str] = {}
    counted: Counter[tuple[str, str, str]] = Counter()
    for envelope in envelopes(store):
        data = envelope.event.model_dump()
        if envelope.event_name == "AccountOpened":
            accounts[envelope.aggregate_id] = data["account_number"]
        elif envelope.event_name in ("SecuritiesCredited", "SecuritiesDebited"):
            kind = "credit" if envelope.event_name == "SecuritiesCredited" else "debit"
            counted[(accounts[envelope.aggregate_id], kind, data.get("reference") or "")] += 1
    return counted


def drain(worker: ProjectionWorker, dispatchers: Sequence[Dispatcher], clock: SteppingClock | None = None, *,
          rounds: int = 50) -> None:
    """Apply what is stored and dispatch until the outbox is empty and the worker is at the head
    (stepping ``clock`` a minute a round, past any backoff). Fails if that never happens."""
    for _ in range(rounds):
        worker.catch_up()
        for dispatcher in dispatchers:
            dispatcher.run_once()
        if not worker.views.outbox(worker.name, 10) and worker.catch_up() == worker.store.head():
            return
        if clock is not None:
            clock.advance(60)
    raise AssertionError(f"{worker.name}: outbox not drained: {worker.views.outbox(worker.name, 10)}")


def entry_for(views: ViewStore, projection: str, predicate: Callable[[OutboxEntry], bool]) -> OutboxEntry:
    found = [e for e in views.outbox(projection, 10_000) if predicate(e)]
    assert len(found) == 1, found
    return found[0]


class _Wrapped:
    """Delegates every ``EventStore`` call to ``store``; subclasses override the ones that fail."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class ConflictingStore(_Wrapped):
    """Appends completing one of ``failures``' idempotency keys fail with ``ConcurrencyConflict``
    (another writer got there first) as many times as given, then go through."""

    def __init__(self, store: EventStore, failures: dict[str, int]) -> None:
        super().__init__(store)
        self.failures = dict(failures)
        self.conflicts: Counter[str] = Counter()

    def append(self, events: Sequence[StoredEvent], completion: IdempotencyCompletion | None = None) -> list[int]:
        if completion is not None:
            with self._lock:
                left = self.failures.get(completion.key, 0)
                if left:
                    self.failures[completion.key] = left - 1
                    self.conflicts[completion.key] += 1
            if left:
                raise ConcurrencyConflict(f"{completion.key}: a concurrent write won (test)")
        return self.store.append(events, completion)


class FailingClaims(_Wrapped):
    """The first ``failures`` idempotency claims fail with ``StoreUnavailable`` (the database is down)."""

    def __init__(self, store: EventStore, failures: int) -> None:
        super().__init__(store)
        self.failures = failures
        self.refused = 0

    def claim_idempotency_key(self, key: str, request_hash: str, owner: UUID, lease_seconds: float) -> ClaimOutcome:
        with self._lock:
            fail = self.refused < self.failures
            if fail:
                self.refused += 1
        if fail:
            raise StoreUnavailable("the event store did not answer (test)")
        return self.store.claim_idempotency_key(key, request_hash, owner, lease_seconds)
