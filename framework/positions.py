"""Waiting for projections' positions without polling: one watch per process.

A projection worker's commit announces the projection's new position (PostgreSQL ``NOTIFY`` in the
commit's transaction, or an in-process call for the memory view store): that is the
``PositionSignals`` port, with ``framework.adapters.pg_positions`` and
``framework.adapters.memory_positions`` as adapters (``framework.testing.positions_conformance``
checks both). ``PositionWatch`` listens once for the whole process and keeps the active versions'
positions it has heard of; a read-your-writes request or a live subscription waits on it and is woken
when a position it needs is reached, with no SQL per wake. The positions are read again from the
view store when the signals say changes may have been missed (on start, after a reconnect) and every
``recheck_seconds`` while anything waits, in case a notification was lost.

    watch = PositionWatch(signals, views, store.head, max_waiting=1000)
    outcome = await watch.wait_for(["cards"], 42, timeout=5.0)
    # {"requested": 42, "reached": True, "positions": {"cards": 57}}
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from enum import Enum
from typing import Any, Protocol
from uuid import UUID

from framework.errors import EventfoldError, TooManyWaiting
from framework.query import scalar_columns
from framework.readmodel import ReadModel

__all__ = ["Deliver", "Interest", "PositionChange", "PositionSignals", "PositionSource", "PositionWatch", "RowValues",
           "Touched", "changed_values", "described", "key_text", "touched_by"]

log = logging.getLogger(__name__)


Touched = Mapping[str, frozenset[tuple[str, ...]]]  # table -> keys of the rows a batch changed, as text
# table -> key as text -> the row's scalar columns as JSON values after the batch (None: deleted)
RowValues = Mapping[str, Mapping[tuple[str, ...], Mapping[str, Any] | None]]


@dataclass(frozen=True)
class PositionChange:
    """A projection version committed ``position``; ``switched``: that version just became the active one.

    ``touched``: the keys of the rows the commit changed, by table, each value as text (``key_text``);
    None when unknown (too many to announce), which means any row may have changed."""

    projection: str
    version: int
    position: int
    switched: bool = False
    touched: Touched | None = field(default=None, compare=False)
    rows: RowValues | None = field(default=None, compare=False)  # ``touched``'s rows' new values, when known


def key_text(values: Iterable[Any]) -> tuple[str, ...]:
    """A row key as announced in ``PositionChange.touched``: each value as text (an enum's value)."""
    return tuple(str(v.value if isinstance(v, Enum) else v) for v in values)


def touched_by(changes: Iterable[tuple[type[ReadModel], tuple[Any, ...], Any]], limit: int = 256
               ) -> dict[str, frozenset[tuple[str, ...]]] | None:
    """``touched`` for a batch's changes (``StagedBatch.changes()``); None past ``limit`` rows (a big
    catch-up batch is not worth describing: its listeners read again, once)."""
    keys: dict[str, set[tuple[str, ...]]] = {}
    for count, (model, key, _) in enumerate(changes):
        if count == limit:
            return None
        keys.setdefault(model.table, set()).add(key_text(key))
    return {table: frozenset(found) for table, found in keys.items()}


def described(changes: Iterable[tuple[type[ReadModel], tuple[Any, ...], Any]], limit: int = 256
              ) -> tuple[Touched | None, RowValues | None]:
    """``touched`` and ``rows`` for a batch's changes, or neither past ``limit`` rows: a big catch-up
    batch is counted before any of its rows is described."""
    first = list(itertools.islice(changes, limit + 1))
    if len(first) > limit:
        return None, None
    return touched_by(first, limit), changed_values(first, limit)


def changed_values(changes: Iterable[tuple[type[ReadModel], tuple[Any, ...], Any]], limit: int = 256
                   ) -> dict[str, dict[tuple[str, ...], dict[str, Any] | None]] | None:
    """``rows`` for a batch's changes: each changed row's scalar columns as JSON values (what a query's
    conditions and order can look at), None for a deleted row; None past ``limit`` rows."""
    values: dict[str, dict[tuple[str, ...], dict[str, Any] | None]] = {}
    for count, (model, key, row) in enumerate(changes):
        if count == limit:
            return None
        shown = None if row is None else {c: json_value(getattr(row, c)) for c in scalar_columns(model)}
        values.setdefault(model.table, {})[key_text(key)] = shown
    return values


def json_value(value: Any) -> Any:
    """A scalar column's value as JSON that its column's pydantic type reads back as the same value
    (a float that is not finite as text: JSON has no NaN, and pydantic would write it as null)."""
    if value is None or (isinstance(value, bool | int | str) and not isinstance(value, Enum)):
        return value
    if isinstance(value, Enum):
        return json_value(value.value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, date):  # a datetime too
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    return _OPAQUE


_OPAQUE = {"$opaque": True}  # not a value a query reads exactly: a reader decides nothing from it


Deliver = Callable[[PositionChange | None], None]  # None: changes may have been missed, read positions again


class PositionSignals(Protocol):
    """Where a process hears of projections' committed positions (one listener per process)."""

    async def listen(self, deliver: Deliver, stop: asyncio.Event) -> None:
        """Call ``deliver`` on the running loop for every change committed after the listening began,
        and ``deliver(None)`` once listening (again), since changes before it were not heard;
        reconnect by itself after losing the source; return once ``stop`` is set."""


class PositionSource(Protocol):
    """What the watch reads positions from when it must (the view store's ``ReadModels`` and versions)."""

    def active_version(self, name: str) -> int: ...

    def position(self, name: str, version: int) -> int: ...


@dataclass
class _Waiter:
    projections: tuple[str, ...]
    position: int
    future: asyncio.Future[None]


@dataclass(eq=False)
class Interest:
    """A subscriber's interest in a projection's commits: all of them (``table`` None), or those changing
    a row of ``table`` whose key holds ``value`` (as text) at ``index``. ``event`` is set by each one."""

    projection: str
    table: str | None = None
    index: int = 0
    value: str = ""
    event: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Known:
    version: int
    position: int


@dataclass
class PositionWatch:
    """The process's view of the active projections' positions, and the requests waiting on them.

    ``head`` gives the event store's last position: a wait for a position beyond it is answered at
    once (``reached: false``, with ``head``). At most ``max_waiting`` waits at a time; one more raises
    ``TooManyWaiting``.
    """

    signals: PositionSignals
    source: PositionSource
    head: Callable[[], int] | None = None
    max_waiting: int = 1_000
    max_subscriptions: int = 10_000
    recheck_seconds: float = 2.0
    _subscriptions: int = field(default=0, init=False)
    _known: dict[str, _Known] = field(default_factory=dict, init=False)
    _heaps: dict[str, list[tuple[int, int, _Waiter]]] = field(default_factory=dict, init=False)
    _order: itertools.count[int] = field(default_factory=itertools.count, init=False)
    _waiting: int = field(default=0, init=False)
    _head: int = field(default=0, init=False)
    _head_read_at: float = field(default=float("-inf"), init=False)
    _stop: asyncio.Event | None = field(default=None, init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    _loading: asyncio.Lock | None = field(default=None, init=False)
    _interests: dict[str, set[Interest]] = field(default_factory=dict, init=False)  # by projection
    _by_key: dict[tuple[str, str, int, str], set[Interest]] = field(default_factory=dict, init=False)
    # A recheck's reads ahead of what was heard: acted on at the next recheck if still unheard by then.
    _ahead: dict[str, tuple[int, int]] = field(default_factory=dict, init=False)
    # Reads in flight that live subscribers share (framework.graphql.live), with the position heard when each began.
    shared_reads: dict[Any, tuple[asyncio.Future[Any], int]] = field(default_factory=dict, init=False)
    # Batches of such reads being gathered in this turn of the loop (framework.graphql.live.Batch), by name.
    batched_reads: dict[Any, Any] = field(default_factory=dict, init=False)
    # Told every change heard, of any projection, before the watch acts on it (the response cache); a
    # position found moved by a read, with nothing heard, is told as a change that names no rows.
    observers: list[Deliver] = field(default_factory=list, init=False)

    @property
    def waiting(self) -> int:
        """Read-your-writes waits in progress."""
        return self._waiting

    def positions_known(self) -> dict[str, int]:
        """The positions heard so far, without reading anything."""
        return {name: known.position for name, known in self._known.items()}

    @property
    def subscriptions(self) -> int:
        """Live subscriptions open."""
        return self._subscriptions

    async def start(self) -> None:
        """Begin listening (idempotent); the first wait starts it when nobody did."""
        if self._stop is not None:
            return
        self._stop, self._loading = asyncio.Event(), asyncio.Lock()
        self._tasks = [asyncio.create_task(self.signals.listen(self._deliver, self._stop)),
                       asyncio.create_task(self._recheck(self._stop))]

    async def close(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._stop, self._tasks = None, []

    async def positions(self, projections: Sequence[str]) -> dict[str, int]:
        """The active versions' positions as last heard (read once for a projection not heard of yet)."""
        await self.start()
        missing = [p for p in projections if p not in self._known]
        if missing:
            assert self._loading is not None
            async with self._loading:  # concurrent first askers share one read
                await self._refresh([p for p in missing if p not in self._known])
        return {p: self._known[p].position for p in projections}

    async def wait_for(self, projections: Sequence[str], position: int, timeout: float) -> dict[str, Any]:
        """Wait (at most ``timeout`` seconds) until every one of ``projections`` has applied ``position``.

        The outcome is ``{"requested", "reached", "positions"}``, plus ``head`` when ``position`` is past
        the event store's head (answered at once: no event there can ever be applied by waiting)."""
        positions = await self.positions(projections)
        if all(v >= position for v in positions.values()):
            return _outcome(position, positions)
        head = await self._head_if_before(position)
        if head is not None:
            return {**_outcome(position, positions), "head": head}
        with contextlib.suppress(TimeoutError):
            await self.until(projections, position, timeout)
        return _outcome(position, {p: self._known[p].position for p in projections})

    async def until(self, projections: Sequence[str], position: int, timeout: float | None = None, *,
                    counted: bool = True) -> None:
        """Return once every one of ``projections`` is known at ``position`` or beyond (``TimeoutError``
        after ``timeout``); while it waits it counts against ``max_waiting`` unless not ``counted``
        (a subscription between updates: those are bounded by ``subscribed``)."""
        await self.positions(projections)
        if self._reached(projections, position):
            return
        if counted and self._waiting >= self.max_waiting:
            raise TooManyWaiting(f"this server already holds {self.max_waiting} requests waiting for positions; "
                                 "retry shortly")
        waiter = _Waiter(tuple(projections), position, asyncio.get_running_loop().create_future())
        self._waiting += counted
        try:
            self._park(waiter)
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        finally:
            self._waiting -= counted
            waiter.future.cancel()  # a parked entry left behind is dropped when its projection moves

    async def any_beyond(self, positions: dict[str, int]) -> None:
        """Return once any of the projections is known past its position in ``positions``."""
        await self.positions(list(positions))
        future = asyncio.get_running_loop().create_future()
        try:
            for projection, position in positions.items():
                self._park(_Waiter((projection,), position + 1, future))
            await future
        finally:
            future.cancel()

    @contextlib.contextmanager
    def subscribed(self) -> Iterator[None]:
        """Count one live subscription while inside; ``TooManyWaiting`` past ``max_subscriptions``."""
        if self._subscriptions >= self.max_subscriptions:
            raise TooManyWaiting(f"this server already serves {self.max_subscriptions} subscriptions; "
                                 "retry shortly")
        self._subscriptions += 1
        try:
            yield
        finally:
            self._subscriptions -= 1

    @contextlib.contextmanager
    def interest(self, interest: Interest) -> Iterator[asyncio.Event]:
        """Have ``interest.event`` set by every commit of its projection that concerns it, while inside."""
        self._interests.setdefault(interest.projection, set()).add(interest)
        where = (interest.projection, interest.table or "", interest.index, interest.value)
        if interest.table is not None:
            self._by_key.setdefault(where, set()).add(interest)
        try:
            yield interest.event
        finally:
            self._interests[interest.projection].discard(interest)
            self._by_key.get(where, set()).discard(interest)

    def _tell(self, projection: str, touched: Touched | None) -> None:
        """Set the events of the interests in ``projection`` that the change may concern."""
        interests = self._interests.get(projection)
        if not interests:
            return
        if touched is None or len(interests) <= sum(len(keys) for keys in touched.values()):
            for interest in interests:
                if interest.table is None or touched is None or _concerns(interest, touched):
                    interest.event.set()
            return
        for interest in interests:
            if interest.table is None:
                interest.event.set()
        for table, keys in touched.items():
            for key in keys:
                for index, value in enumerate(key):
                    for interest in self._by_key.get((projection, table, index, value), ()):
                        interest.event.set()

    def _reached(self, projections: Sequence[str], position: int) -> bool:
        return all(self._known[p].position >= position for p in projections)

    def _park(self, waiter: _Waiter) -> None:
        """Put the waiter under the first of its projections not yet at its position; wake it if none."""
        behind = next((p for p in waiter.projections if self._known[p].position < waiter.position), None)
        if behind is None:
            if not waiter.future.done():
                waiter.future.set_result(None)
            return
        heapq.heappush(self._heaps.setdefault(behind, []), (waiter.position, next(self._order), waiter))

    def _moved(self, projection: str) -> None:
        heap, now = self._heaps.get(projection), self._known[projection].position
        while heap and heap[0][0] <= now:
            _, _, waiter = heapq.heappop(heap)
            if not waiter.future.done():
                self._park(waiter)

    def _deliver(self, change: PositionChange | None) -> None:
        for observer in self.observers:
            observer(change)
        if change is None:
            self._spawn(self._refresh(list(self._known)))
            return
        known = self._known.get(change.projection)
        if known is None:
            return  # nobody asked about it yet: it is read when someone does
        if change.switched and change.version != known.version:
            self._known[change.projection] = _Known(change.version, change.position)
            self._tell(change.projection, None)  # another version: any row may differ
        elif change.version == known.version and change.position > known.position:
            known.position = change.position
            self._tell(change.projection, change.touched)
        else:
            return
        self._moved(change.projection)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _refresh(self, names: list[str], *, recheck: bool = False) -> None:
        """Read the names' active positions from the view store (one thread hop for all of them).

        ``recheck``: a safety-net read while the signals are heard. A position found ahead of what was
        heard is then most often a commit whose notification is on its way (it tells which rows changed);
        moving at once would wake every subscriber of the projection to read again, so it is acted on
        only if, at the next recheck, nothing heard has reached it yet (the notification was lost)."""
        if not names:
            return
        try:
            read = await asyncio.to_thread(_read_positions, self.source, names)
        except EventfoldError as error:  # the database is away: waits go on with what was heard
            log.warning("could not read projection positions: %s", error.message)
            if any(n not in self._known for n in names):
                raise
            return
        for name, (version, position) in read.items():
            known = self._known.get(name)
            if recheck and known is not None and known.version == version and not self._lost(name, version, position,
                                                                                              known.position):
                continue
            self._ahead.pop(name, None)
            if known is None or known.version != version or position > known.position:
                for observer in self.observers if known is not None else ():  # the first read is no change
                    observer(PositionChange(name, version, position, switched=True))
                self._known[name] = _Known(version, position)
                self._tell(name, None)  # moved without a word: what changed is not known
                self._moved(name)

    def _lost(self, name: str, version: int, position: int, heard: int) -> bool:
        """Whether a recheck's ``position``, ahead of the ``heard`` one, is to be acted on now: the last
        recheck already found ``name`` ahead and nothing heard since reached that position. Otherwise
        ``position`` is remembered for the next recheck."""
        if position <= heard:
            self._ahead.pop(name, None)
            return False
        before = self._ahead.get(name)
        if before is not None and before[0] == version and heard < before[1]:
            return True
        self._ahead[name] = (version, position)
        return False

    async def _recheck(self, stop: asyncio.Event) -> None:
        """A safety net for a lost notification: read again every ``recheck_seconds`` while anything waits
        (a request, or a subscription)."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.recheck_seconds)
            if (self._waiting or self._subscriptions) and not stop.is_set():
                followed = {p for p, heap in self._heaps.items() if heap} | {p for p, i in self._interests.items() if i}
                with contextlib.suppress(EventfoldError):
                    await self._refresh(sorted(followed & set(self._known)), recheck=True)

    async def _head_if_before(self, position: int) -> int | None:
        """The store's head when ``position`` is past it (read only when the last head seen is before it)."""
        if self.head is None or position <= self._head:
            return None
        assert self._loading is not None  # started by positions()
        async with self._loading:  # concurrent askers share one read
            if position > self._head:
                self._head = max(self._head, await asyncio.to_thread(self.head))
        return self._head if position > self._head else None

    async def current_head(self, max_age: float = 0.0) -> int | None:
        """The event store's head, read again when the last read is older than ``max_age`` seconds (so that
        many subscribers share one read); None without a store."""
        if self.head is None:
            return None
        loop = asyncio.get_running_loop()
        if loop.time() - self._head_read_at > max_age:
            self._head = max(self._head, await asyncio.to_thread(self.head))
            self._head_read_at = loop.time()
        return self._head


def _concerns(interest: Interest, touched: Touched) -> bool:
    keys = touched.get(interest.table or "", ())
    return any(len(key) > interest.index and key[interest.index] == interest.value for key in keys)


def _read_positions(source: PositionSource, names: list[str]) -> dict[str, tuple[int, int]]:
    read = {}
    for name in names:
        version = source.active_version(name)
        read[name] = (version, source.position(name, version))
    return read


def _outcome(position: int, positions: dict[str, int]) -> dict[str, Any]:
    return {"requested": position, "reached": all(v >= position for v in positions.values()),
            "positions": positions}
