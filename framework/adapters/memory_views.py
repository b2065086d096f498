"""In-process read models for the embedded mode and tests; same semantics as PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from framework.errors import ConcurrencyConflict, VersionSwitched
from framework.query import BY_KEY, Condition, Sort, sorted_rows
from framework.readmodel import ReadModel
from framework.staging import StagedBatch, StagedViews
from framework.views import Batch, DeadLetter, ProjectionState, Views

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
        if self.position is not None and self.position <= self._version.state.position:
            raise ConcurrencyConflict(f"{self._name} was advanced by another worker")
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
                updated_at=datetime.now(UTC),
            )
        for letter in self.letters:
            self._store._park(letter)
        for letter_id in self.settled:
            self._store._letters.pop(letter_id, None)


class MemoryViewStore:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._versions: dict[tuple[str, int], _Version] = {}
        self._active: dict[str, int] = {}
        self._letters: dict[int, DeadLetter] = {}
        self._retries: set[int] = set()
        self._next_letter = 1

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

    def forget_cached(self, name: str, version: int) -> None:
        """No cache in memory: the tables are the rows."""

    def cache_empty_tables(self, name: str, version: int, models: Sequence[type[ReadModel]]) -> None:
        """No cache in memory: the tables are the rows."""

    @contextmanager
    def switch(self, name: str, version: int) -> Iterator[Batch]:
        with self.batch(name, version, follow_active=False) as batch:
            yield batch
            self._active[name] = version

    def set_state(self, name: str, version: int, state: str, error: str | None = None) -> None:
        with self._lock:
            found = self._versions[(name, version)]
            found.state = replace(found.state, state=state, error=error, updated_at=datetime.now(UTC))

    def states(self) -> list[ProjectionState]:
        with self._lock:
            return [v.state for _, v in sorted(self._versions.items())]

    def _park(self, letter: DeadLetter) -> None:
        self._letters[self._next_letter] = replace(
            letter, id=self._next_letter, failed_at=datetime.now(UTC)
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

    def close(self) -> None:
        """Nothing to release."""
