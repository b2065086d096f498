"""The event store port, in role-sized parts: what each user needs from storage.

``EventStreams`` (append, load), ``IdempotencyKeys`` and ``SnapshotStore`` serve
the command side; ``EventLog`` (the global order) serves projections, replay and
status; ``RelayTracking`` the relay. Adapters (memory, SQLite, PostgreSQL)
implement all of them, ``EventStore``, and pass the shared conformance suite in
``framework.testing.conformance``. ``append`` is the single write path: events
and the idempotency record of the command that produced them commit in one
transaction, or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from eventsourcing.persistence import Notification, StoredEvent

from framework.frozen import built

__all__ = [
    "AsyncAppender",
    "ClaimOutcome",
    "Claimed",
    "CommandResult",
    "EventLog",
    "EventStore",
    "EventStreams",
    "IdempotencyCompletion",
    "IdempotencyKeys",
    "InFlight",
    "Notification",
    "RelaySource",
    "RelayTracking",
    "Replay",
    "SnapshotStore",
    "StoredEvent",
    "notification",
]


def notification(originator_id: UUID, originator_version: int, topic: str, state: bytes, position: int) -> Notification:
    """``Notification(originator_id, originator_version, topic, state, position)``, built without the frozen
    dataclass's ``__init__`` (``framework.frozen.built``: ~1 us of the bus path's per-event cost)."""
    return built(Notification, {"originator_id": originator_id, "originator_version": originator_version,
                                "topic": topic, "state": state, "id": position})


@dataclass(frozen=True)
class CommandResult:
    """What a command produced: its main aggregate, new version, last position."""

    aggregate_id: UUID | None
    version: int
    position: int | None


@dataclass(frozen=True)
class IdempotencyCompletion:
    """Marks a claimed key done, inside the transaction that appends the events."""

    key: str
    owner: UUID
    aggregate_id: UUID | None
    version: int


@dataclass(frozen=True)
class Claimed:
    """The caller now owns the key and must complete or release it."""


@dataclass(frozen=True)
class InFlight:
    """Another request owns the key and has not finished."""

    request_hash: str


@dataclass(frozen=True)
class Replay:
    """The key was used before; here is that request's hash and result."""

    request_hash: str
    result: CommandResult


ClaimOutcome = Claimed | InFlight | Replay


class EventStreams(Protocol):
    """Per-aggregate streams: the write side appends to them and loads aggregates from them."""

    def append(
        self,
        events: Sequence[StoredEvent],
        completion: IdempotencyCompletion | None = None,
    ) -> list[int]:
        """Store events atomically; return their global positions, in order.

        Raises ConcurrencyConflict if any (aggregate, version) already exists,
        IdempotencyKeyInFlight if ``completion``'s claim is no longer owned.
        """

    def read_stream(self, aggregate_id: UUID, after_version: int = 0) -> list[StoredEvent]:
        """One aggregate's events after ``after_version``, oldest first."""

    def read_stream_with_positions(self, aggregate_id: UUID, after_version: int = 0) -> list[Notification]:
        """``read_stream``, each event with its global position (``Notification.id``): an aggregate's
        history as the global stream numbers it (``eventfold events``, ``replay --aggregate``)."""


class EventLog(Protocol):
    """Every aggregate's events in one global order: what projections, replay and status read."""

    def read_all(self, after_position: int, limit: int) -> list[Notification]:
        """Events of every aggregate after a global position, in position order."""

    def head(self) -> int:
        """The highest position written so far (0 when empty)."""


class IdempotencyKeys(Protocol):
    """Leases on commands' idempotency keys; ``EventStreams.append`` completes a claim with the events."""

    def claim_idempotency_key(
        self, key: str, request_hash: str, owner: UUID, lease_seconds: float
    ) -> ClaimOutcome:
        """Take a key, or report who has it. A claim older than the lease may be taken over."""

    def release_idempotency_key(self, key: str, owner: UUID) -> None:
        """Give up an uncompleted claim (the command failed, nothing was written)."""


class SnapshotStore(Protocol):
    """Aggregates' snapshots, so loading skips old events."""

    def save_snapshot(self, snapshot: StoredEvent) -> None:
        """Keep a snapshot; saving the same (aggregate, version) twice is harmless."""

    def latest_snapshot(self, aggregate_id: UUID) -> StoredEvent | None:
        """The newest snapshot of an aggregate, if any."""


class RelayTracking(Protocol):
    """What the relay needs besides the log: a wake-up on appends and its own checkpoint."""

    def wait_for_append(self, after_position: int, timeout: float) -> bool:
        """Block until the head passes ``after_position`` or ``timeout`` ends; True if it did."""

    def relay_checkpoint(self, name: str) -> int:
        """The last position the relay ``name`` saw acknowledged by the bus (0: none)."""

    def save_relay_checkpoint(self, name: str, position: int) -> None:
        """Record a relay's checkpoint; it never moves backwards."""


class RelaySource(EventLog, RelayTracking, Protocol):
    """The relay's port: the log, a wake-up on appends and its checkpoint."""


class EventStore(EventStreams, EventLog, IdempotencyKeys, SnapshotStore, RelayTracking, Protocol):
    """Append-only storage of events, with per-aggregate and global order: every role at once, what
    an adapter implements (and ``framework.testing.conformance`` checks). Code that plays one role
    takes the role's protocol."""

    def create_schema(self) -> None:
        """Create tables if they are missing. Idempotent."""

    def close(self) -> None:
        """Release connections."""


class AsyncAppender(Protocol):
    """The command side's writes awaited on an event loop: an optional speed-only port (the write API's
    ``EVENTFOLD_WRITE_ASYNC``), with the same guarantees as ``EventStreams.append`` and ``IdempotencyKeys``
    of the same store. Reads stay on ``EventStore``."""

    async def append(
        self, events: Sequence[StoredEvent], completion: IdempotencyCompletion | None = None
    ) -> list[int]: ...

    async def claim_idempotency_key(
        self, key: str, request_hash: str, owner: UUID, lease_seconds: float
    ) -> ClaimOutcome: ...

    async def release_idempotency_key(self, key: str, owner: UUID) -> None: ...

    async def close(self) -> None: ...
