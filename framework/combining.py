"""Commands queued on one hot aggregate, decided together and appended at once (flat combining).

The commands a loop decides on a hot aggregate wait for its turn (``LoopTurns``). One after the other
each costs a commit's round trip, the aggregate's whole throughput. Instead the commands that queue
while a batch is under way form the next batch: one task decides them in arrival order, each on the
state the one before it left, and appends all their events in one transaction, so one commit serves
them all. ``CommandBus`` says what deciding and appending mean; this module only runs the queue.

A queued command is answered exactly once, by the batch that took it: its caller may stop waiting
(a cancelled request), but a batch it is in is never interrupted, so no command is decided twice.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar
from uuid import UUID

from framework.contention import LoopTurns, Turn

__all__ = ["MAX_BATCH", "Queued", "decided_in_batch"]

log = logging.getLogger(__name__)
T = TypeVar("T")
MAX_BATCH = 256  # commands in one batch: one transaction's worth of events stays small


class Queued(Generic[T]):
    """A command waiting in an aggregate's queue, and its answer once a batch has settled it. ``context``:
    its caller's context variables (the request's correlation id), for what the batch does on its behalf."""

    __slots__ = ("answer", "context", "item")

    def __init__(self, item: T) -> None:
        self.item = item
        self.answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.context = contextvars.copy_context()


Batch = Callable[[Sequence[Queued[T]]], Awaitable[None]]
"""Decides and appends a batch; sets every member's ``answer`` (a result, or an exception)."""


async def decided_in_batch(turns: LoopTurns, aggregate_id: UUID, item: T, run: Batch[T]) -> Any:
    """Queue ``item`` on the aggregate's turn; its answer, once a batch has decided it (raised if an error)."""
    turn = turns.join(aggregate_id)
    queued = Queued(item)
    turn.queue.append(queued)
    read = False
    try:
        while not queued.answer.done():
            if turn.combining is None:
                turn.combining = _start_batch(turns, aggregate_id, turn, run)
            await asyncio.wait((queued.answer, turn.combining), return_when=asyncio.FIRST_COMPLETED)
        read = True
        return queued.answer.result()
    finally:
        if queued in turn.queue:  # its caller stopped waiting before any batch took it: never decided
            turn.queue.remove(queued)
        elif not read:  # its batch answers nobody: an error left unread would be logged as never retrieved
            queued.answer.add_done_callback(_unread)
        turns.leave(aggregate_id, turn)


def _unread(answer: asyncio.Future[Any]) -> None:
    if not answer.cancelled():
        answer.exception()


def _start_batch(turns: LoopTurns, aggregate_id: UUID, turn: Turn, run: Batch[T]) -> asyncio.Future[None]:
    turns.join(aggregate_id)  # the batch keeps the turn, whoever stops waiting for it
    # In a context of its own: it works for all its members, not for the request that happened to start it
    # (whose correlation id every log line of the batch would otherwise carry).
    task = asyncio.get_running_loop().create_task(_batch(turn, run), context=contextvars.Context())
    # Its end is seen to by a callback, not by a ``finally`` in it: a task cancelled before its first step
    # (a loop's end cancels every task) never runs its body, and would keep the turn and stay the batch
    # under way for ever, its waiters going round a done task. Registered first, it runs before they wake.
    task.add_done_callback(functools.partial(_batch_ended, turns, aggregate_id, turn))
    return task


def _batch_ended(turns: LoopTurns, aggregate_id: UUID, turn: Turn, _: asyncio.Future[None]) -> None:
    turn.combining = None
    turns.leave(aggregate_id, turn)


async def _batch(turn: Turn, run: Batch[T]) -> None:
    async with turn.lock:  # commands holding the turn alone (keys, expected versions) go between batches
        taken, turn.queue[:] = turn.queue[:MAX_BATCH], turn.queue[MAX_BATCH:]
        try:
            await run(taken)
        except Exception as error:  # a bug: its members fail, none waits forever, the queue goes on
            log.exception("a batch of %d commands failed", len(taken))
            _fail_unanswered(taken, error)
        except BaseException as error:  # the loop shutting down
            _fail_unanswered(taken, error)
            raise


def _fail_unanswered(taken: Sequence[Queued[T]], error: BaseException) -> None:
    for queued in taken:
        if not queued.answer.done():
            queued.answer.set_exception(RuntimeError(f"a batch of commands failed: {error!r}"))
