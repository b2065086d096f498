"""A circuit breaker in front of an event store: fail fast while the database is down.

After ``threshold`` consecutive ``StoreUnavailable`` the breaker opens: calls
fail at once with ``StoreUnavailable`` for ``cool_down`` seconds instead of each
waiting for a connection timeout. Then one call is let through as a probe; if
the store answers, the breaker closes, if not it opens for another cool-down.
Any other outcome (success, a conflict, a domain error) counts as an answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar
from uuid import UUID

from framework.errors import StoreUnavailable
from framework.store import ClaimOutcome, EventStore, IdempotencyCompletion, Notification, StoredEvent

__all__ = ["BreakingEventStore", "CircuitBreaker"]

T = TypeVar("T")


class CircuitBreaker:
    """Closed → open after ``threshold`` consecutive failures → half-open (one probe) → closed."""

    def __init__(self, threshold: int = 5, cool_down: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold, self.cool_down, self._clock = threshold, cool_down, clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half-open" if self._clock() - self._opened_at >= self.cool_down else "open"

    def call(self, action: Callable[[], T]) -> T:
        self._admit()
        try:
            result = action()
        except StoreUnavailable:
            self._failed()
            raise
        except BaseException:
            self._answered()
            raise
        self._answered()
        return result

    def _admit(self) -> None:
        with self._lock:
            if self._opened_at is None:
                return
            waited = self._clock() - self._opened_at
            if waited < self.cool_down or self._probing:
                left = max(0.0, self.cool_down - waited)
                raise StoreUnavailable(f"the event store is failing; not trying again for {left:.1f}s")
            self._probing = True  # this call is the probe

    def _failed(self) -> None:
        with self._lock:
            self._failures += 1
            self._probing = False
            if self._failures >= self.threshold or self._opened_at is not None:
                self._opened_at = self._clock()

    def _answered(self) -> None:
        with self._lock:
            self._failures, self._opened_at, self._probing = 0, None, False


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
