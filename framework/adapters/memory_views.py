"""In-process read models for the embedded mode and tests; same semantics as PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from framework.errors import ConcurrencyConflict, VersionSwitched
from framework.positions import PositionChange, described
from framework.query import BY_KEY, Condition, Sort, check_conditions, sorted_rows
from framework.readmodel import ReadModel
from framework.staging import StagedBatch, StagedViews
from framework.views import (
    Batch,
    DeadLetter,
    Deadline,
    LeaseState,
    OutboxEntry,
    OutboxStats,
    ProjectionState,
    Views,
)

__all__ = ["MemoryViewStore"]

R = TypeVar("R", bound=ReadModel)
Table = dict[tuple[Any, ...], ReadModel]


@dataclass
class _Version:
    tables: dict[str, Table]
    state: ProjectionState


class _Source:
    def __init__(self, version: _Version) -> None:
        self._version = version

    def load(self, model: type[R], key: tuple[Any, ...]) -> R | None:
        return self._version.tables.setdefault(model.table, {}).get(key)  # type: ignore[return-value]

    def load_where(self, model: type[R], equal: dict[str, Any]) -> list[R]:
        rows = list(self._version.tables.setdefault(model.table, {}).values())
        return [r for r in rows if all(getattr(r, k) == v for k, v in equal.items())]  # type: ignore[misc]


class _MemoryBatch(StagedBatch):
    def __init__(self, store: MemoryViewStore, name: str, version: _Version) -> None:
        super().__init__(_Source(version))
        self._store, self._name, self._version = store, name, version

    def apply(self) -> None:
        self._check()
        for model, key, row in self.changes():
            table = self._version.tables.setdefault(model.table, {})
            if row is None:
                table.pop(key, None)
            else:
                table[key] = row
        if self.position is not None:
            state = self._version.state
            self._version.state = replace(
                state,
                position=self.position,
                last_event_at=self.event_time or state.last_event_at,
                updated_at=self._store._clock(),
            )
            touched, rows = described(self.changes())
            self._store._announce(PositionChange(self._name, state.version, self.position, touched=touched, rows=rows))
        for letter in self.letters:
            self._store._park(letter)
        for letter_id in self.settled:
            self._store._letters.pop(letter_id, None)
        self._store._apply_process(self)

    def _check(self) -> None:
        """Everything that can refuse the commit, before anything changes."""
        stored = self._version.state.position
        if self.since is not None and self.position is not None and self.since != stored:
            raise ConcurrencyConflict(f"{self._name} is at {stored}, not {self.since}: another worker committed")
        if self.position is not None and self.position <= stored:
            raise ConcurrencyConflict(f"{self._name} was advanced by another worker")
        if any(i not in self._store._outbox for i in self.settled_outbox):
            raise ConcurrencyConflict(f"an outbox entry of {self._name} was settled by another worker")
        if any(i not in self._store._deadline_ids() for i in self.settled_deadlines):
            raise ConcurrencyConflict(f"a deadline of {self._name} fired in another worker")


class MemoryViewStore:
    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        self._versions: dict[tuple[str, int], _Version] = {}
        self._active: dict[str, int] = {}
        self._letters: dict[int, DeadLetter] = {}
        self._retries: set[int] = set()
        self._next_letter = 1
        self._outbox: dict[int, OutboxEntry] = {}
        self._outbox_keys: set[str] = set()
        self._deadlines: dict[tuple[str, str], Deadline] = {}
        self._leases: dict[str, LeaseState] = {}
        self._next_id = 1
        self._observers: list[Callable[[PositionChange], None]] = []

    def observe(self, observer: Callable[[PositionChange], None]) -> Callable[[], None]:
        """Call ``observer`` with every committed position (under the store's lock: it must only hand
        the change on); returns what stops it. ``framework.adapters.memory_positions`` listens so."""
        with self._lock:
            self._observers.append(observer)
        return lambda: self._forget(observer)

    def _forget(self, observer: Callable[[PositionChange], None]) -> None:
        with self._lock:
            self._observers.remove(observer)

    def _announce(self, change: PositionChange) -> None:
        for observer in list(self._observers):
            observer(change)

    def orders_text_by_code_point(self) -> bool:
        """``query`` sorts with Python's own comparisons (``TextOrder``)."""
        return True

    def create_schema(self) -> None:
        """Nothing to create in memory."""

    def ensure_tables(self, name: str, version: int, models: Sequence[type[ReadModel]]) -> None:
        with self._lock:
            self._active.setdefault(name, version)
            if (name, version) not in self._versions:
                state = ProjectionState(name, version, 0, "stopped", None, None, None)
                self._versions[(name, version)] = _Version({m.table: {} for m in models}, state)

    def drop_tables(self, name: str, version: int, models: Sequence[type[ReadModel]]) -> None:
        with self._lock:
            self._versions.pop((name, version), None)

    def copy_version(self, name: str, source: int, target: int, models: Sequence[type[ReadModel]]) -> int:
        with self._lock:
            old, new = self._versions[(name, source)], self._versions[(name, target)]
            for model in models:  # rows are never changed in place (a batch puts new ones): share them
                new.tables[model.table] = dict(old.tables.get(model.table, {}))
            new.state = replace(new.state, position=old.state.position, last_event_at=old.state.last_event_at,
                                updated_at=self._clock())
            return old.state.position

    def active_version(self, name: str) -> int:
        with self._lock:
            return self._active.get(name, 1)

    def position(self, name: str, version: int) -> int:
        with self._lock:
            found = self._versions.get((name, version))
            return found.state.position if found else 0

    @contextmanager
    def batch(self, name: str, version: int, *, follow_active: bool = True) -> Iterator[Batch]:
        with self._lock:
            if follow_active and self._active.get(name, version) != version:
                raise VersionSwitched(f"{name} now serves version {self._active[name]}")
            batch = _MemoryBatch(self, name, self._versions[(name, version)])
            yield batch
            batch.apply()

    def stage(self, name: str, version: int) -> Batch:
        with self._lock:
            return _MemoryBatch(self, name, self._versions[(name, version)])

    def commit_staged(self, name: str, version: int, batch: Batch, *, follow_active: bool = True) -> None:
        assert isinstance(batch, _MemoryBatch)
        with self._lock:
            if follow_active and self._active.get(name, version) != version:
                raise VersionSwitched(f"{name} now serves version {self._active[name]}")
            batch.apply()

    @contextmanager
    def switch(self, name: str, version: int) -> Iterator[Batch]:
        with self.batch(name, version, follow_active=False) as batch:
            yield batch
            self._active[name] = version
            self._announce(PositionChange(name, version, self._versions[(name, version)].state.position,
                                          switched=True))

    def set_state(self, name: str, version: int, state: str, error: str | None = None) -> None:
        with self._lock:
            found = self._versions[(name, version)]
            changed = found.state.state != state  # a new error in the same state is not progress
            updated_at = self._clock() if changed else found.state.updated_at
            found.state = replace(found.state, state=state, error=error, updated_at=updated_at)

    def states(self) -> list[ProjectionState]:
        with self._lock:
            return [v.state for _, v in sorted(self._versions.items())]

    def _apply_process(self, batch: StagedBatch) -> None:
        """A committed batch's outbox entries and deadlines (under the store's lock)."""
        now = self._clock()
        for entry in batch.outbox:
            if entry.key in self._outbox_keys:
                continue  # issued again by a redelivered event: already waiting
            self._outbox_keys.add(entry.key)
            self._outbox[self._next_id] = replace(entry, id=self._next_id, created_at=now)
            self._next_id += 1
        for entry_id in batch.settled_outbox:
            self._drop_outbox(entry_id)
        for key in batch.cancelled:
            self._deadlines.pop(key, None)
        for key, deadline in batch.deadlines.items():
            self._deadlines[key] = replace(deadline, id=self._next_id)
            self._next_id += 1
        for deadline_id in batch.settled_deadlines:
            for key, deadline in list(self._deadlines.items()):
                if deadline.id == deadline_id:
                    del self._deadlines[key]

    def _drop_outbox(self, entry_id: int) -> None:
        entry = self._outbox.pop(entry_id, None)
        if entry is not None:
            self._outbox_keys.discard(entry.key)

    def _deadline_ids(self) -> set[int | None]:
        return {d.id for d in self._deadlines.values()}

    # --- process managers: outbox and deadlines ------------------------------------------------

    def outbox(self, projection: str, limit: int) -> list[OutboxEntry]:
        with self._lock:
            return [e for _, e in sorted(self._outbox.items()) if e.projection == projection][:limit]

    def outbox_done(self, ids: Sequence[int]) -> None:
        with self._lock:
            for entry_id in ids:
                self._drop_outbox(entry_id)

    def postpone(self, entry_id: int, at: datetime, error: str) -> None:
        with self._lock:
            entry = self._outbox.get(entry_id)
            if entry is not None:
                self._outbox[entry_id] = replace(entry, attempts=entry.attempts + 1, next_attempt_at=at,
                                                 last_error=error)

    def settle_outbox(self, batch: Batch, entry_id: int) -> None:
        assert isinstance(batch, _MemoryBatch)
        batch.settled_outbox.append(entry_id)

    def due_deadlines(self, projection: str, now: datetime, limit: int) -> list[Deadline]:
        with self._lock:
            due = [d for d in self._deadlines.values() if d.projection == projection and d.due_at <= now]
        return sorted(due, key=lambda d: (d.due_at, d.id or 0))[:limit]

    def settle_deadline(self, batch: Batch, deadline_id: int) -> None:
        assert isinstance(batch, _MemoryBatch)
        batch.settled_deadlines.append(deadline_id)

    def postpone_deadline(self, deadline_id: int, at: datetime) -> None:
        with self._lock:
            for key, deadline in self._deadlines.items():
                if deadline.id == deadline_id:
                    self._deadlines[key] = replace(deadline, due_at=at, attempts=deadline.attempts + 1)

    def outbox_stats(self) -> dict[str, OutboxStats]:
        with self._lock:
            names = {e.projection for e in self._outbox.values()} | {d.projection for d in self._deadlines.values()}
            return {name: self._stats(name) for name in names}

    def _stats(self, name: str) -> OutboxStats:
        entries = [e for e in self._outbox.values() if e.projection == name]
        deadlines = [d for d in self._deadlines.values() if d.projection == name]
        return OutboxStats(
            pending=len(entries), oldest_at=min((e.created_at for e in entries if e.created_at), default=None),
            deadlines=len(deadlines), next_deadline_at=min((d.due_at for d in deadlines), default=None))

    # --- leases ---------------------------------------------------------------------------------

    def acquire_lease(self, name: str, owner: str, ttl_seconds: float, *, progressed: bool = False) -> bool:
        with self._lock:
            now = self._clock()
            held = self._leases.get(name)
            if held is not None and held.owner != owner and held.expires_at > now:
                return False
            ours = held is not None and held.owner == owner
            progress_at = now if progressed or not ours else held.progress_at  # type: ignore[union-attr]
            self._leases[name] = LeaseState(name, owner, now + timedelta(seconds=ttl_seconds), progress_at)
            return True

    def release_lease(self, name: str, owner: str) -> None:
        with self._lock:
            held = self._leases.get(name)
            if held is not None and held.owner == owner:
                del self._leases[name]

    def set_state_if_owner(self, name: str, version: int, owner: str, state: str, error: str | None = None) -> bool:
        with self._lock:
            held = self._leases.get(name)
            if held is None or held.owner != owner:
                return False
            self.set_state(name, version, state, error)
            return True

    def leases(self) -> list[LeaseState]:
        with self._lock:
            return [lease for _, lease in sorted(self._leases.items())]

    def _park(self, letter: DeadLetter) -> None:
        self._letters[self._next_letter] = replace(
            letter, id=self._next_letter, failed_at=self._clock()
        )
        self._next_letter += 1

    def dead_letters(self, name: str | None = None) -> list[DeadLetter]:
        with self._lock:
            return [d for _, d in sorted(self._letters.items()) if name in (None, d.projection)]

    def discard_dead_letter(self, letter_id: int) -> bool:
        with self._lock:
            self._retries.discard(letter_id)
            return self._letters.pop(letter_id, None) is not None

    def request_retry(self, letter_id: int) -> bool:
        with self._lock:
            if letter_id not in self._letters:
                return False
            self._retries.add(letter_id)
            return True

    def retry_requests(self, name: str) -> list[DeadLetter]:
        with self._lock:
            return [self._letters[i] for i in sorted(self._retries)
                    if i in self._letters and self._letters[i].projection == name]

    def settle_dead_letter(self, batch: Batch, letter_id: int) -> None:
        assert isinstance(batch, _MemoryBatch)
        batch.settled.append(letter_id)
        self._retries.discard(letter_id)

    @contextmanager
    def read(self, name: str) -> Iterator[Views]:
        with self._lock:
            version = self._versions[(name, self.active_version(name))]
            yield StagedViews(_Source(version))

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
        where = check_conditions(model, where)
        with self._lock:
            table = self._versions[(name, self.active_version(name))].tables.get(model.table, {})
            rows: list[R] = [r.copy_row() for r in table.values()]  # type: ignore[misc]
        return sorted_rows(rows, where, sort, after, limit)

    def get_many(self, name: str, model: type[R], keys: Sequence[tuple[Any, ...]]) -> list[R | None]:
        with self._lock:
            table = self._versions[(name, self.active_version(name))].tables.get(model.table, {})
            found = [table.get(tuple(key)) for key in keys]
        return [r.copy_row() if r is not None else None for r in found]  # type: ignore[misc]

    def active_position(self, name: str) -> int:
        with self._lock:
            return self.position(name, self.active_version(name))

    def active_positions(self, names: Sequence[str]) -> dict[str, tuple[int, int, int]]:
        with self._lock:  # no partitions here: the position is the change mark
            versions = {name: self.active_version(name) for name in names}
            positions = {name: self.position(name, version) for name, version in versions.items()}
            return {name: (version, positions[name], positions[name]) for name, version in versions.items()}

    def close(self) -> None:
        """Nothing to release."""
