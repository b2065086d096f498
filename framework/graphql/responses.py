"""Answers kept while the read models they came from stand still (the query API's response cache).

An answer is kept under its document, variables, operation name and caller (roles and subject),
with the ``(version, position, change mark)`` of every projection its fields read (``@reads``) as
they were *before* it was computed. A later request gets the kept answer only if those have not
moved since: positions move in the same transaction as the rows, so equal positions mean equal
rows. A partitioned projection's position is its lowest partition's, which stands still while the
others move: its change mark (the sum of its partitions' positions) moves with every commit.

The positions compared are read fresh for each request, by a statement that starts after the
request arrived (``PositionClock``; the requests waiting at once share one statement), so a
commit that finished before a request arrived is never hidden from it by the cache.

Only operations whose every top-level field declares the projections it reads are kept, and only
answers without errors: a field whose answer depends on something else (the time, the caller's
identity beyond roles and subject) must not declare ``@reads``, or the cache must be off
(``QueryApiOptions.response_cache_entries = 0``).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from framework.graphql.query_reads import QueryRead
from framework.positions import PositionChange, RowValues, Touched, key_text
from framework.query import BY_KEY, Condition, Sort, check_conditions
from framework.security import Principal
from framework.views import ActivePositions, AsyncActivePositions, TextOrder

__all__ = ["Cached", "PositionClock", "Positions", "Reads", "RecordingViews", "ResponseCache", "answer_body",
           "async_positions_reader", "cache_key", "orders_text_by_code_point", "positions_reader",
           "with_extensions"]

Positions = Mapping[str, tuple[int, ...]]  # projection -> (active version, position[, change mark])


def async_positions_reader(views: Any, names: Sequence[str]) -> Callable[[], Awaitable[Positions]] | None:
    """The read of ``names``' positions on the event loop, when the view store has ``AsyncActivePositions``."""
    chosen = tuple(sorted(names))
    if isinstance(views, AsyncActivePositions):
        return lambda: views.active_positions_async(chosen)
    return None


def positions_reader(views: Any, names: Sequence[str]) -> Callable[[], Mapping[str, tuple[int, ...]]]:
    """A blocking read of ``names``' active versions and positions: one statement when the view
    store has the ``ActivePositions`` port, else two calls per projection."""
    chosen = tuple(sorted(names))
    if isinstance(views, ActivePositions):
        return lambda: views.active_positions(chosen)

    def each() -> dict[str, tuple[int, ...]]:
        versions = {name: views.active_version(name) for name in chosen}
        return {name: (version, views.position(name, version)) for name, version in versions.items()}

    return each


class PositionClock:
    """Fresh positions, one read at a time, shared by every caller that asked before it started.

    ``now()`` returns positions read by a statement that started after the call: whatever
    committed before the call is in them. Callers arriving while a read is under way wait for
    the next one, which they all share: one statement per round, however many requests wait."""

    def __init__(self, read: Callable[[], Awaitable[Positions]], *, settle_seconds: float = 2.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._read, self._settle, self._monotonic = read, settle_seconds, monotonic
        self._lock = asyncio.Lock()
        self._next: asyncio.Future[Positions] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._versions: dict[str, int] = {}
        self._switched_at: dict[str, float] = {}

    def settled(self, names: Sequence[str]) -> bool:
        """No active version of ``names`` was seen to change in the last ``settle_seconds``: a view store
        may go on reading the version it looked up a moment ago (PostgreSQL's caches it for a second),
        so an answer computed just after a switch is not kept."""
        now = self._monotonic()
        return all(now - self._switched_at.get(name, -math.inf) > self._settle for name in names)

    def _observe(self, positions: Positions) -> None:
        for name, (version, *_) in positions.items():
            if self._versions.setdefault(name, version) != version:
                self._versions[name], self._switched_at[name] = version, self._monotonic()

    async def now(self) -> Positions:
        future = self._next
        if future is None:
            future = self._next = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._run(future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(future)

    async def _run(self, future: asyncio.Future[Positions]) -> None:
        async with self._lock:  # the previous round has ended: this one starts now
            if self._next is future:
                self._next = None  # callers from now on need a read that starts after them
            try:
                positions = await self._read()
                self._observe(positions)
                future.set_result(positions)
            except Exception as error:  # every caller of the round gets it
                future.set_exception(error)
                future.exception()  # retrieved: a round nobody waits for any more logs nothing


# Where an answer read: a whole table (projection, table), or a row (projection, table, key as text).
Reading = tuple[str, str] | tuple[str, str, tuple[str, ...]]


class Reads:
    """What one request read through its views (``RecordingViews``): rows of a table by key, queries
    over a table (a page, a filter: ``queries``, each with what it returned), whole tables (a query whose
    rows a commit could not be matched with), or something else (``unknown``: only exact positions can
    vouch for it)."""

    def __init__(self) -> None:
        self.where: set[Reading] = set()
        self.queries: list[QueryRead] = []
        self.unknown = False

    def query(self, projection: str, model: Any, where: Sequence[Condition], sort: Sort,
              after: tuple[Any, ...] | None, limit: int | None, rows: Sequence[Any], code_point_text: bool) -> None:
        """A query and the rows it returned, in order."""
        keys = [row.key_values() for row in rows]
        if not all(_exact_key(key) for key in keys):  # a commit's keys may spell them otherwise
            self.table(projection, model.table)
            return
        last = sort.values(rows[-1]) if rows else None
        self.queries.append(QueryRead(projection, model, tuple(check_conditions(model, where)), sort, after, limit,
                                      frozenset(key_text(key) for key in keys), len(rows), last, code_point_text))

    def rows(self, projection: str, table: str, keys: Iterable[tuple[Any, ...]]) -> None:
        for key in keys:
            if _exact_key(key):
                self.where.add((projection, table, key_text(key)))
            else:  # a float, date or decimal may equal a row's value in another spelling: the table, then
                self.where.add((projection, table))

    def table(self, projection: str, table: str) -> None:
        self.where.add((projection, table))

    def projections(self) -> set[str]:
        return {reading[0] for reading in self.where} | {read.projection for read in self.queries}


_EXACT = (str, int)  # values whose text is the value: a key read by them is the key a commit announces


def _exact_key(key: Iterable[Any]) -> bool:
    return all(type(v) in _EXACT or (isinstance(v, Enum) and type(v.value) in _EXACT) for v in key)


class RecordingViews:
    """The view store as a request's resolvers see it when its answer may be kept: ``get_many`` and
    ``query`` note what they read in ``reads``; any other use of the store makes the reads unknown."""

    def __init__(self, views: Any, reads: Reads, code_point_text: bool | None = None) -> None:
        """``code_point_text``: ``orders_text_by_code_point(views)`` when the caller knows it already
        (the query API asks once, not per request); else asked on the first query."""
        self._views, self._reads = views, reads
        self._code_point_text = code_point_text

    def get_many(self, name: str, model: Any, keys: Sequence[tuple[Any, ...]]) -> Any:
        self._reads.rows(name, model.table, keys)
        return self._views.get_many(name, model, keys)

    async def get_many_async(self, name: str, model: Any, keys: Sequence[tuple[Any, ...]]) -> Any:
        self._reads.rows(name, model.table, keys)
        read_async = getattr(self._views, "get_many_async", None)
        if read_async is None:  # a store that reads only blocking: off the loop, as QueryContext.read does
            return await asyncio.to_thread(self._views.get_many, name, model, keys)
        return await read_async(name, model, keys)

    def query(self, name: str, model: Any, where: Sequence[Condition] = (), sort: Sort = BY_KEY, *,
              after: tuple[Any, ...] | None = None, limit: int | None = None) -> Any:
        where = where if isinstance(where, list | tuple) else tuple(where)  # read twice: by the store, then noted
        rows = self._views.query(name, model, where, sort, after=after, limit=limit)
        self._reads.query(name, model, where, sort, after, limit, rows, self._text_order())
        return rows

    def _text_order(self) -> bool:
        if self._code_point_text is None:
            self._code_point_text = orders_text_by_code_point(self._views)
        return self._code_point_text

    async def query_async(self, name: str, model: Any, where: Sequence[Condition] = (), sort: Sort = BY_KEY, *,
                          after: tuple[Any, ...] | None = None, limit: int | None = None) -> Any:
        """``query`` on the event loop (``QueryContext.read`` of a page): noted as ``query`` notes it."""
        where = where if isinstance(where, list | tuple) else tuple(where)
        read_async = getattr(self._views, "query_async", None)
        if read_async is None:  # a store that reads only blocking: off the loop, as QueryContext.read does
            rows = await asyncio.to_thread(self._views.query, name, model, where, sort, after=after, limit=limit)
        else:
            rows = await read_async(name, model, where, sort, after=after, limit=limit)
        code_point_text = self._code_point_text
        if code_point_text is None:  # the store may ask the database (blocking): once, off the loop
            code_point_text = await asyncio.to_thread(self._text_order)
        self._reads.query(name, model, where, sort, after, limit, rows, code_point_text)
        return rows

    def __getattr__(self, attribute: str) -> Any:
        self._reads.unknown = True
        return getattr(self._views, attribute)


def orders_text_by_code_point(views: Any) -> bool:
    """Whether ``views`` orders text by code point (``TextOrder``; False without the port). It may ask
    the database (blocking): the query API asks once."""
    return isinstance(views, TextOrder) and views.orders_text_by_code_point()


@dataclass(eq=False)
class Cached:
    """A kept answer: its JSON (``{"data": ...}``; the objects are not kept, several times the bytes' memory),
    and the positions it was computed at.

    ``epoch``: the listening session (``ResponseCache.epoch``) through which every commit after those
    positions was heard and found not to touch what the answer read (``where``); -1 when not known, and
    then only equal positions vouch for the answer."""

    positions: tuple[tuple[str, tuple[int, ...]], ...]  # each projection read, and what ``Positions`` said of it
    body: bytes  # {"data": ...} as JSON
    key: Hashable = None
    epoch: int = -1
    where: tuple[Reading, ...] = ()
    queries: tuple[QueryRead, ...] = ()

    def valid_at(self, now: Positions) -> bool:
        return all(now.get(name) == seen for name, seen in self.positions)


_LOG = 256  # commits remembered per projection, to check an answer computed while they were heard
_Heard = tuple[int, int, Touched | None, RowValues | None]  # a commit heard: version, position, touched, rows


class ResponseCache:
    """At most ``entries`` answers, least recently used first out; answers over ``max_bytes`` are not kept.

    Fed every commit the process hears (``hear``, from ``PositionWatch.observers``): a commit drops the
    answers that read a row it changed (by key, as the commit announces them), a table it changed, or
    anything of its projection when it does not say what it changed. An answer still kept is then known
    correct at any position up to the one heard (``valid``), not only at the one it was computed at."""

    def __init__(self, entries: int, max_bytes: int = 262_144) -> None:
        self._entries, self._max_bytes = entries, max_bytes
        self._kept: OrderedDict[Hashable, Cached] = OrderedDict()
        self.epoch = 0  # listening sessions begun: 0 until the first; a new one forgets everything
        self._heard: dict[str, tuple[int, int]] = {}  # projection -> (version, newest position heard)
        self._log: dict[str, deque[_Heard]] = {}
        self._floor: dict[str, int] = {}  # commits at or below this position are no longer in the log
        self._filed: dict[Reading, set[Cached]] = {}
        self._queried: dict[tuple[str, str], set[Cached]] = {}  # (projection, table) -> answers of queries over it

    def get(self, key: Hashable) -> Cached | None:
        found = self._kept.get(key)
        if found is not None:
            self._kept.move_to_end(key)
        return found

    def put(self, key: Hashable, positions: Positions, projections: Sequence[str], data: Any,
            reads: Reads | None = None, epoch: int = 0, body: bytes | None = None) -> bool:
        """Keep ``data``, computed after ``positions`` were read, in the listening session ``epoch``
        (``self.epoch`` before those positions were read), from ``reads``; ``body``: ``answer_body(data)``
        when the caller encoded it already. Whether it was kept."""
        if reads is not None and not reads.projections() <= set(projections):
            return False  # it read a projection it does not declare: no position can vouch for that part of it
        if body is None:
            body = answer_body(data)
        if len(body) > self._max_bytes or self._entries <= 0:
            return False
        kept = tuple((name, tuple(positions[name])) for name in sorted(projections))
        entry = Cached(kept, body, key)
        if reads is not None and self._followed(entry, reads, epoch):
            entry.epoch, entry.where, entry.queries = epoch, tuple(reads.where), tuple(reads.queries)
            for reading in entry.where:
                self._filed.setdefault(reading, set()).add(entry)
            for read in entry.queries:
                self._queried.setdefault((read.projection, read.table), set()).add(entry)
        self.drop(key)
        self._kept[key] = entry
        while len(self._kept) > self._entries:
            self._forget(self._kept.popitem(last=False)[1])
        return True

    def _followed(self, entry: Cached, reads: Reads, epoch: int) -> bool:
        """Whether commits can vouch for ``entry`` from now on: it read only rows and tables of its
        projections, the session it began in still listens, and no commit heard since its positions
        touched what it read (every such commit is in the log)."""
        if reads.unknown or epoch < 1 or epoch != self.epoch or not (reads.where or reads.queries):
            return False
        for name, (version, position, *_) in entry.positions:
            if position < self._floor.get(name, -1):
                return False
            for seen_version, seen, touched, rows in self._log.get(name, ()):
                if (seen_version != version or seen > position) and (
                        _touches(name, touched, reads.where) or _changes_query(name, touched, rows, reads.queries)):
                    return False
        return True

    def valid(self, entry: Cached, now: Positions) -> bool:
        """``entry`` is correct at ``now``: its positions are those, or every commit up to them was heard
        (in its session) and none touched what it read. A partitioned projection (position and change mark
        apart) announces its lowest partition's position, which says nothing of the others: exact only."""
        if entry.valid_at(now):
            return True
        if entry.epoch != self.epoch or entry.epoch < 1 or self._kept.get(entry.key) is not entry:
            return False  # (not kept any more: a commit heard since it was looked up dropped it)
        return all(self._vouched(name, seen, now.get(name)) for name, seen in entry.positions)

    def behind(self, entry: Cached, now: Positions) -> dict[str, int]:
        """The projections whose position in ``now`` ``entry`` would be valid at once heard (their commits
        not heard yet), with that position; empty when hearing them would not make it valid."""
        if entry.epoch != self.epoch or entry.epoch < 1 or self._kept.get(entry.key) is not entry:
            return {}
        behind = {}
        for name, seen in entry.positions:
            current, heard = now.get(name), self._heard.get(name, (seen[0], seen[1]))
            if current is None or not (current[0] == seen[0] == heard[0] and _single(seen) and _single(current)):
                return {}
            if current[1] > heard[1]:
                behind[name] = current[1]
        return behind

    def _vouched(self, name: str, seen: tuple[int, ...], current: tuple[int, ...] | None) -> bool:
        if current is None or current == seen:
            return current is not None
        heard = self._heard.get(name)
        return (heard is not None and current[0] == seen[0] == heard[0] and _single(seen) and _single(current)
                and seen[1] <= current[1] <= heard[1])

    def hear(self, change: PositionChange | None) -> None:
        """A commit heard by the process's listener; None: listening (again), what came before is unknown."""
        if change is None:
            self.epoch += 1
            self._heard.clear()
            self._log.clear()
            self._floor.clear()
            for entry in list(self._kept.values()):
                self.drop(entry.key)
            return
        name = change.projection
        touched = None if change.switched else change.touched
        rows = None if touched is None else change.rows
        heard = self._heard.get(name)
        if heard is None or heard[0] != change.version or change.switched or change.position > heard[1]:
            self._heard[name] = (change.version, change.position)
        log = self._log.setdefault(name, deque(maxlen=_LOG))
        if len(log) == _LOG:
            self._floor[name] = max(self._floor.get(name, -1), log[0][1])
        log.append((change.version, change.position, touched, rows))
        self._invalidate(name, touched, rows)

    def _invalidate(self, name: str, touched: Touched | None, rows: RowValues | None) -> None:
        if touched is None:
            readings: list[Reading] = [r for r in self._filed if r[0] == name]
            tables = [t for p, t in self._queried if p == name]
        else:
            readings = [(name, table) for table in touched]
            readings += [(name, table, key) for table, keys in touched.items() for key in keys]
            tables = list(touched)
        dropped = {entry for reading in readings for entry in self._filed.get(reading, ())}
        read: dict[tuple[Any, ...], Any] = {}  # the commit's values as their columns' types, read once
        for table in tables:
            for entry in self._queried.get((name, table), ()):
                if entry not in dropped and _changes_query(name, touched, rows, entry.queries, read):
                    dropped.add(entry)
        for entry in dropped:
            if self._kept.get(entry.key) is entry:
                del self._kept[entry.key]
            self._forget(entry)

    def drop(self, key: Hashable) -> None:
        entry = self._kept.pop(key, None)
        if entry is not None:
            self._forget(entry)

    def _forget(self, entry: Cached) -> None:
        for reading in entry.where:
            filed = self._filed.get(reading)
            if filed is not None:
                filed.discard(entry)
                if not filed:
                    del self._filed[reading]
        for read in entry.queries:
            queried = self._queried.get((read.projection, read.table))
            if queried is not None:
                queried.discard(entry)
                if not queried:
                    del self._queried[(read.projection, read.table)]

    def __len__(self) -> int:
        return len(self._kept)


def _single(positions: tuple[int, ...]) -> bool:
    """Position and change mark agree (or there is no mark): not a projection of several partitions."""
    return len(positions) < 3 or positions[1] == positions[2]


def _changes_query(name: str, touched: Touched | None, rows: RowValues | None, queries: Iterable[QueryRead],
                   read: dict[tuple[Any, ...], Any] | None = None) -> bool:
    """Whether a commit of ``name`` that changed ``touched`` (new values ``rows``) may change what one of
    ``queries`` returned: it changed rows of the query's table that it cannot show do not matter."""
    for query in queries:
        if query.projection != name:
            continue
        if touched is None:
            return True
        keys = touched.get(query.table)
        if not keys:
            continue
        values = rows.get(query.table) if rows is not None else None
        if values is None or any(key not in values or query.changed_by(key, values[key], read) for key in keys):
            return True
    return False


def _touches(name: str, touched: Touched | None, where: Iterable[Reading]) -> bool:
    if touched is None:
        return True
    for reading in where:
        if reading[0] != name:
            continue
        if len(reading) == 2 and reading[1] in touched:
            return True
        if len(reading) == 3 and reading[2] in touched.get(reading[1], ()):
            return True
    return False


def answer_body(data: Any) -> bytes:
    """``{"data": data}`` as JSON, encoded as Strawberry encodes an answer (ASCII only: every other
    character, U+2028 too, as a ``\\u`` escape): a kept answer is the bytes a computed one would be."""
    return json.dumps({"data": data}, separators=(",", ":")).encode()


def with_extensions(body: bytes, extensions: Mapping[str, Any]) -> bytes:
    """``answer_body(data)`` with ``extensions`` after ``data``: ``answer_body`` of the whole answer,
    without encoding ``data`` again."""
    return b"".join((body[:-1], b',"extensions":', json.dumps(extensions, separators=(",", ":")).encode(), b"}"))


def cache_key(query: str, variables: Mapping[str, Any] | None, operation: str | None,
              principal: Principal) -> Hashable:
    """What an answer depends on besides the read models: the request and who asks."""
    values = json.dumps(variables, sort_keys=True, separators=(",", ":")) if variables else ""
    caller = (tuple(sorted(principal.roles)), principal.subject, principal.anonymous, principal.every_role)
    return (query, values, operation, caller)
