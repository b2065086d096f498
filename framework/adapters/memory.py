"""In-process event store on ``eventsourcing``'s POPO recorder, for tests and embedded use."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from uuid import UUID

from eventsourcing.persistence import IntegrityError, Notification, StoredEvent
from eventsourcing.popo import POPOApplicationRecorder

from framework.adapters.idempotency import KeyRecord, outcome_for_existing
from framework.errors import ConcurrencyConflict, IdempotencyKeyInFlight
from framework.store import Claimed, ClaimOutcome, IdempotencyCompletion

__all__ = ["MemoryEventStore"]


@dataclass(frozen=True)
class _Claim:
    record: KeyRecord
    owner: UUID
    claimed_at: float


class MemoryEventStore:
    """Everything in dicts behind one lock; the lock makes ``append`` atomic."""

    def __init__(self) -> None:
        self._recorder = POPOApplicationRecorder()
        self._lock = threading.Lock()
        self._appended = threading.Condition(self._lock)
        self._checkpoints: dict[str, int] = {}
        self._keys: dict[str, _Claim] = {}
        self._snapshots: dict[UUID, StoredEvent] = {}
        self._positions: dict[tuple[UUID, int], int] = {}  # (aggregate, version) -> global position

    def create_schema(self) -> None:
        """Nothing to create in memory."""

    def append(
        self,
        events: Sequence[StoredEvent],
        completion: IdempotencyCompletion | None = None,
    ) -> list[int]:
        with self._lock:
            if completion is not None:
                self._check_owner(completion)
            positions = self._insert(events)
            if completion is not None:
                self._complete(completion, positions)
            if positions:
                self._appended.notify_all()
            return positions

    def _insert(self, events: Sequence[StoredEvent]) -> list[int]:
        if not events:
            return []
        try:
            positions = list(self._recorder.insert_events(events) or [])
        except IntegrityError as e:
            raise ConcurrencyConflict("an aggregate was changed concurrently") from e
        for stored, position in zip(events, positions, strict=True):
            self._positions[(_uuid(stored.originator_id), stored.originator_version)] = position
        return positions

    def _check_owner(self, completion: IdempotencyCompletion) -> None:
        claim = self._keys.get(completion.key)
        if claim is None or claim.owner != completion.owner or claim.record.completed:
            raise IdempotencyKeyInFlight(f"idempotency key {completion.key!r} was taken over")

    def _complete(self, completion: IdempotencyCompletion, positions: list[int]) -> None:
        claim = self._keys[completion.key]
        record = replace(
            claim.record,
            completed=True,
            aggregate_id=completion.aggregate_id,
            version=completion.version,
            position=positions[-1] if positions else None,
        )
        self._keys[completion.key] = replace(claim, record=record)

    def read_stream(self, aggregate_id: UUID, after_version: int = 0) -> list[StoredEvent]:
        return list(self._recorder.select_events(aggregate_id, gt=after_version))

    def read_stream_with_positions(self, aggregate_id: UUID, after_version: int = 0) -> list[Notification]:
        with self._lock:
            return [Notification(id=self._positions[(aggregate_id, e.originator_version)],
                                 originator_id=aggregate_id, originator_version=e.originator_version,
                                 topic=e.topic, state=e.state)
                    for e in self._recorder.select_events(aggregate_id, gt=after_version)]

    def read_all(self, after_position: int, limit: int) -> list[Notification]:
        return list(
            self._recorder.select_notifications(after_position, limit, inclusive_of_start=False)
        )

    def head(self) -> int:
        return self._recorder.max_notification_id() or 0

    def claim_idempotency_key(
        self, key: str, request_hash: str, owner: UUID, lease_seconds: float
    ) -> ClaimOutcome:
        now = time.monotonic()
        with self._lock:
            claim = self._keys.get(key)
            if claim is None or _expired(claim, now, lease_seconds):
                self._keys[key] = _Claim(KeyRecord(request_hash, completed=False), owner, now)
                return Claimed()
            return outcome_for_existing(claim.record)

    def release_idempotency_key(self, key: str, owner: UUID) -> None:
        with self._lock:
            claim = self._keys.get(key)
            if claim is not None and claim.owner == owner and not claim.record.completed:
                del self._keys[key]

    def save_snapshot(self, snapshot: StoredEvent) -> None:
        with self._lock:
            current = self._snapshots.get(_uuid(snapshot.originator_id))
            if current is None or current.originator_version < snapshot.originator_version:
                self._snapshots[_uuid(snapshot.originator_id)] = snapshot

    def latest_snapshot(self, aggregate_id: UUID) -> StoredEvent | None:
        return self._snapshots.get(aggregate_id)

    def wait_for_append(self, after_position: int, timeout: float) -> bool:
        with self._lock:
            return self._appended.wait_for(
                lambda: (self._recorder.max_notification_id() or 0) > after_position, timeout
            )

    def relay_checkpoint(self, name: str) -> int:
        with self._lock:
            return self._checkpoints.get(name, 0)

    def save_relay_checkpoint(self, name: str, position: int) -> None:
        with self._lock:
            self._checkpoints[name] = max(position, self._checkpoints.get(name, 0))

    def close(self) -> None:
        """Nothing to release."""


def _expired(claim: _Claim, now: float, lease_seconds: float) -> bool:
    return not claim.record.completed and now - claim.claimed_at > lease_seconds


def _uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)
