"""PostgreSQL event store on ``eventsourcing``'s PostgreSQL recorder (psycopg 3).

The recorder owns the events table, its composite type and the table lock
that makes commit order equal position order. This module adds the single
append transaction (events + idempotency record), snapshots, and translation
of driver errors into ``framework.errors``. It deliberately avoids the
recorder's own retrying read/insert methods: when the database is down a
request should fail fast with ``StoreUnavailable``, not stall for seconds, and
an insert whose commit outcome is unknown must not be blindly re-sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import Cursor, Pipeline
from psycopg.errors import UndefinedTable
from psycopg.rows import DictRow

from framework.adapters.idempotency import KeyRecord, outcome_for_existing
from framework.errors import ConcurrencyConflict, IdempotencyKeyInFlight, StoreUnavailable
from framework.settings import PostgresSettings
from framework.store import Claimed, ClaimOutcome, IdempotencyCompletion

__all__ = ["PostgresEventStore"]

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS {s}.snapshots (originator_id uuid NOT NULL,"
    " originator_version bigint NOT NULL, topic text NOT NULL, state bytea NOT NULL,"
    " PRIMARY KEY (originator_id, originator_version))",
    "CREATE TABLE IF NOT EXISTS {s}.idempotency_keys (key text PRIMARY KEY,"
    " request_hash text NOT NULL, owner uuid NOT NULL, claimed_at timestamptz NOT NULL,"
    " completed_at timestamptz, aggregate_id uuid, version bigint NOT NULL DEFAULT 0,"
    " position bigint)",
    "CREATE TABLE IF NOT EXISTS {s}.relay_checkpoints (name text PRIMARY KEY, position bigint NOT NULL)",
]


class PostgresEventStore:
    def __init__(self, settings: PostgresSettings) -> None:
        self._datastore = PostgresDatastore(
            dbname=settings.dbname,
            host=settings.host,
            port=settings.port,
            user=settings.user,
            password=settings.password,
            schema=settings.schema,
            pool_size=settings.pool_size,
            connect_timeout=settings.connect_timeout,
        )
        self._schema = self._datastore.schema
        # Bound the TCP connect itself, not only the wait for a pooled connection.
        pool_kwargs = self._datastore.pool.kwargs
        assert isinstance(pool_kwargs, dict)
        pool_kwargs["connect_timeout"] = max(1, round(settings.connect_timeout))
        # The recorder looks up its composite type in the database when built;
        # defer that to first use so a process can start while PostgreSQL is down.
        self._datastore.register_type_adapters = lambda: None  # type: ignore[method-assign]
        self._recorder = PostgresApplicationRecorder(self._datastore)
        del self._datastore.register_type_adapters
        self._sql = _Statements(self._schema, self._recorder.events_table_name)

    @property
    def recorder(self) -> PostgresApplicationRecorder:
        """The underlying ``eventsourcing`` recorder, for LISTEN/NOTIFY subscribers."""
        return self._recorder

    def create_schema(self) -> None:
        with _translated():
            with self._datastore.get_connection() as conn:
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(self._schema)}".encode())
            self._recorder.create_table()
            self._datastore.register_type_adapters()
            with self._datastore.transaction(commit=True) as cursor:
                for statement in _SCHEMA:
                    cursor.execute(statement.format(s=_quote(self._schema)).encode())

    @contextmanager
    def _transaction(self) -> Iterator[Cursor[DictRow]]:
        with _translated(), self._datastore.transaction(commit=True) as cursor:
            yield cursor

    @contextmanager
    def _cursor(self) -> Iterator[Cursor[DictRow]]:
        with _translated(), self._datastore.get_connection() as conn, conn.cursor() as cursor:
            yield cursor

    def append(
        self,
        events: Sequence[StoredEvent],
        completion: IdempotencyCompletion | None = None,
    ) -> list[int]:
        # Pipeline mode sends lock, notify, insert and the key update together:
        # about two round trips per transaction instead of seven.
        failure: Exception | None = None
        positions: list[int] = []
        with _translated(), self._datastore.get_connection() as conn:
            with conn.pipeline() as pipeline:
                try:
                    with conn.transaction(), conn.cursor() as cursor:  # rolls back on raise
                        positions = self._insert(cursor, events)
                        if completion is not None:
                            self._complete(cursor, pipeline, completion, positions)
                except Exception as e:  # re-raised once out of the pipeline, which would warn
                    failure = e
            if failure is not None:
                raise failure
        return positions

    def _insert(self, cursor: Cursor[DictRow], events: Sequence[StoredEvent]) -> list[int]:
        if not events:
            return []
        self._datastore.register_type_adapters()  # a no-op once registered
        self._recorder._insert_stored_events(cursor, events)  # locks, notifies, inserts
        return [row["notification_id"] for row in cursor.fetchall()]

    def _complete(
        self,
        cursor: Cursor[DictRow],
        pipeline: Pipeline,
        completion: IdempotencyCompletion,
        positions: list[int],
    ) -> None:
        cursor.execute(
            self._sql.complete_key,
            (completion.aggregate_id, completion.version, positions[-1] if positions else None,
             completion.key, completion.owner),
        )
        pipeline.sync()  # rowcount is known only once the result is back
        if cursor.rowcount != 1:
            raise IdempotencyKeyInFlight(f"idempotency key {completion.key!r} was taken over")

    def read_stream(self, aggregate_id: UUID, after_version: int = 0) -> list[StoredEvent]:
        with self._cursor() as cursor:
            cursor.execute(self._sql.select_stream, (aggregate_id, after_version), prepare=True)
            return [_stored(row) for row in cursor.fetchall()]

    def read_all(self, after_position: int, limit: int) -> list[Notification]:
        with self._cursor() as cursor:
            cursor.execute(self._sql.select_all, (after_position, limit), prepare=True)
            return [_notification(row) for row in cursor.fetchall()]

    def head(self) -> int:
        with self._cursor() as cursor:
            cursor.execute(self._sql.head)
            row = cursor.fetchone()
        return int(row["head"]) if row else 0

    @contextmanager
    def _lease_transaction(self) -> Iterator[Cursor[DictRow]]:
        """For claims and releases: leases, so losing one in a server crash is
        harmless (the append then reports the key taken over). Skipping the WAL
        flush saves a disk sync on every keyed request."""
        with self._transaction() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")
            yield cursor

    def claim_idempotency_key(
        self, key: str, request_hash: str, owner: UUID, lease_seconds: float
    ) -> ClaimOutcome:
        with self._lease_transaction() as cursor:
            cursor.execute(self._sql.claim_key, (key, request_hash, owner, lease_seconds))
            if cursor.fetchone() is not None:
                return Claimed()
            cursor.execute(self._sql.select_key, (key,))
            row = cursor.fetchone()
        if row is None:  # released between our two statements: try again
            return self.claim_idempotency_key(key, request_hash, owner, lease_seconds)
        return outcome_for_existing(_key_record(row))

    def release_idempotency_key(self, key: str, owner: UUID) -> None:
        with self._lease_transaction() as cursor:
            cursor.execute(self._sql.release_key, (key, owner))

    def save_snapshot(self, snapshot: StoredEvent) -> None:
        with self._cursor() as cursor:
            cursor.execute(
                self._sql.insert_snapshot,
                (snapshot.originator_id, snapshot.originator_version, snapshot.topic,
                 snapshot.state),
            )

    def latest_snapshot(self, aggregate_id: UUID) -> StoredEvent | None:
        with self._cursor() as cursor:
            cursor.execute(self._sql.select_snapshot, (aggregate_id,), prepare=True)
            row = cursor.fetchone()
        return _stored(row) if row else None

    def wait_for_append(self, after_position: int, timeout: float) -> bool:
        """LISTEN on the channel the recorder NOTIFYs on every append."""
        if self.head() > after_position:
            return True
        with self._cursor() as cursor:
            connection = cursor.connection
            connection.execute(f"LISTEN {_quote(self._recorder.channel_name)}")
            try:
                if self.head() > after_position:  # appended before LISTEN took effect
                    return True
                for _ in connection.notifies(timeout=timeout, stop_after=1):
                    break
            finally:
                connection.execute(f"UNLISTEN {_quote(self._recorder.channel_name)}")
        return self.head() > after_position

    def relay_checkpoint(self, name: str) -> int:
        with self._cursor() as cursor:
            cursor.execute(self._sql.select_checkpoint, (name,))
            row = cursor.fetchone()
        return int(row["position"]) if row else 0

    def save_relay_checkpoint(self, name: str, position: int) -> None:
        with self._cursor() as cursor:
            cursor.execute(self._sql.save_checkpoint, (name, position))

    def close(self) -> None:
        self._datastore.close()


class _Statements:
    """Every SQL statement of the adapter, schema-qualified once."""

    def __init__(self, schema: str, events_table: str) -> None:
        s, events = _quote(schema), f"{_quote(schema)}.{_quote(events_table)}"
        self.select_stream = (
            f"SELECT * FROM {events} WHERE originator_id = %s AND originator_version > %s"
            " ORDER BY originator_version"
        )
        self.select_all = (
            f"SELECT * FROM {events} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
        )
        self.head = f"SELECT coalesce(max(notification_id), 0) AS head FROM {events}"
        keys = f"{s}.idempotency_keys"
        self.claim_key = (
            f"INSERT INTO {keys} AS k (key, request_hash, owner, claimed_at)"
            " VALUES (%s, %s, %s, now()) ON CONFLICT (key) DO UPDATE SET"
            " request_hash = excluded.request_hash, owner = excluded.owner, claimed_at = now()"
            " WHERE k.completed_at IS NULL AND k.claimed_at < now() - make_interval(secs => %s)"
            " RETURNING owner"
        )
        self.select_key = f"SELECT * FROM {keys} WHERE key = %s"
        self.release_key = f"DELETE FROM {keys} WHERE key = %s AND owner = %s AND completed_at IS NULL"
        self.complete_key = (
            f"UPDATE {keys} SET completed_at = now(), aggregate_id = %s, version = %s,"
            " position = %s WHERE key = %s AND owner = %s AND completed_at IS NULL"
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


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _stored(row: DictRow) -> StoredEvent:
    return StoredEvent(
        row["originator_id"], row["originator_version"], row["topic"], bytes(row["state"])
    )


def _notification(row: DictRow) -> Notification:
    return Notification(
        id=row["notification_id"],
        originator_id=row["originator_id"],
        originator_version=row["originator_version"],
        topic=row["topic"],
        state=bytes(row["state"]),
    )


def _key_record(row: dict[str, Any]) -> KeyRecord:
    return KeyRecord(
        request_hash=row["request_hash"],
        completed=row["completed_at"] is not None,
        aggregate_id=row["aggregate_id"],
        version=row["version"],
        position=row["position"],
    )


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except IntegrityError as e:
        raise ConcurrencyConflict("an aggregate was changed concurrently") from e
    except (OperationalError, InterfaceError) as e:
        raise StoreUnavailable(f"the PostgreSQL event store is unavailable ({_first_line(e)})") from e
    except ProgrammingError as e:
        if isinstance(e.__cause__, UndefinedTable):
            raise StoreUnavailable("event store tables are missing: run `eventfold init-db`") from e
        raise StoreUnavailable(f"PostgreSQL refused the event store's statement ({_first_line(e)})") from e
    except PersistenceError as e:
        raise StoreUnavailable(f"the PostgreSQL event store failed ({_first_line(e)})") from e


def _first_line(error: Exception) -> str:
    """The driver's own words, first line only (libpq never includes the password)."""
    text = str(error.__cause__ or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
