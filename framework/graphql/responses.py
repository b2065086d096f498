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
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from framework.security import Principal
from framework.views import ActivePositions

__all__ = ["Cached", "PositionClock", "Positions", "ResponseCache", "cache_key", "positions_reader"]

Positions = Mapping[str, tuple[int, ...]]  # projection -> (active version, position[, change mark])


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


@dataclass(frozen=True)
class Cached:
    """A kept answer: its ``data``, as JSON too, and the positions it was computed at."""

    positions: tuple[tuple[str, tuple[int, ...]], ...]  # each projection read, and what ``Positions`` said of it
    data: Any
    body: bytes  # {"data": ...} as JSON

    def valid_at(self, now: Positions) -> bool:
        return all(now.get(name) == seen for name, seen in self.positions)


class ResponseCache:
    """At most ``entries`` answers, least recently used first out; answers over ``max_bytes`` are not kept."""

    def __init__(self, entries: int, max_bytes: int = 262_144) -> None:
        self._entries, self._max_bytes = entries, max_bytes
        self._kept: OrderedDict[Hashable, Cached] = OrderedDict()

    def get(self, key: Hashable) -> Cached | None:
        found = self._kept.get(key)
        if found is not None:
            self._kept.move_to_end(key)
        return found

    def put(self, key: Hashable, positions: Positions, projections: Sequence[str], data: Any) -> None:
        body = json.dumps({"data": data}, separators=(",", ":")).encode()
        if len(body) > self._max_bytes or self._entries <= 0:
            return
        kept = tuple((name, tuple(positions[name])) for name in sorted(projections))
        self._kept[key] = Cached(kept, data, body)
        self._kept.move_to_end(key)
        while len(self._kept) > self._entries:
            self._kept.popitem(last=False)

    def drop(self, key: Hashable) -> None:
        self._kept.pop(key, None)

    def __len__(self) -> int:
        return len(self._kept)


def cache_key(query: str, variables: Mapping[str, Any] | None, operation: str | None,
              principal: Principal) -> Hashable:
    """What an answer depends on besides the read models: the request and who asks."""
    values = json.dumps(variables, sort_keys=True, separators=(",", ":")) if variables else ""
    caller = (tuple(sorted(principal.roles)), principal.subject, principal.anonymous, principal.every_role)
    return (query, values, operation, caller)
