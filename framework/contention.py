"""Hot aggregates: commands on an aggregate that recently conflicted take turns in this process.

Optimistic concurrency stays the rule (the store refuses a stale append, the
bus retries). But when many clients write one aggregate at once, optimistic
retries keep losing to fresh first attempts and some commands run out of
attempts (409). So an aggregate whose append conflicted is "hot" for a few
seconds: a command that changes it waits for the aggregate's lock, runs its
handler again on the latest state, and appends. Within one process the
commands on a hot aggregate then run one after the other and stop conflicting;
across processes the store still arbitrates. The locks are only an
optimisation: if one is lost (expired while waited for), the store's check
still holds. The commands an event loop decides wait for their turn on the
loop (``LoopTurns``), not on a thread: the turn then costs no thread hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from typing import Any
from uuid import UUID

__all__ = ["HotAggregates", "LoopTurns", "Turn"]


class HotAggregates:
    def __init__(self, hot_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.hot_seconds, self._clock = hot_seconds, clock
        self._until: dict[UUID, float] = {}
        self._locks: dict[UUID, threading.Lock] = {}
        self._guard = threading.Lock()

    def heat(self, aggregate_ids: Collection[UUID]) -> None:
        """These aggregates just conflicted: for ``hot_seconds``, commands changing them take turns."""
        until = self._clock() + self.hot_seconds
        with self._guard:
            for aggregate_id in aggregate_ids:
                self._until[aggregate_id] = until
                self._locks.setdefault(aggregate_id, threading.Lock())

    def hot_among(self, aggregate_ids: Collection[UUID]) -> set[UUID]:
        if not self._until:  # nothing conflicted lately (read without the lock: a miss is harmless)
            return set()
        now = self._clock()
        with self._guard:
            self._forget_cooled(now)
            return {i for i in aggregate_ids if self._until.get(i, 0.0) > now}

    def is_hot(self, aggregate_id: UUID) -> bool:
        """``hot_among`` for one aggregate, without the lock (a stale answer only costs a conflict or a wait)."""
        if not self._until:
            return False
        return self._until.get(aggregate_id, 0.0) > self._clock()

    @contextlib.contextmanager
    def turns(self, aggregate_ids: Collection[UUID]) -> Iterator[None]:
        """Hold the locks of these aggregates (in one global order, so two commands cannot deadlock)."""
        with self._guard:
            locks = [self._locks.setdefault(i, threading.Lock()) for i in sorted(aggregate_ids)]
        with contextlib.ExitStack() as held:
            for lock in locks:
                held.enter_context(lock)
            yield

    def _forget_cooled(self, now: float) -> None:
        cooled = [i for i, until in self._until.items() if until <= now and not self._locks[i].locked()]
        for aggregate_id in cooled:
            del self._until[aggregate_id], self._locks[aggregate_id]


class Turn:
    """One aggregate's turn on a loop: its lock, and the commands queued to be decided together."""

    __slots__ = ("combining", "lock", "queue", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # holders, waiters and batches under way: the turn is dropped at 0
        self.queue: list[Any] = []  # commands waiting to be decided in the next batch, in arrival order
        self.combining: asyncio.Future[None] | None = None  # the batch under way, if any


class LoopTurns:
    """``HotAggregates.turns`` for the commands an event loop decides: they wait for their turn on the
    loop, without a thread. One per loop (an ``asyncio.Lock`` belongs to the loop it first waited on).
    The bus keeps a command's loop turns for its retries on a thread too; a thread's turns
    (``HotAggregates.turns``) are other locks, which the store's check backs up, as across processes.

    Besides its lock, a turn has a queue: the bus decides the commands queued on one hot aggregate
    together, one after the other on the state each leaves, and appends them at once (``CommandBus``).
    """

    def __init__(self) -> None:
        self._turns: dict[UUID, Turn] = {}

    def join(self, aggregate_id: UUID) -> Turn:
        """The aggregate's turn, kept until as many ``leave`` calls."""
        turn = self._turns.setdefault(aggregate_id, Turn())
        turn.users += 1
        return turn

    def leave(self, aggregate_id: UUID, turn: Turn) -> None:
        turn.users -= 1
        if not turn.users and self._turns.get(aggregate_id) is turn:
            del self._turns[aggregate_id]

    @contextlib.asynccontextmanager
    async def turns(self, aggregate_ids: Collection[UUID]) -> AsyncIterator[None]:
        ordered = sorted(aggregate_ids)  # one global order: two commands cannot deadlock
        turns = [self.join(i) for i in ordered]
        try:
            async with contextlib.AsyncExitStack() as held:
                for turn in turns:
                    await held.enter_async_context(turn.lock)
                yield
        finally:
            for aggregate_id, turn in zip(ordered, turns, strict=True):
                self.leave(aggregate_id, turn)

    def __len__(self) -> int:
        """How many aggregates have a turn held, waited for or batched."""
        return len(self._turns)
