"""A tiny test-only domain (a counter) and helpers shared by the unit tests.

Every test event here overrides ``event_name`` with an ``eventfold-unit:`` prefix,
so the global event registry never collides with events defined by other test
suites in the same pytest session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar
from uuid import UUID

from pydantic import Field

from framework import (
    Aggregate,
    Command,
    CommandRouter,
    Event,
    EventEnvelope,
    EventMetadata,
    UnitOfWork,
    event,
)
from framework.mapper import to_stored
from framework.store import EventStore

# Real ISINs with correct check digits (Apple, SAP, BAE Systems, the Wikipedia example).
APPLE = "US0378331005"
SAP = "DE0007164600"
BAE = "GB0002634946"
TREASURY = "AU0000XVGZA3"


class CounterStarted(Event):
    event_name: ClassVar[str] = "eventfold-unit:CounterStarted"
    label: str


class CounterIncremented(Event):
    event_name: ClassVar[str] = "eventfold-unit:CounterIncremented"
    by: int


class Counter(Aggregate):
    """Snapshots every 3 versions, so tests can cross the threshold cheaply."""

    snapshot_every: ClassVar[int | None] = 3

    label: str = ""
    total: int = 0
    increments: list[int] = Field(default_factory=list)

    @classmethod
    def start(cls, counter_id: UUID, label: str) -> Counter:
        counter = cls.blank(counter_id)
        counter._started(label=label)
        return counter

    def increment(self, by: int) -> None:
        self._incremented(by=by)

    @event(CounterStarted)
    def _started(self, label: str) -> None:
        self.label = label

    @event(CounterIncremented)
    def _incremented(self, by: int) -> None:
        self.total += by
        self.increments = [*self.increments, by]


class PlainCounter(Counter):
    """The same state, without snapshots."""

    snapshot_every: ClassVar[int | None] = None


class StartCounter(Command):
    counter_id: UUID
    label: str = "counter"


class IncrementCounter(Command):
    counter_id: UUID
    by: int = 1
    times: int = 1


class Explode(Command):
    """Routed to a handler that raises something the framework does not expect."""

    note: str = ""


def counter_router(counter_type: type[Counter] = Counter) -> CommandRouter:
    router = CommandRouter()

    def start(command: StartCounter, unit: UnitOfWork) -> Counter:
        return unit.add(counter_type.start(command.counter_id, command.label))

    def increment(command: IncrementCounter, unit: UnitOfWork) -> Counter:
        counter = unit.get(counter_type, command.counter_id)
        for _ in range(command.times):
            counter.increment(command.by)
        return counter

    router.route(StartCounter, start)
    router.route(IncrementCounter, increment)
    return router


def interfering_router(store: EventStore, interfere_times: int, calls: list[int]) -> CommandRouter:
    """IncrementCounter's handler, on its first ``interfere_times`` calls, writes a
    conflicting ``CounterIncremented(by=1000)`` straight into ``store`` after loading
    the counter, so the bus's own append hits a ConcurrencyConflict.
    ``calls`` receives the version the handler saw on each call."""
    router = CommandRouter()

    def increment(command: IncrementCounter, unit: UnitOfWork) -> Counter:
        counter = unit.get(Counter, command.counter_id)
        calls.append(counter.version)
        if len(calls) <= interfere_times:
            append_events(store, Counter, counter.id, CounterIncremented(by=1000))
        counter.increment(command.by)
        return counter

    router.route(IncrementCounter, increment)
    return router


def exploding_router(error: Callable[[], BaseException]) -> CommandRouter:
    router = CommandRouter()

    def explode(command: Explode, unit: UnitOfWork) -> None:
        raise error()

    router.route(Explode, explode)
    return router


def append_events(
    store: EventStore,
    aggregate_type: type[Aggregate],
    aggregate_id: UUID,
    *events: Event,
    metadata: EventMetadata | None = None,
) -> list[int]:
    """Write events for an aggregate directly, numbered after what is stored."""
    first = len(store.read_stream(aggregate_id)) + 1
    envelopes = [
        EventEnvelope(aggregate_type.aggregate_name, aggregate_id, version, e, metadata or EventMetadata())
        for version, e in enumerate(events, start=first)
    ]
    return store.append([to_stored(e) for e in envelopes])
