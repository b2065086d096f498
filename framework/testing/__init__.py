"""Testing helpers, no server needed: given/when/then for aggregates, command handlers, projections
and process managers, and old stored payloads read through the real mapper (upcasters).

    given(Account, opened, credited).when(lambda a: a.debit("X", 5)).then(debited)
    CommandSpec(router).given(Account, account_id, opened).when(DebitHoldings(...)).then(debited)
    ProjectionSpec(HoldingsProjector()).given(Account, account_id, opened, credited).then(Holding(...))
    ProcessSpec(Saga()).given(Order, order_id, placed).when(Order, order_id, paid).then_issued(Ship(...))
    assert from_stored_payload(Registered, {"isin": "X"}, version=1) == Registered(isin="X", currency="EUR")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar
from uuid import UUID, uuid4

from framework.adapters.memory import MemoryEventStore
from framework.adapters.memory_views import MemoryViewStore
from framework.aggregate import Aggregate
from framework.bus import CommandBus
from framework.commands import Command, CommandRouter
from framework.events import Event, EventEnvelope, EventMetadata
from framework.mapper import from_stored, to_stored
from framework.testing.projections import GIVEN_AT, ProcessSpec, ProjectionSpec, Scheduled
from framework.testing.upcasting import from_stored_document, from_stored_payload

__all__ = [
    "GIVEN_AT",
    "AggregateSpec",
    "CommandSpec",
    "MemoryEventStore",
    "MemoryViewStore",
    "ProcessSpec",
    "ProjectionSpec",
    "Scheduled",
    "from_stored_document",
    "from_stored_payload",
    "given",
]

A = TypeVar("A", bound=Aggregate)


def given(aggregate_type: type[A], *events: Event, aggregate_id: UUID | None = None) -> AggregateSpec[A]:
    """An aggregate built from ``events`` (none: a blank one), ready for ``when``."""
    return AggregateSpec(aggregate_type.from_events(aggregate_id or uuid4(), events))


class AggregateSpec(Generic[A]):
    def __init__(self, aggregate: A) -> None:
        self.aggregate = aggregate

    def when(self, action: Callable[[A], Aggregate | None]) -> _Outcome:
        """Run ``action``; a returned aggregate (a factory's result) is the one observed."""
        try:
            returned = action(self.aggregate)
        except Exception as error:  # kept for then_raises
            return _Outcome([], error)
        observed = returned if isinstance(returned, Aggregate) else self.aggregate
        return _Outcome(list(observed.pending_events), None)


class CommandSpec:
    """Runs a command through a real ``CommandBus`` on an in-memory store."""

    def __init__(self, router: CommandRouter) -> None:
        from framework.adapters.memory import MemoryEventStore

        self.store = MemoryEventStore()
        self.bus = CommandBus(router, self.store)

    def given(self, aggregate_type: type[Aggregate], aggregate_id: UUID, *events: Event) -> CommandSpec:
        envelopes = [
            EventEnvelope(aggregate_type.aggregate_name, aggregate_id, version, e, EventMetadata())
            for version, e in enumerate(events, start=self._next_version(aggregate_id))
        ]
        self.store.append([to_stored(e) for e in envelopes])
        return self

    def _next_version(self, aggregate_id: UUID) -> int:
        return len(self.store.read_stream(aggregate_id)) + 1

    def when(self, command: Command) -> _Outcome:
        head = self.store.head()
        try:
            self.bus.execute(command)
        except Exception as error:
            return _Outcome([], error)
        written = [from_stored(n).event for n in self.store.read_all(head, 1_000_000)]
        return _Outcome(written, None)


class _Outcome:
    def __init__(self, events: list[Event], error: Exception | None) -> None:
        self.events = events
        self.error = error

    def then(self, *expected: Event) -> None:
        if self.error is not None:
            raise AssertionError(f"expected events, got {type(self.error).__name__}: {self.error}")
        assert self.events == list(expected), _diff(self.events, list(expected))

    def then_raises(self, error_type: type[Exception], match: str = "", **attributes: Any) -> None:
        if not isinstance(self.error, error_type):
            got = type(self.error).__name__ if self.error else f"events {self.events}"
            raise AssertionError(f"expected {error_type.__name__}, got {got}")
        assert match in str(self.error), f"{match!r} not in {str(self.error)!r}"
        for name, value in attributes.items():
            assert getattr(self.error, name) == value, f"{name}={getattr(self.error, name)!r}"


def _diff(actual: list[Event], expected: list[Event]) -> str:
    return f"\n  recorded: {actual}\n  expected: {expected}"
