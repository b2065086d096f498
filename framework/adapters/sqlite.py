"""Embedded event store in one SQLite file, on ``eventsourcing``'s SQLite recorder.

Used by ``eventfold dev``: a restart keeps the data. One process owns the
file; a lock serialises writers so positions are handed out in commit order.
The recorder makes the events table and reads it; the append is this module's
own INSERT, so that the events and the idempotency record share a transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError, Notification, PersistenceError, StoredEvent
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteDatastore

from framework.adapters.idempotency import KeyRecord, outcome_for_existing
from framework.errors import ConcurrencyConflict, IdempotencyKeyInFlight, StoreUnavailable
from framework.store import Claimed, ClaimOutcome, IdempotencyCompletion

__all__ = ["SQLiteEventStore"]

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS snapshots (originator_id TEXT, originator_version INTEGER, "
    "topic TEXT, state BLOB, PRIMARY KEY (originator_id, originator_version)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS idempotency_keys (key TEXT PRIMARY KEY, request_hash TEXT NOT NULL,"
    " owner TEXT NOT NULL, claimed_at REAL NOT NULL, completed INTEGER NOT NULL DEFAULT 0,"
    " aggregate_id TEXT, version INTEGER NOT NULL DEFAULT 0, position INTEGER)",
    "CREATE TABLE IF NOT EXISTS relay_checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL)",
]


_EVENTS_TABLE = "stored_events"
# The recorder's events table has a rowid: it is the event's position (notification id).
_INSERT_EVENT = (
    f"INSERT INTO {_EVENTS_TABLE} (originator_id, originator_version, topic, state) VALUES (?, ?, ?, ?)"
)


class SQLiteEventStore:
    def __init__(self, path: str) -> None:
        self._datastore = SQLiteDatastore(db_name=path)
        self._recorder = SQLiteApplicationRecorder(self._datastore, events_table_name=_EVENTS_TABLE)
        self._write_lock = threading.Lock()
        self._appended = threading.Condition()  # one process owns the file: wake in-process readers

    def create_schema(self) -> None:
        self._recorder.create_table()
        with self._write() as cursor:
            for statement in _SCHEMA:
                cursor.execute(statement)

    @contextmanager
    def _write(self) -> Iterator[SQLiteCursor]:
        with self._write_lock, _translated(), self._datastore.transaction(commit=True) as cursor:
            yield cursor

    @contextmanager
    def _read(self) -> Iterator[SQLiteCursor]:
        with _translated(), self._datastore.transaction(commit=False) as cursor:
            yield cursor

    def append(
        self,
        events: Sequence[StoredEvent],
        completion: IdempotencyCompletion | None = None,
    ) -> list[int]:
        with self._write() as cursor:
            positions = self._insert(cursor, events)
            if completion is not None:
                _complete(cursor, completion, positions)
        if positions:
            with self._appended:
                self._appended.notify_all()
        return positions

    def _insert(self, cursor: SQLiteCursor, events: Sequence[StoredEvent]) -> list[int]:
        positions = []
        try:
            for e in events:
                cursor.execute(_INSERT_EVENT, (_stored_id(e.originator_id), e.originator_version, e.topic, e.state))
                positions.append(int(cursor.lastrowid))
        except Exception as e:
            if "UNIQUE constraint" in str(e):
                raise ConcurrencyConflict("an aggregate was changed concurrently") from e
            raise
        return positions

    def read_stream(self, aggregate_id: UUID, after_version: int = 0) -> list[StoredEvent]:
        with _translated():
            return list(self._recorder.select_events(aggregate_id, gt=after_version))

    def read_stream_with_positions(self, aggregate_id: UUID, after_version: int = 0) -> list[Notification]:
        with self._read() as cursor:
            cursor.execute(
                f"SELECT rowid, originator_version, topic, state FROM {self._recorder.events_table_name}"
                " WHERE originator_id = ? AND originator_version > ? ORDER BY originator_version",
                (aggregate_id.hex, after_version),
            )
            return [Notification(id=row["rowid"], originator_id=aggregate_id,
                                 originator_version=row["originator_version"], topic=row["topic"],
                                 state=row["state"]) for row in cursor.fetchall()]

    def read_all(self, after_position: int, limit: int) -> list[Notification]:
        with _translated():
            return list(
                self._recorder.select_notifications(after_position, limit, inclusive_of_start=False)
            )

    def head(self) -> int:
        with _translated():
            return self._recorder.max_notification_id() or 0

    def claim_idempotency_key(
        self, key: str, request_hash: str, owner: UUID, lease_seconds: float
    ) -> ClaimOutcome:
        now = time.time()
        with self._write() as cursor:
            cursor.execute(
                "INSERT INTO idempotency_keys (key, request_hash, owner, claimed_at) VALUES (?,?,?,?)"
                " ON CONFLICT (key) DO UPDATE SET request_hash=excluded.request_hash,"
                " owner=excluded.owner, claimed_at=excluded.claimed_at"
                " WHERE completed = 0 AND claimed_at < ?",
                (key, request_hash, owner.hex, now, now - lease_seconds),
            )
            cursor.execute("SELECT * FROM idempotency_keys WHERE key = ?", (key,))
            row = cursor.fetchone()
        if row["owner"] == owner.hex and not row["completed"]:
            return Claimed()
        return outcome_for_existing(_key_record(row))

    def release_idempotency_key(self, key: str, owner: UUID) -> None:
        with self._write() as cursor:
            cursor.execute(
                "DELETE FROM idempotency_keys WHERE key = ? AND owner = ? AND completed = 0",
                (key, owner.hex),
            )

    def save_snapshot(self, snapshot: StoredEvent) -> None:
        with self._write() as cursor:
            cursor.execute(
                "INSERT OR IGNORE INTO snapshots VALUES (?,?,?,?)",
                (_hex(snapshot.originator_id), snapshot.originator_version, snapshot.topic,
                 snapshot.state),
            )

    def latest_snapshot(self, aggregate_id: UUID) -> StoredEvent | None:
        with self._read() as cursor:
            cursor.execute(
                "SELECT * FROM snapshots WHERE originator_id = ?"
                " ORDER BY originator_version DESC LIMIT 1",
                (aggregate_id.hex,),
            )
            row = cursor.fetchone()
        if row is None:
            return None
        return StoredEvent(aggregate_id, row["originator_version"], row["topic"], row["state"])

    def wait_for_append(self, after_position: int, timeout: float) -> bool:
        with self._appended:
            return self._appended.wait_for(lambda: self.head() > after_position, timeout)

    def relay_checkpoint(self, name: str) -> int:
        with self._read() as cursor:
            cursor.execute("SELECT position FROM relay_checkpoints WHERE name = ?", (name,))
            row = cursor.fetchone()
        return int(row["position"]) if row else 0

    def save_relay_checkpoint(self, name: str, position: int) -> None:
        with self._write() as cursor:
            cursor.execute(
                "INSERT INTO relay_checkpoints VALUES (?, ?) ON CONFLICT (name) DO UPDATE"
                " SET position = max(position, excluded.position)",
                (name, position),
            )

    def close(self) -> None:
        self._datastore.close()


def _complete(cursor: SQLiteCursor, completion: IdempotencyCompletion, positions: list[int]) -> None:
    cursor.execute(
        "UPDATE idempotency_keys SET completed = 1, aggregate_id = ?, version = ?, position = ?"
        " WHERE key = ? AND owner = ? AND completed = 0",
        (_hex(completion.aggregate_id) if completion.aggregate_id else None, completion.version,
         positions[-1] if positions else None, completion.key, completion.owner.hex),
    )
    cursor.execute("SELECT changes()")
    if cursor.fetchone()[0] != 1:
        raise IdempotencyKeyInFlight(f"idempotency key {completion.key!r} was taken over")


def _key_record(row: Any) -> KeyRecord:
    aggregate_id = UUID(row["aggregate_id"]) if row["aggregate_id"] else None
    return KeyRecord(
        request_hash=row["request_hash"],
        completed=bool(row["completed"]),
        aggregate_id=aggregate_id,
        version=row["version"],
        position=row["position"],
    )


def _stored_id(value: UUID | str) -> str:
    """An aggregate id as the recorder stores it (and looks it up): a UUID's hex, a string as it is."""
    return value.hex if isinstance(value, UUID) else value


def _hex(value: UUID | str) -> str:
    return value.hex if isinstance(value, UUID) else UUID(value).hex


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except IntegrityError as e:
        raise ConcurrencyConflict("an aggregate was changed concurrently") from e
    except PersistenceError as e:
        raise StoreUnavailable(f"the SQLite event store failed: {e}") from e
