"""Batch-local changes to read models, applied on top of what a view store holds.

Handlers see their own earlier changes in the batch; nothing reaches the
store until the batch commits, when the adapter flushes ``changes`` in bulk
(one statement per table and kind, not one per event).
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import TypeAdapter, ValidationError

from framework.readmodel import ReadModel

if TYPE_CHECKING:
    from framework.views import DeadLetter, Deadline, OutboxEntry

__all__ = ["RowCache", "RowSource", "StagedBatch", "StagedViews"]

R = TypeVar("R", bound=ReadModel)
RowKey = tuple[type[ReadModel], tuple[Any, ...]]


class RowSource(Protocol):
    """Committed rows of one projection version."""

    def load(self, model: type[R], key: tuple[Any, ...]) -> R | None: ...

    def load_where(self, model: type[R], equal: dict[str, Any]) -> list[R]: ...


class RowCache:
    """Committed rows, kept between batches by the only writer of a version's tables.

    ``complete`` names models whose tables were empty when the cache was made (a rebuild's
    fresh tables): while every row written to them since is in the cache, a key the cache does
    not hold is a row that does not exist, answered without a query. A model stops being
    complete when one of its rows is evicted or written without being cached, or on ``clear``.

    Rows of a complete model nobody has looked up yet are kept too, ``held`` rows at most in all
    (a quarter of the cache by default): a log that opens every account before it moves one writes
    the accounts' rows before any is read, and would otherwise ask the database for each of them
    later. When more are written, the model holding the most (a history only ever written) is let go:
    its rows leave the cache, and it stops being complete.
    """

    def __init__(self, maxsize: int = 100_000, complete: Iterable[type[ReadModel]] = (), *,
                 held: int | None = None) -> None:
        self._rows: OrderedDict[RowKey, ReadModel | None] = OrderedDict()
        self._maxsize = maxsize
        self._half = maxsize // 2
        self._complete: set[type[ReadModel]] = set(complete)
        self.read: set[type[ReadModel]] = set()  # models looked up by key: their writes are cached
        self._held_limit = maxsize // 4 if held is None else held
        self._held: dict[type[ReadModel], set[RowKey]] = {}  # complete models' rows kept before any read
        self._held_count = 0
        # The partitions of a partitioned projection applied in one process share the cache (their
        # rows are disjoint), from several threads: each operation holds the lock, but a lookup that
        # finds its row while the cache is at most half full (see ``lookup``).
        self._lock = threading.RLock()

    def lookup(self, key: RowKey) -> tuple[bool, ReadModel | None]:
        """Whether the cache knows the row, and the row (None: there is none).

        A row found while the cache is at most half full is answered without the lock and left where it
        is in the eviction order (nothing is evicted before the cache is full, and the rows looked up again
        once it is more than half full move up then). A row present is the row, whatever another thread
        is doing; its absence means something only together with ``_complete``, which another thread may
        be changing (an eviction removes the row, then the model's completeness): "no such row" is only
        ever answered under the lock."""
        rows = self._rows
        if len(rows) <= self._half:
            row = rows.get(key, _MISSING)
            if row is not _MISSING:
                return True, row
        with self._lock:
            row = rows.get(key, _MISSING)
            if row is _MISSING:
                return key[0] in self._complete, None
            rows.move_to_end(key)
            return True, row

    def store(self, key: RowKey, row: ReadModel | None) -> None:
        with self._lock:
            self._store(key, row)

    def _store(self, key: RowKey, row: ReadModel | None) -> None:
        self._rows[key] = row
        self._rows.move_to_end(key)
        while len(self._rows) > self._maxsize:
            (model, _), _ = self._rows.popitem(last=False)
            self._complete.discard(model)
            self._held_count -= len(self._held.pop(model, ()))

    def refresh(self, key: RowKey, row: ReadModel | None) -> None:
        """Update a row that is cached; leave the cache alone otherwise."""
        with self._lock:
            if key in self._rows:
                self._rows[key] = row

    def publish(self, changes: dict[RowKey, ReadModel | None]) -> None:
        """A batch's changes (committed, or committing): rows of models looked up by key are
        cached; rows only written (a movement history) just update what the cache holds."""
        read = self.read
        with self._lock:
            self._release_read()
            for key, row in changes.items():
                if key[0] in read or (key[0] in self._complete and self._hold(key)):
                    self._store(key, row)
                elif key in self._rows:
                    self._rows[key] = row
                    self._complete.discard(key[0])
                else:
                    self._complete.discard(key[0])

    def _release_read(self) -> None:
        """Models looked up since their rows were held: those rows are cached as any other now."""
        for model in [m for m in self._held if m in self.read]:
            self._held_count -= len(self._held.pop(model))

    def _hold(self, key: RowKey) -> bool:
        """Keep a row of a complete model not looked up yet, within the limit; False: its model was let go."""
        held = self._held.setdefault(key[0], set())
        if key not in held:
            held.add(key)
            self._held_count += 1
        while self._held_count > self._held_limit:
            self._let_go(max(self._held, key=lambda model: len(self._held[model])))
        return key[0] in self._held

    def _let_go(self, model: type[ReadModel]) -> None:
        keys = self._held.pop(model)
        self._held_count -= len(keys)
        for key in keys:
            self._rows.pop(key, None)
        self._complete.discard(model)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self._complete.clear()
            self._held.clear()
            self._held_count = 0


class StagedViews:
    def __init__(self, source: RowSource, cache: RowCache | None = None) -> None:
        self._source = source
        self._cache = cache
        self._changes: dict[RowKey, ReadModel | None] = {}
        # The models this batch changed: ``get`` looks in ``_changes`` only for those. Why: a key holding a
        # UUID is hashed by Python code at every dict it is looked up in, and most gets are of rows the
        # batch never wrote (a replay's accounts).
        self._changed: set[type[ReadModel]] = set()
        self._underlay: StagedViews | None = None

    def layer_over(self, previous: object) -> None:
        """Read through ``previous``'s changes too: it may still be committing (bulk catch-up)."""
        if isinstance(previous, StagedViews):
            previous._underlay = None  # what lies under it has committed by now
            self._underlay = previous
        else:
            self._underlay = None

    def get(self, model: type[R], *key: Any) -> R | None:
        row_key = (model, key)
        if self._cache is not None:
            self._cache.read.add(model)
        row = self._changes.get(row_key, _MISSING) if model in self._changed else _MISSING
        if row is _MISSING:
            underlay = self._underlay
            if underlay is not None and model in underlay._changed:
                row = underlay._changes.get(row_key, _MISSING)
            if row is _MISSING:
                row = self._committed(model, row_key)
        if row is None or _COPY_KIND.get(model) is _SHARED:  # a frozen row: no copy, and no call to say so
            return row  # type: ignore[no-any-return]
        return _copy(row)

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
        model = type(row)
        key_of = _KEY_OF.get(model) or _key_getter(model)
        self._changes[(model, key_of(row))] = row
        self._changed.add(model)

    def delete(self, model: type[ReadModel], *key: Any) -> None:
        self._changes[(model, canonical_key(model, key))] = None
        self._changed.add(model)

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

    def grouped_changes(self) -> tuple[dict[type[ReadModel], list[tuple[Any, ...]]],
                                       dict[type[ReadModel], list[ReadModel]]]:
        """This batch's changes per model: the keys it deletes and the rows it puts (a bulk statement each)."""
        deletes: dict[type[ReadModel], list[tuple[Any, ...]]] = defaultdict(list)
        upserts: dict[type[ReadModel], list[ReadModel]] = defaultdict(list)
        for (model, key), row in self._changes.items():
            if row is None:
                deletes[model].append(key)
            else:
                upserts[model].append(row)
        return deletes, upserts

    def publish(self) -> None:
        """This batch's rows become what later batches read (it committed, or is committing).

        Rows of models the projector looks up by key are cached (the next batches would load
        them again otherwise); others only update rows the cache already knows: rows a projector
        writes and never reads (a movement history) would fill the cache and memory for nothing.
        """
        if self._cache is not None:
            self._cache.publish(self._changes)


_MISSING: Any = object()


def _copy(row: R | None) -> R | None:
    """An independent copy of a row, which handlers may mutate: ``copy_row``, done faster for rows
    of scalars only (the row's shallow ``__copy__``, without ``model_copy``'s update step); a row
    nothing can change (``ReadModel.immutable``) is shared, not copied."""
    if row is None:
        return None
    model = type(row)
    kind = _COPY_KIND.get(model)
    if kind is None:
        kind = _COPY_KIND[model] = _copy_kind(model)
    if kind is _SHARED:
        return row
    return row.__copy__() if kind is _SHALLOW else row.copy_row()


_SHARED, _SHALLOW, _DEEP = "shared", "shallow", "deep"
_COPY_KIND: dict[type[ReadModel], str] = {}


def _copy_kind(model: type[ReadModel]) -> str:
    if model.immutable():
        return _SHARED
    return _SHALLOW if model._flat() else _DEEP


def _key_getter(model: type[ReadModel]) -> Callable[[ReadModel], tuple[Any, ...]]:
    """``row.key_values()`` as one C call: an ``attrgetter`` of the key columns (always a tuple)."""
    key_of: Callable[[ReadModel], tuple[Any, ...]]
    if len(model.key) == 1:
        column = operator.attrgetter(model.key[0])

        def key_of(row: ReadModel) -> tuple[Any, ...]:
            return (column(row),)
    else:
        key_of = operator.attrgetter(*model.key)
    _KEY_OF[model] = key_of
    return key_of


_KEY_OF: dict[type[ReadModel], Callable[[ReadModel], tuple[Any, ...]]] = {}


def canonical_key(model: type[ReadModel], key: tuple[Any, ...]) -> tuple[Any, ...]:
    """``key`` as the model's rows hold it ("07" for an int column: 7). PostgreSQL finds a row by its
    column's type, so a delete spelled otherwise removes that row: the batch (a put of the same row) and
    the commit's announcement (``framework.positions.touched_by``) must name it as the row does."""
    adapters = _KEY_ADAPTERS.get(model) or _key_adapters(model)
    if len(key) != len(adapters):
        return tuple(key)
    try:
        return tuple(adapter.validate_python(value) for adapter, value in zip(adapters, key, strict=True))
    except ValidationError:
        return tuple(key)  # not a value of the column (an int for a text column): as given, cast by the database


def _key_adapters(model: type[ReadModel]) -> tuple[TypeAdapter[Any], ...]:
    annotations = [model.model_fields[column].annotation for column in model.key]
    adapters = tuple(TypeAdapter(Any if a is None else a) for a in annotations)
    _KEY_ADAPTERS[model] = adapters
    return adapters


_KEY_ADAPTERS: dict[type[ReadModel], tuple[TypeAdapter[Any], ...]] = {}


def _sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((value is None, value) for value in key)


class StagedBatch(StagedViews):
    """Staged views plus what a batch records besides rows: its new position (and the one it
    must start from), dead letters, a process manager's outbox entries and deadlines.

    Both view-store adapters build their batches on this; only how they commit differs.
    """

    def __init__(self, source: RowSource, cache: RowCache | None = None) -> None:
        super().__init__(source, cache)
        self.position: int | None = None
        self.since: int | None = None
        self.event_time: datetime | None = None
        self.letters: list[DeadLetter] = []
        self.settled: list[int] = []
        self.outbox: list[OutboxEntry] = []
        self.settled_outbox: list[int] = []
        self.deadlines: dict[tuple[str, str], Deadline] = {}
        self.cancelled: set[tuple[str, str]] = set()
        self.settled_deadlines: list[int] = []

    def advance(self, position: int, event_time: datetime | None, *, since: int | None = None) -> None:
        self.position, self.event_time, self.since = position, event_time, since

    def park(self, letter: DeadLetter) -> None:
        self.letters.append(letter)

    def enqueue(self, entry: OutboxEntry) -> None:
        self.outbox.append(entry)

    def schedule(self, deadline: Deadline) -> None:
        key = (deadline.projection, deadline.key)
        self.cancelled.discard(key)
        self.deadlines[key] = deadline

    def cancel_deadline(self, projection: str, key: str) -> None:
        self.deadlines.pop((projection, key), None)
        self.cancelled.add((projection, key))
