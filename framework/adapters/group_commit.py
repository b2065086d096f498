"""Group commit: appends that arrive together share one transaction (leader/follower).

The first caller finds nobody committing and commits its own request at once, a
group of one: an idle store adds no wait. Callers that arrive while a commit is
in flight queue up; when it ends, the first of them leads the next commit and
takes everyone queued by then. Each request still gets its own outcome: the
commit function returns one result or error per request, so a request that
fails does not fail its neighbours.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["AsyncGroupCommit", "GroupCommit"]

R = TypeVar("R")
T = TypeVar("T")

# One outcome per request of a group, in the group's order: a result, or the error to raise.
CommitGroup = Callable[[Sequence[R]], Sequence["T | BaseException"]]
AsyncCommitGroup = Callable[[Sequence[R]], Awaitable[Sequence["T | BaseException"]]]


class _Waiter(Generic[R, T]):
    __slots__ = ("_released", "error", "leads", "request", "result")

    def __init__(self, request: R) -> None:
        self.request = request
        # Held from the start, released once: the cheapest one-shot signal between two threads (an
        # Event is a Condition, a lock and a list of waiters; this path signals once per command).
        self._released = threading.Lock()
        self._released.acquire()
        self.leads = False  # woken to lead the next commit, not with an outcome
        self.result: T | None = None
        self.error: BaseException | None = None

    def wake(self) -> None:
        """Wake the request's thread: its outcome is set, or it is to lead. Called once per waiter."""
        self._released.release()

    def wait(self) -> None:
        self._released.acquire()

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # set with error None: the request's result


class GroupCommit(Generic[R, T]):
    """Runs ``commit`` on groups of concurrent requests, one group at a time."""

    def __init__(self, commit: CommitGroup[R, T]) -> None:
        self._commit = commit
        self._lock = threading.Lock()
        self._queue: list[_Waiter[R, T]] = []
        self._committing = False
        # What the groups looked like, for tests and metrics: sizes, and requests that had to wait.
        self.group_sizes: Counter[int] = Counter()
        self.waited = 0

    def submit(self, request: R) -> T:
        """Commit ``request`` in the next group; its own result, or its own error raised."""
        waiter: _Waiter[R, T] = _Waiter(request)
        with self._lock:
            self._queue.append(waiter)
            leads = not self._committing
            self._committing = True
            if not leads:
                self.waited += 1
        if not leads:
            waiter.wait()
            if not waiter.leads:
                return waiter.outcome()
        self._lead()
        return waiter.outcome()

    def waiting(self) -> int:
        """Requests queued for the next group (a test waits for its followers to line up)."""
        with self._lock:
            return len(self._queue)

    def _lead(self) -> None:
        with self._lock:
            group, self._queue = self._queue, []
            self.group_sizes[len(group)] += 1
        try:
            self._settle(group)
        finally:
            self._hand_over()

    def _settle(self, group: list[_Waiter[R, T]]) -> None:
        try:
            outcomes = self._commit([w.request for w in group])
            if len(outcomes) != len(group):
                raise RuntimeError(f"group commit returned {len(outcomes)} outcomes for {len(group)} requests")
        except BaseException as error:  # the whole group failed: each request gets its own copy
            outcomes = [error] + [_failed_with(error) for _ in group[1:]]
        for waiter, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                waiter.error = outcome
            else:
                waiter.result = outcome
            waiter.wake()

    def _hand_over(self) -> None:
        """The first request queued meanwhile leads the next group; none: nobody is committing."""
        with self._lock:
            if not self._queue:
                self._committing = False
                return
            successor = self._queue[0]
        successor.leads = True
        successor.wake()


def _failed_with(error: BaseException) -> BaseException:
    """A fresh error of the same kind per follower (one instance raised in many threads would share a
    traceback): a store that is down is ``StoreUnavailable`` (503) for every request of the group."""
    try:
        fresh = copy.copy(error)
    except Exception:  # an error that cannot be rebuilt from its arguments
        fresh = RuntimeError(f"the group commit this request joined failed ({type(error).__name__}: {error})")
    fresh.__traceback__ = None
    fresh.__cause__ = error
    return fresh


class AsyncGroupCommit(Generic[R, T]):
    """``GroupCommit`` on an event loop: requests queued while a group commits form the next group.

    A committer task runs while requests are queued and ends when none is: a lone request is committed
    at the loop's next turn, with no added wait. A request whose caller is cancelled still commits (its
    group's statement is not interrupted); only the caller stops waiting for the answer."""

    def __init__(self, commit: AsyncCommitGroup[R, T]) -> None:
        self._commit = commit
        self._queue: list[tuple[R, asyncio.Future[T]]] = []
        self._committer: asyncio.Task[None] | None = None
        self.group_sizes: Counter[int] = Counter()
        self.waited = 0

    async def submit(self, request: R) -> T:
        """Commit ``request`` in the next group; its own result, or its own error raised."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((request, future))
        if self._committer is None:
            self._committer = loop.create_task(self._drain())
        else:
            self.waited += 1
        return await future

    def waiting(self) -> int:
        return len(self._queue)

    async def _drain(self) -> None:
        try:
            while self._queue:
                group, self._queue = self._queue, []
                self.group_sizes[len(group)] += 1
                await self._settle(group)
        finally:
            self._committer = None

    async def _settle(self, group: list[tuple[R, asyncio.Future[T]]]) -> None:
        try:
            outcomes = await self._commit([request for request, _ in group])
            if len(outcomes) != len(group):
                raise RuntimeError(f"group commit returned {len(outcomes)} outcomes for {len(group)} requests")
        except Exception as error:  # the whole group failed: each request gets its own copy
            outcomes = [error] + [_failed_with(error) for _ in group[1:]]
        for (_, future), outcome in zip(group, outcomes, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
