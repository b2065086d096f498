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

__all__ = ["AggregateCache"]

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
