"""Circuit breakers in front of a dependency: fail fast while it is down.

After ``threshold`` consecutive "unavailable" errors the breaker opens: calls
fail at once with that error for a cool-down instead of each waiting for a
connection timeout. Then one call is let through as a probe; if the store
answers, the breaker closes, if not it opens for another cool-down. Any other
outcome (success, a conflict, a domain error) counts as an answer.

The cool-down starts short and doubles with each failed probe, up to
``cool_down``: a dependency back after a restart of a second is probed soon
after, one away for long is probed every ``cool_down`` seconds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar
from uuid import UUID

from framework.errors import BusUnavailable, StoreUnavailable, Unavailable
from framework.store import (
    AsyncAppender,
    ClaimOutcome,
    EventStore,
    IdempotencyCompletion,
    Notification,
    StoredEvent,
)
from framework.streaming import Delivery, EventConsumer, EventPublisher, FetchAhead

if TYPE_CHECKING:
    from framework.sharing import PartitionConsumer

__all__ = [
    "FIRST_COOL_DOWN", "BreakingAsyncAppender", "BreakingConsumer", "BreakingEventStore",
    "BreakingPartitionConsumer", "BreakingPublisher",
    "CircuitBreaker", "bus_breaker",
]

T = TypeVar("T")
FIRST_COOL_DOWN = 0.25  # seconds the roles' breakers stay open the first time (a probe is cheap: see pg_pool)


class CircuitBreaker:
    """Closed → open after ``threshold`` consecutive failures → half-open (one probe) → closed.

    A failure is an ``unavailable`` error (the dependency did not answer); while
    open, calls are refused with one, naming ``dependency``. It stays open
    ``first_cool_down`` seconds (default: ``cool_down``) after opening, then twice
    as long after each failed probe, up to ``cool_down``.
    """

    def __init__(self, threshold: int = 5, cool_down: float = 5.0, *, first_cool_down: float | None = None,
                 dependency: str = "event store", unavailable: type[Unavailable] = StoreUnavailable,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold, self.cool_down, self._clock = threshold, cool_down, clock
        self.first_cool_down = cool_down if first_cool_down is None else min(first_cool_down, cool_down)
        self._open_for = self.first_cool_down  # this time's cool-down
        self.dependency, self._unavailable = dependency, unavailable
        self.opened_total = 0  # times it opened (closed → open), for metrics
        self.refused_total = 0  # calls answered without trying the dependency
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half-open" if self._clock() - self._opened_at >= self._open_for else "open"

    def refusing_for(self) -> float | None:
        """Seconds the breaker stays open (None when a call would be let through, maybe as the probe)."""
        with self._lock:
            if self._opened_at is None:
                return None
            left = self._open_for - (self._clock() - self._opened_at)
            return left if left > 0 or self._probing else None

    def refuse(self) -> float | None:
        """Like ``refusing_for``, counting a refusal: for callers that answer "unavailable" themselves."""
        left = self.refusing_for()
        if left is not None:
            with self._lock:
                self.refused_total += 1
        return left

    def call(self, action: Callable[[], T]) -> T:
        probe = self._admit()
        try:
            result = action()
        except BaseException as error:
            self._ended_with(error, probe)
            raise
        self._answered()
        return result

    async def call_async(self, action: Callable[[], Awaitable[T]]) -> T:
        # Written out rather than through a context manager: the write path calls it once per command.
        probe = self._admit()
        try:
            result = await action()
        except BaseException as error:
            self._ended_with(error, probe)
            raise
        self._answered()
        return result

    def _ended_with(self, error: BaseException, probe: bool) -> None:
        """Count a call that raised: the dependency failing, the caller giving up, or an answer (an error
        of the caller's own, a conflict: the dependency did answer)."""
        if isinstance(error, self._unavailable):
            self._failed(probe)
        elif isinstance(error, asyncio.CancelledError):
            self._cancelled(probe)
        else:
            self._answered()

    def _admit(self) -> bool:
        """True if the call is let through as the probe."""
        with self._lock:
            if self._opened_at is None:
                return False
            waited = self._clock() - self._opened_at
            if waited < self._open_for or self._probing:
                self.refused_total += 1
                left = max(0.0, self._open_for - waited)
                raise self._unavailable(f"the {self.dependency} is failing; not trying again for {left:.1f}s",
                                        public=True)
            self._probing = True
            return True

    def _failed(self, probe: bool) -> None:
        with self._lock:
            self._failures += 1
            if probe:
                self._probing = False
                self._open_for = min(self.cool_down, self._open_for * 2)
            elif self._opened_at is None and self._failures >= self.threshold:
                self.opened_total += 1
                self._open_for = self.first_cool_down
            if self._failures >= self.threshold or self._opened_at is not None:
                self._opened_at = self._clock()  # a call admitted before it opened restarts the cool-down

    def _answered(self) -> None:
        with self._lock:
            self._failures, self._opened_at, self._probing = 0, None, False

    def _cancelled(self, probe: bool) -> None:
        if probe:
            with self._lock:  # a cancelled probe proved nothing: let the next call probe
                self._probing = False


class BreakingEventStore:
    """An ``EventStore`` whose calls go through a ``CircuitBreaker`` (schema set-up and close do not)."""

    def __init__(self, store: EventStore, breaker: CircuitBreaker | None = None) -> None:
        self.store = store
        self.breaker = breaker or CircuitBreaker()

    def create_schema(self) -> None:
        self.store.create_schema()

    def append(self, events: Sequence[StoredEvent],
               completion: IdempotencyCompletion | None = None) -> list[int]:
        return self.breaker.call(lambda: self.store.append(events, completion))

    def read_stream(self, aggregate_id: UUID, after_version: int = 0) -> list[StoredEvent]:
        return self.breaker.call(lambda: self.store.read_stream(aggregate_id, after_version))

    def read_stream_with_positions(self, aggregate_id: UUID, after_version: int = 0) -> list[Notification]:
        return self.breaker.call(lambda: self.store.read_stream_with_positions(aggregate_id, after_version))

    def read_all(self, after_position: int, limit: int) -> list[Notification]:
        return self.breaker.call(lambda: self.store.read_all(after_position, limit))

    def head(self) -> int:
        return self.breaker.call(self.store.head)

    def claim_idempotency_key(self, key: str, request_hash: str, owner: UUID,
                              lease_seconds: float) -> ClaimOutcome:
        return self.breaker.call(
            lambda: self.store.claim_idempotency_key(key, request_hash, owner, lease_seconds))

    def release_idempotency_key(self, key: str, owner: UUID) -> None:
        self.breaker.call(lambda: self.store.release_idempotency_key(key, owner))

    def save_snapshot(self, snapshot: StoredEvent) -> None:
        self.breaker.call(lambda: self.store.save_snapshot(snapshot))

    def latest_snapshot(self, aggregate_id: UUID) -> StoredEvent | None:
        return self.breaker.call(lambda: self.store.latest_snapshot(aggregate_id))

    def wait_for_append(self, after_position: int, timeout: float) -> bool:
        return self.store.wait_for_append(after_position, timeout)

    def relay_checkpoint(self, name: str) -> int:
        return self.breaker.call(lambda: self.store.relay_checkpoint(name))

    def save_relay_checkpoint(self, name: str, position: int) -> None:
        self.breaker.call(lambda: self.store.save_relay_checkpoint(name, position))

    def close(self) -> None:
        self.store.close()


class BreakingAsyncAppender:
    """An ``AsyncAppender`` whose calls go through a ``CircuitBreaker`` (the event store's, shared with
    the ``BreakingEventStore`` of the same store: one dependency, one breaker)."""

    def __init__(self, appender: AsyncAppender, breaker: CircuitBreaker) -> None:
        self.appender, self.breaker = appender, breaker

    async def append(self, events: Sequence[StoredEvent],
                     completion: IdempotencyCompletion | None = None) -> list[int]:
        return await self.breaker.call_async(lambda: self.appender.append(events, completion))

    async def claim_idempotency_key(self, key: str, request_hash: str, owner: UUID,
                                    lease_seconds: float) -> ClaimOutcome:
        return await self.breaker.call_async(
            lambda: self.appender.claim_idempotency_key(key, request_hash, owner, lease_seconds))

    async def release_idempotency_key(self, key: str, owner: UUID) -> None:
        await self.breaker.call_async(lambda: self.appender.release_idempotency_key(key, owner))

    async def close(self) -> None:
        await self.appender.close()


def bus_breaker(threshold: int = 5, cool_down: float = 5.0, *, first_cool_down: float | None = None
                ) -> CircuitBreaker:
    """A breaker for the message bus (counts ``BusUnavailable``)."""
    return CircuitBreaker(threshold, cool_down, first_cool_down=first_cool_down, dependency="message bus",
                          unavailable=BusUnavailable)


class BreakingPublisher:
    """An ``EventPublisher`` whose publishing goes through a bus breaker."""

    def __init__(self, publisher: EventPublisher, breaker: CircuitBreaker | None = None) -> None:
        self.publisher = publisher
        self.breaker = breaker or bus_breaker()

    async def publish(self, notifications: Sequence[Notification]) -> None:
        await self.breaker.call_async(lambda: self.publisher.publish(notifications))

    async def last_published_position(self) -> int:
        return await self.breaker.call_async(self.publisher.last_published_position)

    async def close(self) -> None:
        await self.publisher.close()


class BreakingConsumer:
    """An ``EventConsumer`` whose binding and fetching go through a bus breaker."""

    def __init__(self, consumer: EventConsumer, breaker: CircuitBreaker | None = None) -> None:
        self.consumer = consumer
        self.breaker = breaker or bus_breaker()

    async def bind(self) -> None:
        await self.breaker.call_async(self.consumer.bind)

    async def fetch(self, max_events: int, timeout: float) -> Delivery:
        return await self.breaker.call_async(lambda: self.consumer.fetch(max_events, timeout))

    @property
    def fetch_ahead(self) -> FetchAhead | None:
        """The wrapped consumer's ``fetch_ahead`` through the breaker (None when it has none)."""
        inner: FetchAhead | None = getattr(self.consumer, "fetch_ahead", None)
        if inner is None:
            return None
        fetch_ahead = inner

        async def through_breaker(max_events: int, timeout: float) -> Delivery:
            return await self.breaker.call_async(lambda: fetch_ahead(max_events, timeout))

        return through_breaker

    async def hand_back(self) -> None:
        await self.consumer.hand_back()  # not through the breaker: it must be tried even when open

    async def close(self) -> None:
        await self.consumer.close()


class BreakingPartitionConsumer(BreakingConsumer):
    """A partition's consumer (``framework.sharing.PartitionConsumer``) through a bus breaker."""

    def __init__(self, consumer: PartitionConsumer, breaker: CircuitBreaker | None = None) -> None:
        super().__init__(consumer, breaker)
        self.partition_consumer = consumer

    async def published_head(self) -> int:
        return await self.breaker.call_async(self.partition_consumer.published_head)

    async def delete(self) -> None:
        await self.partition_consumer.delete()  # clean-up: tried even when open
