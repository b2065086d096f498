"""What the PostgreSQL event store's two write adapters share: its statements, the parameters of an
append, and the translation of driver errors into ``framework.errors``.

``postgres.py`` (threads, ``PgPool``) and ``pg_async.py`` (an event loop, ``AsyncPgPool``) send the same
statements and give the same answers; this module is the one copy of both.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import psycopg
from eventsourcing.persistence import PersistenceError, StoredEvent
from psycopg.errors import UndefinedFunction, UndefinedTable

from framework.adapters.idempotency import KeyRecord
from framework.adapters.pg_arrays import BigintArray, ByteaArray, IntArray, TextArray, UuidArray
from framework.errors import ConcurrencyConflict, EventfoldError, IdempotencyKeyInFlight, StoreUnavailable
from framework.store import IdempotencyCompletion

__all__ = [
    "EVENTS_TABLE", "KEY_TAKEN_OVER", "NO_KEY", "PendingAppend", "Statements", "append_params", "failed_again",
    "group_outcome", "group_params", "key_record", "quote", "translated", "translation",
]

KEY_TAKEN_OVER = "EF001"  # SQLSTATE raised by eventfold_append when a claim is no longer ours
EVENTS_TABLE = "stored_events"  # eventsourcing's default; its recorder NOTIFYs on a channel of that name


@dataclass(frozen=True)
class PendingAppend:
    """One command's append, waiting for its group."""

    events: Sequence[StoredEvent]
    completion: IdempotencyCompletion | None


NO_KEY = IdempotencyCompletion("", UUID(int=0), None, 0)


def group_outcome(outcome: str, positions: list[int] | None) -> list[int] | BaseException:
    """A command's row of ``eventfold_append_group``: the errors a lone append would raise."""
    if outcome == "ok":
        return list(positions or [])
    if outcome == "conflict":
        return ConcurrencyConflict("an aggregate was changed concurrently")
    if outcome == "taken_over":
        return IdempotencyKeyInFlight("the idempotency key was taken over by another request")
    return StoreUnavailable(f"the PostgreSQL event store failed ({outcome.removeprefix('failed: ')})")


def failed_again(error: EventfoldError) -> EventfoldError:
    """A fresh copy of a translated driver error, for another append of the failed group."""
    return translation(error.__cause__) if isinstance(error.__cause__, Exception) else StoreUnavailable(str(error))


def append_params(append: PendingAppend) -> tuple[Any, ...]:
    """``Statements.append``'s parameters: the events one array per column, then the key's completion."""
    events, key = append.events, append.completion or NO_KEY
    return (UuidArray([e.originator_id for e in events]), BigintArray([e.originator_version for e in events]),
            TextArray([e.topic for e in events]), ByteaArray([e.state for e in events]),
            key.key or None, key.owner, key.aggregate_id, key.version)


def group_params(group: Sequence[PendingAppend]) -> tuple[list[Any] | None, ...]:
    """``Statements.append_group``'s parameters: where each command's events end, the events of all,
    then each command's key."""
    ends, count = [], 0
    for append in group:
        count += len(append.events)
        ends.append(count)
    events = [e for append in group for e in append.events]
    columns: list[list[Any]] = [
        IntArray(ends), UuidArray([e.originator_id for e in events]),
        BigintArray([e.originator_version for e in events]), TextArray([e.topic for e in events]),
        ByteaArray([e.state for e in events]),
    ]
    if all(append.completion is None for append in group):  # no keys: NULL arrays, nothing to encode
        return (*columns, None, None, None, None)
    keys = [append.completion or NO_KEY for append in group]
    return (*columns, TextArray([k.key or None for k in keys]), UuidArray([k.owner for k in keys]),
            UuidArray([k.aggregate_id for k in keys]), BigintArray([k.version for k in keys]))


class Statements:
    """Every SQL statement of the adapter, schema-qualified once."""

    def __init__(self, schema: str, events_table: str) -> None:
        s, events = quote(schema), f"{quote(schema)}.{quote(events_table)}"
        self.append = (
            f"SELECT new_position FROM {s}.eventfold_append("
            "%s::uuid[], %s::bigint[], %s::text[], %s::bytea[], %s, %s, %s, %s)"
        )
        self.append_group = (
            f"SELECT command_outcome, command_positions FROM {s}.eventfold_append_group("
            "%s::int[], %s::uuid[], %s::bigint[], %s::text[], %s::bytea[],"
            " %s::text[], %s::uuid[], %s::uuid[], %s::bigint[])"
        )
        self.select_stream = (
            f"SELECT * FROM {events} WHERE originator_id = %s AND originator_version > %s"
            " ORDER BY originator_version"
        )
        # Notifications: their columns in the order ``Notification`` takes them (built from a row as is).
        notification = "originator_id, originator_version, topic, state, notification_id"
        self.select_stream_notifications = (
            f"SELECT {notification} FROM {events} WHERE originator_id = %s AND originator_version > %s"
            " ORDER BY originator_version"
        )
        self.select_all = (
            f"SELECT {notification} FROM {events} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
        )
        self.head = f"SELECT coalesce(max(notification_id), 0) AS head FROM {events}"
        keys = f"{s}.idempotency_keys"
        self.claim_key = (
            f"WITH claimed AS (INSERT INTO {keys} AS k (key, request_hash, owner, claimed_at)"
            " VALUES (%(key)s, %(hash)s, %(owner)s, now()) ON CONFLICT (key) DO UPDATE SET"
            " request_hash = excluded.request_hash, owner = excluded.owner, claimed_at = now()"
            " WHERE k.completed_at IS NULL AND k.claimed_at < now() - make_interval(secs => %(lease)s)"
            " RETURNING k.*)"
            " SELECT true AS ours, * FROM claimed UNION ALL"
            f" SELECT false AS ours, * FROM {keys} WHERE key = %(key)s AND NOT EXISTS (SELECT FROM claimed)"
        )
        self.release_key = (
            f"DELETE FROM {keys} WHERE key = %(key)s AND owner = %(owner)s AND completed_at IS NULL"
        )
        self.insert_snapshot = (
            f"INSERT INTO {s}.snapshots VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
        )
        self.select_checkpoint = f"SELECT position FROM {s}.relay_checkpoints WHERE name = %s"
        self.save_checkpoint = (
            f"INSERT INTO {s}.relay_checkpoints AS c VALUES (%s, %s) ON CONFLICT (name) DO UPDATE"
            " SET position = greatest(c.position, excluded.position)"
        )
        self.select_snapshot = (
            f"SELECT * FROM {s}.snapshots WHERE originator_id = %s"
            " ORDER BY originator_version DESC LIMIT 1"
        )


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def key_record(row: dict[str, Any]) -> KeyRecord:
    return KeyRecord(
        request_hash=row["request_hash"],
        completed=row["completed_at"] is not None,
        aggregate_id=row["aggregate_id"],
        version=row["version"],
        position=row["position"],
    )


@contextmanager
def translated() -> Iterator[None]:
    """Driver errors become ``framework.errors``, here and nowhere else."""
    try:
        yield
    except (psycopg.Error, PersistenceError) as e:  # PersistenceError: eventsourcing's, at init-db
        raise translation(e) from e


def translation(error: Exception) -> EventfoldError:
    cause = error.__cause__ if isinstance(error, PersistenceError) else error
    if getattr(cause, "sqlstate", None) == KEY_TAKEN_OVER:
        return IdempotencyKeyInFlight("the idempotency key was taken over by another request")
    if isinstance(cause, psycopg.IntegrityError):
        return ConcurrencyConflict("an aggregate was changed concurrently")
    if isinstance(cause, psycopg.OperationalError | psycopg.InterfaceError):  # a pool timeout is operational
        return StoreUnavailable(f"the PostgreSQL event store is unavailable ({_first_line(error)})")
    if isinstance(cause, UndefinedTable):
        return StoreUnavailable("event store tables are missing: run `eventfold init-db`")
    if isinstance(cause, UndefinedFunction):
        return StoreUnavailable("the event store schema is out of date: run `eventfold init-db`")
    if isinstance(cause, psycopg.ProgrammingError):
        return StoreUnavailable(f"PostgreSQL refused the event store's statement ({_first_line(error)})")
    return StoreUnavailable(f"the PostgreSQL event store failed ({_first_line(error)})")


def _first_line(error: Exception) -> str:
    """The driver's own words, first line only (libpq never includes the password)."""
    text = str(error.__cause__ if isinstance(error, PersistenceError) and error.__cause__ else error).strip()
    return text.splitlines()[0] if text else type(error).__name__
