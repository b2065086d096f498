"""A bounded, thread-safe cache of aggregates as they were after their last save.

A cached aggregate is never handed out itself: readers get a detached copy
(``Aggregate.detached``: containers rebuilt, immutable values shared, so a
command that changes its copy and then fails leaves nothing behind) and still
read the events stored after its version, so the cache only saves the replay
of old events. It can be stale, never wrong. What ``put`` stores must not be
changed afterwards: the bus stores an aggregate only once its command is saved.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TypeVar
from uuid import UUID

from framework.aggregate import Aggregate

__all__ = ["AggregateCache", "StagedCache"]

A = TypeVar("A", bound=Aggregate)


class AggregateCache:
    def __init__(self, maxsize: int = 10_000) -> None:
        self._maxsize = maxsize
        self._items: OrderedDict[UUID, Aggregate] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, aggregate_type: type[A], aggregate_id: UUID) -> A | None:
        with self._lock:
            cached = self._items.get(aggregate_id)
            if cached is None or type(cached) is not aggregate_type:
                return None
            self._items.move_to_end(aggregate_id)
        return cached.detached()

    def put(self, aggregate: Aggregate) -> None:
        if self._maxsize <= 0:
            return
        with self._lock:
            current = self._items.get(aggregate.id)
            if current is not None and current.version >= aggregate.version:
                return
            self._items[aggregate.id] = aggregate
            self._items.move_to_end(aggregate.id)
            if len(self._items) > self._maxsize:
                self._items.popitem(last=False)


class StagedCache(AggregateCache):
    """What the commands of one batch decide on: the state the batch's earlier commands left (staged,
    not saved yet), else the cache's. ``settle`` puts the staged state in the cache once it is saved."""

    def __init__(self, cache: AggregateCache) -> None:
        super().__init__(maxsize=0)
        self._cache = cache
        self._staged: dict[UUID, Aggregate] = {}

    def get(self, aggregate_type: type[A], aggregate_id: UUID) -> A | None:
        staged = self._staged.get(aggregate_id)
        if staged is None:
            return self._cache.get(aggregate_type, aggregate_id)
        return staged.detached() if type(staged) is aggregate_type else None

    def put(self, aggregate: Aggregate) -> None:
        self._staged[aggregate.id] = aggregate

    def settle(self) -> None:
        for aggregate in self._staged.values():
            self._cache.put(aggregate)
