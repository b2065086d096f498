"""Where every projection stands: what ``eventfold status`` prints and GraphQL's ``projections`` serves.

The state is told, not guessed: a version that queries no longer read is ``retired`` (outside lag
and readiness), ``stalled`` means a worker holds the projection and is behind but has made no
progress for a minute (a worker reports progress during a long batch, and a process manager's
dispatcher while it drains its outbox), a ``running`` projection that no live worker holds is
``stopped``, and the state belongs to the worker holding the projection's lease. A partitioned
projection lists its partitions (owner, position, lag); its own position is their lowest, its
owner the workers holding any of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from framework.mapper import stored_header
from framework.store import EventLog
from framework.views import LeaseState, OutboxStats, PartitionedViews, PartitionState, ProjectionState, ViewStore

__all__ = ["PartitionStatus", "ProjectionStatus", "projection_statuses"]

STALL_SECONDS = 60.0


@dataclass(frozen=True)
class PartitionStatus:
    """One partition of a partitioned projection: who applies it, how far it has got."""

    index: int
    count: int
    owner: str | None  # the worker holding the partition's lease, if one does
    position: int  # every event of the partition up to here is applied
    lag_events: int  # events stored after it (not all of them the partition's)


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    version: int
    active: bool
    state: str  # running | stalled | halted | rebuilding | stopped | retired
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    dead_letters: int
    error: str | None
    owner: str | None = None  # the worker holding the lease (host:pid:id), if one does
    outbox_pending: int = 0  # commands a process manager issued, not yet executed
    outbox_oldest_seconds: float = 0.0  # how long the oldest of them has waited
    deadlines_pending: int = 0
    partitions: tuple[PartitionStatus, ...] = ()  # a partitioned projection's; its position is their lowest

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def projection_statuses(store: EventLog, views: ViewStore) -> list[ProjectionStatus]:
    head = store.head()
    letters: dict[str, int] = {}
    for letter in views.dead_letters():
        letters[letter.projection] = letters.get(letter.projection, 0) + 1
    now = datetime.now(UTC)
    partitions: dict[tuple[str, int], list[PartitionState]] = {}
    if isinstance(views, PartitionedViews):
        for row in views.partition_states():
            partitions.setdefault((row.name, row.version), []).append(row)
    seen = _Seen(now, {lease.name: lease for lease in views.leases()}, views.outbox_stats(), partitions)
    return [_status(state, head, store, views, letters, seen) for state in views.states()]


@dataclass(frozen=True)
class _Seen:
    now: datetime
    leases: dict[str, LeaseState]
    outbox: dict[str, OutboxStats]
    partitions: dict[tuple[str, int], list[PartitionState]]

    def owner(self, name: str) -> LeaseState | None:
        lease = self.leases.get(name)
        return lease if lease is not None and lease.expires_at > self.now else None

    def partitions_of(self, state: ProjectionState, head: int, active: bool) -> tuple[PartitionStatus, ...]:
        rows = self.partitions.get((state.name, state.version), [])
        return tuple(PartitionStatus(
            index=row.index, count=row.count, position=row.position, lag_events=max(head - row.position, 0),
            owner=_owner_name(self.owner(f"{state.name}/partition/{row.index}")) if active else None,
        ) for row in rows)

    def partition_owner(self, state: ProjectionState, partitions: tuple[PartitionStatus, ...]) -> LeaseState | None:
        """A partitioned projection is held while any of its partitions is; the freshest progress counts."""
        held = [lease for p in partitions if (lease := self.owner(f"{state.name}/partition/{p.index}"))]
        return max(held, key=lambda lease: lease.progress_at or lease.expires_at, default=None)


def _owner_name(lease: LeaseState | None) -> str | None:
    return lease.owner if lease is not None else None


def _status(state: ProjectionState, head: int, store: EventLog, views: ViewStore, letters: dict[str, int],
            seen: _Seen) -> ProjectionStatus:
    active = views.active_version(state.name) == state.version
    retired = not active and state.state != "rebuilding"
    partitions = seen.partitions_of(state, head, active)
    if partitions:
        owner = seen.partition_owner(state, partitions) if active else None
        owners = sorted({p.owner for p in partitions if p.owner})
    else:
        owner = seen.owner(state.name) if active else None
        owners = [owner.owner] if owner else []
    outbox = seen.outbox.get(state.name, OutboxStats()) if active else OutboxStats()
    return ProjectionStatus(
        name=state.name,
        version=state.version,
        active=active,
        state="retired" if retired else _liveness(state, head, owner, seen.now),
        position=state.position,
        head=head,
        lag_events=0 if retired else max(head - state.position, 0),
        lag_seconds=0.0 if retired else _lag_seconds(store, state.position),
        dead_letters=letters.get(state.name, 0) if active else 0,
        error=state.error,
        owner=", ".join(owners) or None,
        outbox_pending=outbox.pending,
        outbox_oldest_seconds=_age(outbox.oldest_at, seen.now),
        deadlines_pending=outbox.deadlines,
        partitions=partitions,
    )


def _liveness(state: ProjectionState, head: int, owner: LeaseState | None, now: datetime) -> str:
    if state.state != "running":
        return state.state
    if owner is None:
        return "stopped"  # said running, but no live worker holds it (killed, or never leased)
    if state.position >= head:
        return "running"
    progress = max((t for t in (state.updated_at, owner.progress_at) if t is not None), default=None)
    return "stalled" if progress is None or _age(progress, now) > STALL_SECONDS else "running"


def _age(moment: datetime | None, now: datetime) -> float:
    return round(max((now - moment).total_seconds(), 0.0), 3) if moment is not None else 0.0


def _lag_seconds(store: EventLog, position: int) -> float:
    """How old the oldest event not yet applied is (0 when caught up)."""
    pending = store.read_all(position, 1)
    if not pending:
        return 0.0
    recorded_at = stored_header(pending[0]).recorded_at
    if recorded_at is None:  # not an Eventfold document: its age is unknown
        return 0.0
    return round(max((datetime.now(UTC) - recorded_at).total_seconds(), 0.0), 3)
