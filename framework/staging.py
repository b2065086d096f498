"""Batch-local changes to read models, applied on top of what a view store holds.

Handlers see their own earlier changes in the batch; nothing reaches the
store until the batch commits, when the adapter flushes ``changes`` in bulk
(one statement per table and kind, not one per event).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from framework.readmodel import ReadModel

if TYPE_CHECKING:
    from framework.views import DeadLetter

__all__ = ["RowCache", "RowSource", "StagedBatch", "StagedViews"]

R = TypeVar("R", bound=ReadModel)
RowKey = tuple[type[ReadModel], tuple[Any, ...]]


class RowSource(Protocol):
    """Committed rows of one projection version."""

    def load(self, model: type[R], key: tuple[Any, ...]) -> R | None: ...

    def load_where(self, model: type[R], equal: dict[str, Any]) -> list[R]: ...


class RowCache:
    """Committed rows, kept between batches by the only writer of a version's tables."""

    def __init__(self, maxsize: int = 100_000) -> None:
        self._rows: OrderedDict[RowKey, ReadModel | None] = OrderedDict()
        self._maxsize = maxsize

    def lookup(self, key: RowKey) -> tuple[bool, ReadModel | None]:
        if key not in self._rows:
            return False, None
        self._rows.move_to_end(key)
        return True, self._rows[key]

    def store(self, key: RowKey, row: ReadModel | None) -> None:
        self._rows[key] = row
        self._rows.move_to_end(key)
        while len(self._rows) > self._maxsize:
            self._rows.popitem(last=False)

    def refresh(self, key: RowKey, row: ReadModel | None) -> None:
        """Update a row that is cached; leave the cache alone otherwise."""
        if key in self._rows:
            self._rows[key] = row

    def clear(self) -> None:
        self._rows.clear()


class StagedViews:
    def __init__(self, source: RowSource, cache: RowCache | None = None) -> None:
        self._source = source
        self._cache = cache
        self._changes: dict[RowKey, ReadModel | None] = {}
        self._underlay: StagedViews | None = None

    def layer_over(self, previous: object) -> None:
        """Read through ``previous``'s changes too: it may still be committing (bulk catch-up)."""
        if isinstance(previous, StagedViews):
            previous._underlay = None  # what lies under it has committed by now
            self._underlay = previous
        else:
            self._underlay = None

    def get(self, model: type[R], *key: Any) -> R | None:
        row_key = (model, tuple(key))
        for layer in self._layers():
            if row_key in layer._changes:
                return _copy(layer._changes[row_key])  # type: ignore[return-value]
        return _copy(self._committed(model, row_key))

    def _layers(self) -> list[StagedViews]:
        """This batch first, then the one under it (newest changes win)."""
        return [self] if self._underlay is None else [self, self._underlay]

    def _committed(self, model: type[R], row_key: RowKey) -> R | None:
        if self._cache is not None:
            found, row = self._cache.lookup(row_key)
            if found:
                return row  # type: ignore[return-value]
        row = self._source.load(model, row_key[1])
        if self._cache is not None:
            self._cache.store(row_key, row)
        return row

    def put(self, row: ReadModel) -> None:
        """The row now belongs to the batch: change it again only through another ``put``."""
        self._changes[(type(row), row.key_values())] = row

    def delete(self, model: type[ReadModel], *key: Any) -> None:
        self._changes[(model, tuple(key))] = None

    def select(self, model: type[R], **equal: Any) -> list[R]:
        rows: dict[tuple[Any, ...], ReadModel] = {
            row.key_values(): row for row in self._source.load_where(model, equal)
        }
        for layer in reversed(self._layers()):
            for (changed_model, key), row in layer._changes.items():
                if changed_model is not model:
                    continue
                rows.pop(key, None)
                if row is not None and all(getattr(row, k) == v for k, v in equal.items()):
                    rows[key] = row
        return [rows[k].copy_row() for k in sorted(rows, key=_sort_key)]  # type: ignore[misc]

    def changes(self) -> Iterator[tuple[type[ReadModel], tuple[Any, ...], ReadModel | None]]:
        for (model, key), row in self._changes.items():
            yield model, key, row

    def publish(self) -> None:
        """This batch's rows become what later batches read (it committed, or is committing).

        Only rows the cache already knows are updated: rows a projector writes and never
        reads (a movement history) would otherwise fill the cache and memory for nothing.
        """
        if self._cache is not None:
            for row_key, row in self._changes.items():
                self._cache.refresh(row_key, row)


def _copy(row: R | None) -> R | None:
    return row.copy_row() if row is not None else None  # handlers may mutate it


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((value is None, value) for value in key)


class StagedBatch(StagedViews):
    """Staged views plus what a batch records besides rows: its new position and its dead letters.

    Both view-store adapters build their batches on this; only how they commit differs.
    """

    def __init__(self, source: RowSource, cache: RowCache | None = None) -> None:
        super().__init__(source, cache)
        self.position: int | None = None
        self.event_time: datetime | None = None
        self.letters: list[DeadLetter] = []
        self.settled: list[int] = []

    def advance(self, position: int, event_time: datetime | None) -> None:
        self.position, self.event_time = position, event_time

    def park(self, letter: DeadLetter) -> None:
        self.letters.append(letter)
