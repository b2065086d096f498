"""The unit of work: the aggregates one command loaded or created, and their new events."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID, uuid4

from framework.aggregate import Aggregate
from framework.cache import AggregateCache
from framework.errors import AggregateNotFound, AlreadyExists
from framework.events import EventEnvelope, EventMetadata
from framework.mapper import from_stored
from framework.snapshots import from_snapshot
from framework.store import EventStore

__all__ = ["Touched", "UnitOfWork"]

A = TypeVar("A", bound=Aggregate)


@dataclass
class Touched:
    """An aggregate in this unit of work and the version it was loaded at."""

    aggregate: Aggregate
    loaded_version: int


class UnitOfWork:
    """Loads aggregates for one attempt at a command and collects what it changed.

    With ``trust_cache`` (a command's first attempt) cached aggregates are used
    without reading newer events and new aggregates are not looked up first:
    the append's version check rejects any decision made on stale state, and
    the bus then retries with ``trust_cache=False``, reading the store. This is
    optimistic concurrency doing its job, and saves reads on the common path.
    """

    def __init__(
        self, store: EventStore, cache: AggregateCache | None = None, *, trust_cache: bool = False
    ) -> None:
        self._store = store
        self._cache = cache
        self._trust_cache = trust_cache and cache is not None
        self._touched: dict[UUID, Touched] = {}

    def find(self, aggregate_type: type[A], aggregate_id: UUID) -> A | None:
        """The aggregate, or None if it has no events."""
        touched = self._touched.get(aggregate_id)
        if touched is not None:
            return _as(aggregate_type, touched.aggregate)
        aggregate = self._load(aggregate_type, aggregate_id)
        if aggregate is not None:
            self._touched[aggregate_id] = Touched(aggregate, aggregate.version)
        return aggregate

    def get(self, aggregate_type: type[A], aggregate_id: UUID, *, label: str = "") -> A:
        """The aggregate, or AggregateNotFound naming it by ``label`` (or id)."""
        aggregate = self.find(aggregate_type, aggregate_id)
        if aggregate is None:
            raise AggregateNotFound(
                f"{aggregate_type.aggregate_name} {label or aggregate_id} does not exist"
            )
        return aggregate

    def add(self, aggregate: A, *, label: str = "") -> A:
        """Track a new aggregate; AlreadyExists if one with its id is stored."""
        if aggregate.id in self._touched or self._stored(aggregate.id):
            raise AlreadyExists(
                f"{type(aggregate).aggregate_name} {label or aggregate.id} already exists"
            )
        self._touched[aggregate.id] = Touched(aggregate, 0)
        return aggregate

    def _stored(self, aggregate_id: UUID) -> bool:
        if self._trust_cache:
            return False  # a duplicate fails the append; the retry reads and reports it
        return bool(self._store.read_stream(aggregate_id, 0)[:1])

    def _load(self, aggregate_type: type[A], aggregate_id: UUID) -> A | None:
        aggregate = self._from_cache(aggregate_type, aggregate_id)
        if aggregate is not None and self._trust_cache:
            return aggregate
        if aggregate is None:
            aggregate = self._from_latest_snapshot(aggregate_type, aggregate_id)
        after = aggregate.version if aggregate else 0
        envelopes = [from_stored(s) for s in self._store.read_stream(aggregate_id, after)]
        if aggregate is None:
            if not envelopes or envelopes[0].aggregate_type != aggregate_type.aggregate_name:
                return None
            aggregate = aggregate_type.blank(aggregate_id)
        aggregate.replay(e.event for e in envelopes)
        return aggregate

    def _from_cache(self, aggregate_type: type[A], aggregate_id: UUID) -> A | None:
        return self._cache.get(aggregate_type, aggregate_id) if self._cache else None

    def remember(self) -> None:
        """After a successful save: keep the saved state for the next command."""
        if self._cache is not None:
            for touched in self._touched.values():
                self._cache.put(touched.aggregate)

    def _from_latest_snapshot(self, aggregate_type: type[A], aggregate_id: UUID) -> A | None:
        if not aggregate_type.snapshot_every:
            return None
        snapshot = self._store.latest_snapshot(aggregate_id)
        return from_snapshot(aggregate_type, snapshot) if snapshot else None

    @property
    def touched(self) -> list[Touched]:
        return list(self._touched.values())

    def collect(self, metadata: EventMetadata) -> list[EventEnvelope]:
        """Every new event, numbered per aggregate and stamped with metadata."""
        envelopes: list[EventEnvelope] = []
        for touched in self._touched.values():
            aggregate = touched.aggregate
            events = aggregate.collect_events()
            first = aggregate.version - len(events) + 1
            for offset, new_event in enumerate(events):
                stamped = metadata.model_copy(update={"event_id": uuid4()})
                envelopes.append(
                    EventEnvelope(
                        aggregate_type=type(aggregate).aggregate_name,
                        aggregate_id=aggregate.id,
                        version=first + offset,
                        event=new_event,
                        metadata=stamped,
                    )
                )
        return envelopes


def _as(aggregate_type: type[A], aggregate: Aggregate) -> A:
    if not isinstance(aggregate, aggregate_type):
        raise AggregateNotFound(f"{aggregate.id} is not a {aggregate_type.aggregate_name}")
    return aggregate

