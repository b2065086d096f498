"""Where every projection stands: what ``eventfold status`` prints and GraphQL's ``projections`` serves."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from framework.store import EventStore
from framework.views import ProjectionState, ViewStore

__all__ = ["ProjectionStatus", "projection_statuses"]

STALL_SECONDS = 60.0


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    version: int
    active: bool
    state: str
    position: int
    head: int
    lag_events: int
    lag_seconds: float
    dead_letters: int
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def projection_statuses(store: EventStore, views: ViewStore) -> list[ProjectionStatus]:
    head = store.head()
    letters: dict[str, int] = {}
    for letter in views.dead_letters():
        letters[letter.projection] = letters.get(letter.projection, 0) + 1
    return [_status(state, head, store, views, letters) for state in views.states()]


def _status(
    state: ProjectionState, head: int, store: EventStore, views: ViewStore, letters: dict[str, int]
) -> ProjectionStatus:
    active = views.active_version(state.name) == state.version
    return ProjectionStatus(
        name=state.name,
        version=state.version,
        active=active,
        state=_liveness(state, head),
        position=state.position,
        head=head,
        lag_events=max(head - state.position, 0),
        lag_seconds=_lag_seconds(store, state.position),
        dead_letters=letters.get(state.name, 0) if active else 0,
        error=state.error,
    )


def _liveness(state: ProjectionState, head: int) -> str:
    if state.state != "running" or state.position >= head:
        return state.state
    quiet = state.updated_at is None or (datetime.now(UTC) - state.updated_at).total_seconds() > STALL_SECONDS
    return "stalled" if quiet else state.state


def _lag_seconds(store: EventStore, position: int) -> float:
    """How old the oldest event not yet applied is (0 when caught up)."""
    pending = store.read_all(position, 1)
    if not pending:
        return 0.0
    recorded_at = datetime.fromisoformat(json.loads(pending[0].state)["meta"]["recorded_at"])
    return round(max((datetime.now(UTC) - recorded_at).total_seconds(), 0.0), 3)
