"""The read-model port: where projections keep their rows and their position.

A projection works in batches. ``ViewStore.batch`` opens one transaction in
which handlers read and change rows through ``Views`` and the batch records the
projection's new position; both commit together or not at all, which is what
makes a projection's effects exactly-once under crashes and redelivery.

Each projection has numbered versions (blue-green rebuilds): a version owns
its own tables and position, and one version per projection is active.
Adapters: ``framework.adapters.memory_views`` and ``framework.adapters.postgres_views``;
both pass ``framework.testing.views_conformance``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

from framework.query import BY_KEY, Condition, Sort
from framework.readmodel import ReadModel

__all__ = [
    "ActivePositions",
    "ActiveVersionCache",
    "AsyncActivePositions",
    "Batch",
    "DeadLetter",
    "DeadLetters",
    "Deadline",
    "LeaseState",
    "OutboxEntry",
    "OutboxStats",
    "PartitionState",
    "PartitionedViews",
    "ProcessStore",
    "ProjectionBatches",
    "ProjectionLeases",
    "ProjectionLifecycle",
    "ProjectionState",
    "ProjectionVersions",
    "ReadModels",
    "RowCaching",
    "TextOrder",
    "ViewStore",
    "Views",
]

R = TypeVar("R", bound=ReadModel)


class Views(Protocol):
    """Rows of one projection version, as seen inside the current batch."""

    def get(self, model: type[R], *key: Any) -> R | None:
        """The row with this key, including changes made earlier in the batch."""

    def put(self, row: ReadModel) -> None:
        """Insert or replace the row with the same key."""

    def delete(self, model: type[ReadModel], *key: Any) -> None:
        """Remove the row with this key, if any."""

    def select(self, model: type[R], **equal: Any) -> list[R]:
        """Rows whose fields equal the given values, ordered by key."""


class Batch(Views, Protocol):
    """One transaction of a projection: view changes plus its new position."""

    def advance(self, position: int, event_time: datetime | None, *, since: int | None = None) -> None:
        """Record that every event up to ``position`` is applied.

        With ``since`` the commit is a compare-and-set: it fails with ``ConcurrencyConflict``
        unless the stored position is still ``since`` (another worker committed meanwhile).
        Without it the position only has to move forward.
        """

    def park(self, letter: DeadLetter) -> None:
        """Keep an event whose handler kept failing, in the same transaction."""

    def enqueue(self, entry: OutboxEntry) -> None:
        """Record a command a process manager issued, to be dispatched after the commit."""

    def schedule(self, deadline: Deadline) -> None:
        """Record (or move) a deadline, in the same transaction."""

    def cancel_deadline(self, projection: str, key: str) -> None:
        """Forget a pending deadline, if any, in the same transaction."""

    def publish(self) -> None:
        """Let later batches read this batch's rows before it commits (staged catch-up)."""

    def layer_over(self, previous: object) -> None:
        """Read through ``previous``'s changes too, while it may still be committing."""


@dataclass(frozen=True)
class DeadLetter:
    """An event whose handler kept failing, or (``command`` set) a command a process manager
    issued that was refused for good and that it has no ``refused`` callback for."""

    projection: str
    position: int
    event_name: str
    aggregate_id: str
    error: str
    id: int | None = None
    failed_at: datetime | None = None
    command: dict[str, Any] | None = None  # name, payload, key, ordering_key: retry dispatches it again


@dataclass(frozen=True)
class OutboxEntry:
    """A command a process manager issued, committed with the projection's position and
    dispatched after the commit until it succeeds or is refused for good."""

    projection: str
    key: str  # the derived idempotency key: executing it twice stores it once
    command_name: str
    payload: dict[str, Any]
    ordering_key: str  # entries with one ordering key run one at a time, in order
    position: int  # of the event that issued it
    # correlation_id, causation_id, trace_context, and expected_version when the command was issued with one
    context: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class Deadline:
    """A process manager's request to be woken at ``due_at``; fires once."""

    projection: str
    key: str
    name: str
    due_at: datetime
    position: int  # of the event whose handler scheduled it
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None
    attempts: int = 0


@dataclass(frozen=True)
class OutboxStats:
    pending: int = 0
    oldest_at: datetime | None = None  # when the oldest pending command was issued
    deadlines: int = 0
    next_deadline_at: datetime | None = None


@dataclass(frozen=True)
class LeaseState:
    """Who runs a projection now. ``expires_at`` passed: nobody (a standby may take it)."""

    name: str
    owner: str
    expires_at: datetime
    progress_at: datetime | None


@dataclass(frozen=True)
class ProjectionState:
    name: str
    version: int
    position: int
    state: str  # running | halted | rebuilding | stopped (retired: derived by status)
    error: str | None
    last_event_at: datetime | None
    updated_at: datetime | None


@dataclass(frozen=True)
class PartitionState:
    """One partition of a partitioned projection version: its own position (``framework.partitions``)."""

    name: str
    version: int
    index: int
    count: int
    position: int
    last_event_at: datetime | None
    updated_at: datetime | None


class ProjectionLeases(Protocol):
    """One active worker per projection: a lease with a time-to-live, renewed by a heartbeat.

    A second worker waits as a standby and takes the lease once it has expired (the holder
    died) or was released (the holder stopped cleanly). The lease is not what keeps a
    projection's effects exactly-once (the position's compare-and-set is); it keeps standbys idle.
    """

    def acquire_lease(self, name: str, owner: str, ttl_seconds: float, *, progressed: bool = False) -> bool:
        """Take or renew the lease; False while another owner holds an unexpired one.
        ``progressed``: the holder applied something since its last renewal (status: not stalled)."""

    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up, if ``owner`` holds it: a clean stop hands over at once."""

    def set_state_if_owner(self, name: str, version: int, owner: str, state: str, error: str | None = None) -> bool:
        """``set_state`` only while ``owner`` holds the lease (a stopping old worker cannot
        overwrite the state of the new one that took over)."""

    def leases(self) -> list[LeaseState]:
        """Every lease row, expired or not."""


@runtime_checkable
class PartitionedViews(Protocol):
    """An optional port: a view store that keeps a position per partition (PostgreSQL's does).

    A partitioned projection version has one tracking row per partition, each moved by the
    partition's own batches (a compare-and-set on it, like the projection's single row), and the
    version's position (``position``, ``active_position``, ``states``) is the lowest of them:
    every partition has passed it.
    """

    def ensure_partitions(self, name: str, version: int, count: int) -> None:
        """Create the version's ``count`` partition rows if missing, each starting at the version's
        position; ``ConfigurationError`` if it already has another count (changing it takes a replay)."""

    def partition_count(self, name: str, version: int) -> int:
        """How many partitions the version has (0: it is not partitioned)."""

    def partition_position(self, name: str, version: int, index: int) -> int:
        """The last position partition ``index`` has passed."""

    def partition_batch(self, name: str, version: int, index: int, *,
                        follow_active: bool = True) -> AbstractContextManager[Batch]:
        """Like ``batch``, but ``advance`` moves partition ``index``'s position."""

    def commit_staged_partition(self, name: str, version: int, index: int, batch: Batch, *,
                                follow_active: bool = True) -> None:
        """Like ``commit_staged``, moving partition ``index``'s position."""

    def partition_states(self) -> list[PartitionState]:
        """Every partition row, by name, version and index."""

    def live_leases(self, prefix: str) -> list[LeaseState]:
        """The unexpired leases whose name starts with ``prefix`` (by the database's clock)."""


class ProcessStore(Protocol):
    """Process managers' outbox and deadlines, kept beside their read models."""

    def outbox(self, projection: str, limit: int) -> list[OutboxEntry]:
        """Pending commands, oldest first (due or postponed)."""

    def outbox_done(self, ids: Sequence[int]) -> None:
        """Forget commands that were executed (or found already executed)."""

    def postpone(self, entry_id: int, at: datetime, error: str) -> None:
        """A temporary failure: try again at ``at``; counts the attempt."""

    def settle_outbox(self, batch: Batch, entry_id: int) -> None:
        """Remove an entry inside ``batch`` (its refusal was handled there); the commit fails
        with ``ConcurrencyConflict`` if the entry was already gone."""

    def due_deadlines(self, projection: str, now: datetime, limit: int) -> list[Deadline]:
        """Deadlines due at ``now``, earliest first."""

    def settle_deadline(self, batch: Batch, deadline_id: int) -> None:
        """Remove a fired deadline inside ``batch``; the commit fails with ``ConcurrencyConflict``
        if it was already gone (fired by someone else): a deadline fires once."""

    def postpone_deadline(self, deadline_id: int, at: datetime) -> None:
        """Its handler failed: try again at ``at``."""

    def outbox_stats(self) -> dict[str, OutboxStats]:
        """Pending commands and deadlines per projection."""


class ProjectionVersions(Protocol):
    """A projection's numbered versions: their tables and positions (the worker, replay, status)."""

    def ensure_tables(self, name: str, version: int, models: Sequence[type[ReadModel]]) -> None:
        """Create a projection version's tables if missing. Idempotent."""

    def drop_tables(self, name: str, version: int, models: Sequence[type[ReadModel]]) -> None:
        """Remove a version's tables and bookkeeping (after a switch)."""

    def copy_version(self, name: str, source: int, target: int, models: Sequence[type[ReadModel]]) -> int:
        """Copy ``source``'s rows and position into ``target`` (made by ``ensure_tables``, whose rows it
        replaces), as one consistent snapshot taken while the live worker goes on; returns the position
        copied. A rebuild for one aggregate starts from it (``framework.replay.rebuild_aggregate``)."""

    def active_version(self, name: str) -> int:
        """The version queries read; 1 for a projection never rebuilt."""

    def position(self, name: str, version: int) -> int:
        """The last position applied to that version (0: nothing yet)."""


class ProjectionBatches(Protocol):
    """Transactions of a projection version: view changes and the new position commit together."""

    def batch(
        self, name: str, version: int, *, follow_active: bool = True
    ) -> AbstractContextManager[Batch]:
        """A transaction on that version; commits on normal exit.

        With ``follow_active`` (live workers) it raises ``VersionSwitched`` before
        any change when ``version`` is no longer the active one; a rebuild
        writes its new version with ``follow_active=False``.
        """

    def stage(self, name: str, version: int) -> Batch:
        """A batch outside any transaction, for bulk catch-up: fill it, ``publish`` it, then
        ``commit_staged`` it (possibly on another thread) while the next one is being filled."""

    def commit_staged(self, name: str, version: int, batch: Batch, *, follow_active: bool = True) -> None:
        """One transaction writing a staged batch's rows and position (thread-safe)."""


@runtime_checkable
class RowCaching(Protocol):
    """An optional, speed-only port: a view store that keeps rows between batches (PostgreSQL's does;
    the memory store, whose tables are the rows, does not). Workers use it when a store has it."""

    def forget_cached(self, name: str, version: int) -> None:
        """Drop rows cached between batches (after a staged commit failed)."""

    def cache_empty_tables(self, name: str, version: int, models: Sequence[type[ReadModel]], *,
                           fresh_keys: bool = False) -> None:
        """Start the version's row cache knowing which tables are empty (a projection starting from
        scratch), so that a key it does not hold needs no query. ``fresh_keys``: the caller knows that no
        row its workers will read exists yet, whatever the tables hold (partitions rebuilt from scratch,
        whose handlers read only their own keys' rows, while other processes fill the other partitions')."""


@runtime_checkable
class ActiveVersionCache(Protocol):
    """An optional port: a view store that remembers which version of a projection is active (for a
    moment, to spare a query per read) is told of a version seen active, such as a switch a listener
    heard, so that a request woken by that switch reads the version it waited for."""

    def note_active_version(self, name: str, version: int) -> None:
        """``version`` of ``name`` was seen active just now."""


@runtime_checkable
class AsyncActivePositions(Protocol):
    """An optional, speed-only port: ``ActivePositions.active_positions`` awaited on the event loop
    (no thread hop), for the query API's response cache."""

    async def active_positions_async(self, names: Sequence[str]) -> dict[str, tuple[int, int, int]]:
        """What ``active_positions`` answers, read by a statement that starts after the call."""


@runtime_checkable
class TextOrder(Protocol):
    """An optional port: how a view store orders text. The query API's response cache decides whether a
    changed row can enter a kept page by comparing values in Python; text compared by order (a sort on a
    text column, a key breaking ties, ``lt`` on text) is decided only when the store orders text by code
    point, as Python does. Without the port, such comparisons are not decided (the page is dropped)."""

    def orders_text_by_code_point(self) -> bool:
        """Whether ``query`` orders text (and compares it with ``lt``...) by Unicode code point."""


@runtime_checkable
class ActivePositions(Protocol):
    """An optional, speed-only port: the active version and position of many projections in one read
    (the query API's response cache checks them per request). Without it, ``active_version`` and
    ``position`` are asked per projection."""

    def active_positions(self, names: Sequence[str]) -> dict[str, tuple[int, int, int]]:
        """``(active version, its position, a change mark)`` of each of ``names``; ``(1, 0, 0)`` for one
        never run. The mark moves with every commit of the version: the position itself, unless the
        projection is partitioned (its position is its lowest partition's, which stands still while
        other partitions move): then the sum of its partitions' positions."""


class ProjectionLifecycle(Protocol):
    """Switching a projection's active version, and its recorded state."""

    def switch(self, name: str, version: int) -> AbstractContextManager[Batch]:
        """A batch on ``version`` that, on commit, makes it the active version.

        Holds the projection's lock, so no live batch interleaves with the switch.
        """

    def set_state(self, name: str, version: int, state: str, error: str | None = None) -> None:
        """Record running, halted (with the error), rebuilding or stopped."""

    def states(self) -> list[ProjectionState]:
        """Every projection version known, for ``eventfold status``."""


class DeadLetters(Protocol):
    """Events (or process-manager commands) that kept failing, parked until retried or discarded."""

    def dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        """Parked events, oldest first."""

    def discard_dead_letter(self, letter_id: int) -> bool:
        """Forget a parked event; False if there is no such letter."""

    def request_retry(self, letter_id: int) -> bool:
        """Ask the projection's live worker to run a parked event again."""

    def retry_requests(self, name: str) -> list[DeadLetter]:
        """Parked events of ``name`` whose retry was requested."""

    def settle_dead_letter(self, batch: Batch, letter_id: int) -> None:
        """Remove a letter inside ``batch``, after its retry succeeded there."""


class ReadModels(Protocol):
    """The query side: the active versions' rows (GraphQL resolvers read through this)."""

    def read(self, name: str) -> AbstractContextManager[Views]:
        """Read-only access to the active version (queries)."""

    def query(
        self,
        name: str,
        model: type[R],
        where: Sequence[Condition] = (),
        sort: Sort = BY_KEY,
        *,
        after: tuple[Any, ...] | None = None,
        limit: int | None = None,
    ) -> list[R]:
        """Rows of the active version meeting every condition, in ``sort`` order, strictly
        beyond ``after`` (the sort values of a row) in that order, at most ``limit``."""

    def get_many(self, name: str, model: type[R], keys: Sequence[tuple[Any, ...]]) -> list[R | None]:
        """Rows of the active version by key, in the order of ``keys`` (one round trip)."""

    def active_position(self, name: str) -> int:
        """The position of the version queries read."""


class ViewStore(ProjectionVersions, ProjectionBatches, ProjectionLifecycle, DeadLetters, ReadModels,
                ProjectionLeases, ProcessStore, Protocol):
    """Read models, positions and versions, dead letters; leases and process managers' outbox: every
    role at once, what an adapter implements (and ``framework.testing.views_conformance`` checks).
    ``RowCaching`` is apart: an adapter may have it."""

    def create_schema(self) -> None:
        """Bookkeeping tables (positions, versions, dead letters). Idempotent."""

    def close(self) -> None:
        ...

