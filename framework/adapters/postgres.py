"""PostgreSQL event store in ``eventsourcing``'s PostgreSQL events table (psycopg 3).

``init-db`` creates the events table with ``eventsourcing``'s own recorder, so the
table, its notification ids and its NOTIFY channel are the library's. Everything
else is this module's, on its own connection pool: the single append transaction
(events + idempotency record, under the same table lock that makes commit order
equal position order), reads, snapshots, and translation of driver errors into
``framework.errors``. It does not use the recorder's retrying read/insert methods:
when the database is down a request should fail fast with ``StoreUnavailable``, not
stall for seconds, and an insert whose commit outcome is unknown must not be
blindly re-sent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Notification, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import Cursor
from psycopg.rows import DictRow, tuple_row

from framework.adapters.group_commit import GroupCommit
from framework.adapters.idempotency import outcome_for_existing
from framework.adapters.pg_appends import (
    EVENTS_TABLE,
    KEY_TAKEN_OVER,
    PendingAppend,
    Statements,
    append_params,
    failed_again,
    group_outcome,
    group_params,
    key_record,
    quote,
    translated,
)
from framework.adapters.pg_pool import PgPool
from framework.errors import (
    EventfoldError,
)
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

_CHANNEL = EVENTS_TABLE


def _append_function(schema: str) -> str:
    """The whole append transaction as one server-side function.

    It takes the same table lock as ``eventsourcing``'s recorder (commit order
    equals position order) and sends the same NOTIFY, then inserts and marks the
    idempotency key, so a command costs one round trip and one commit. The events
    come as one array per column: no composite type to look up and register first.
    """
    s, events = quote(schema), f"{quote(schema)}.{quote(EVENTS_TABLE)}"
    return f"""
CREATE OR REPLACE FUNCTION {s}.eventfold_append(
    event_ids uuid[], event_versions bigint[], event_topics text[], event_states bytea[],
    key_name text, key_owner uuid, key_aggregate uuid, key_version bigint)
RETURNS TABLE (new_position bigint) LANGUAGE plpgsql AS $fn$
DECLARE
    positions bigint[] := '{{}}';
BEGIN
    IF cardinality(event_ids) > 0 THEN
        LOCK TABLE {events} IN EXCLUSIVE MODE;
        NOTIFY {quote(_CHANNEL)};
        WITH inserted AS (
            INSERT INTO {events} (originator_id, originator_version, topic, state)
            SELECT * FROM unnest(event_ids, event_versions, event_topics, event_states)
            RETURNING notification_id)
        SELECT array_agg(notification_id ORDER BY notification_id) INTO positions FROM inserted;
    END IF;
    IF key_name IS NOT NULL THEN
        UPDATE {s}.idempotency_keys SET completed_at = now(), aggregate_id = key_aggregate,
            version = key_version, position = positions[cardinality(positions)]
        WHERE key = key_name AND owner = key_owner AND completed_at IS NULL;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'idempotency key % was taken over', key_name USING ERRCODE = '{KEY_TAKEN_OVER}';
        END IF;
    END IF;
    RETURN QUERY SELECT unnest(positions);
END
$fn$
"""


def _append_group_function(schema: str) -> str:
    """Several commands' appends in one transaction: group commit (``EVENTFOLD_GROUP_COMMIT``).

    One table lock and one NOTIFY for the group, then each command in its own
    sub-transaction (an EXCEPTION block is a savepoint): its events, then its
    idempotency key. A command whose (aggregate, version) exists already, or
    whose key was taken over, is rolled back alone and reported; its neighbours
    commit. Command ``i``'s events are ``event_*[command_ends[i-1]+1 : command_ends[i]]``.
    Positions of a rolled-back command are gaps, as with a failed lone append;
    the lock is held to the commit, so commit order still equals position order.
    """
    s, events = quote(schema), f"{quote(schema)}.{quote(EVENTS_TABLE)}"
    return f"""
CREATE OR REPLACE FUNCTION {s}.eventfold_append_group(
    command_ends int[], event_ids uuid[], event_versions bigint[], event_topics text[], event_states bytea[],
    key_names text[], key_owners uuid[], key_aggregates uuid[], key_versions bigint[])
RETURNS TABLE (command_outcome text, command_positions bigint[]) LANGUAGE plpgsql AS $fn$
DECLARE
    first_event int := 1;
    last_event int;
    appended bigint[];
BEGIN
    -- Also for key-only groups: every group takes its locks in the same order (no deadlock).
    LOCK TABLE {events} IN EXCLUSIVE MODE;
    IF cardinality(event_ids) > 0 THEN
        NOTIFY {quote(_CHANNEL)};
    END IF;
    FOR i IN 1 .. coalesce(cardinality(command_ends), 0) LOOP
        last_event := command_ends[i];
        appended := '{{}}';
        BEGIN
            IF last_event >= first_event THEN
                WITH inserted AS (
                    INSERT INTO {events} (originator_id, originator_version, topic, state)
                    SELECT * FROM unnest(event_ids[first_event:last_event],
                        event_versions[first_event:last_event], event_topics[first_event:last_event],
                        event_states[first_event:last_event])
                    RETURNING notification_id)
                SELECT array_agg(notification_id ORDER BY notification_id) INTO appended FROM inserted;
            END IF;
            IF key_names[i] IS NOT NULL THEN
                UPDATE {s}.idempotency_keys SET completed_at = now(), aggregate_id = key_aggregates[i],
                    version = key_versions[i], position = appended[cardinality(appended)]
                WHERE key = key_names[i] AND owner = key_owners[i] AND completed_at IS NULL;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'idempotency key % was taken over', key_names[i]
                        USING ERRCODE = '{KEY_TAKEN_OVER}';
                END IF;
            END IF;
            command_outcome := 'ok';
            command_positions := appended;
        EXCEPTION
            WHEN unique_violation THEN
                command_outcome := 'conflict';
                command_positions := NULL;
            WHEN SQLSTATE '{KEY_TAKEN_OVER}' THEN
                command_outcome := 'taken_over';
                command_positions := NULL;
            WHEN OTHERS THEN
                command_outcome := 'failed: ' || SQLSTATE || ' ' || SQLERRM;
                command_positions := NULL;
        END;
        RETURN NEXT;
        first_event := last_event + 1;
    END LOOP;
END
$fn$
"""


# The first version of eventfold_append took eventsourcing's composite type; it is not called any more.
_DROP_OLD_APPEND = (
    "DROP FUNCTION IF EXISTS {s}.eventfold_append({s}.stored_event_uuid[], text, uuid, uuid, bigint)"
)


class PostgresEventStore:
    def __init__(self, settings: PostgresSettings) -> None:
        self._settings = settings
        self._schema = settings.schema.strip() or "public"
        self._pool = PgPool(settings, name="eventfold-events", min_size=settings.pool_size,
                            max_size=settings.pool_size)
        self._sql = Statements(self._schema, EVENTS_TABLE)
        self._group: GroupCommit[PendingAppend, list[int]] | None = (
            GroupCommit(self._append_group) if settings.group_commit else None
        )

    def create_schema(self) -> None:
        with self._cursor() as cursor:  # fails fast (StoreUnavailable) when the server is down
            cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(self._schema)}".encode())
        with translated():
            self._create_events_table()
        with self._transaction() as cursor:
            for statement in (*_SCHEMA, _DROP_OLD_APPEND):
                cursor.execute(statement.format(s=quote(self._schema)).encode())
            cursor.execute(_append_function(self._schema).encode())
            cursor.execute(_append_group_function(self._schema).encode())

    def _create_events_table(self) -> None:
        """``eventsourcing``'s own events table, notification index and type, made by its recorder."""
        settings = self._settings
        datastore = PostgresDatastore(
            dbname=settings.dbname, host=settings.host, port=settings.port, user=settings.user,
            password=settings.password, schema=self._schema, pool_size=1,
            connect_timeout=settings.connect_timeout,
        )
        try:
            PostgresApplicationRecorder(datastore, events_table_name=EVENTS_TABLE).create_table()
        finally:
            datastore.close()

    @contextmanager
    def _transaction(self) -> Iterator[Cursor[DictRow]]:
        with self._cursor() as cursor, cursor.connection.transaction():
            yield cursor

    @contextmanager
    def _cursor(self) -> Iterator[Cursor[DictRow]]:
        with translated(), self._pool.connection() as conn, conn.cursor() as cursor:
            yield cursor

    @contextmanager
    def _tuple_cursor(self) -> Iterator[Cursor[tuple[Any, ...]]]:
        """Rows as tuples: the appends' results, read by position (no column names built per statement)."""
        with translated(), self._pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cursor:
            yield cursor

    def append(
        self,
        events: Sequence[StoredEvent],
        completion: IdempotencyCompletion | None = None,
    ) -> list[int]:
        """With group commit (the default), concurrent appends share a transaction: ``_append_group``;
        without, one statement and one round trip per append: ``eventfold_append``."""
        if self._group is not None:
            return self._group.submit(PendingAppend(events, completion))
        return self._append_one(events, completion)

    def _append_one(self, events: Sequence[StoredEvent], completion: IdempotencyCompletion | None) -> list[int]:
        with self._tuple_cursor() as cursor:
            cursor.execute(self._sql.append, append_params(PendingAppend(events, completion)), prepare=True)
            return [row[0] for row in cursor.fetchall()]  # new_position

    @property
    def group_commit(self) -> GroupCommit[PendingAppend, list[int]] | None:
        """The group committer (None: group commit is off); its counters say how appends were grouped."""
        return self._group

    def _append_group(self, group: Sequence[PendingAppend]) -> Sequence[list[int] | BaseException]:
        """One statement, one round trip, one commit for the whole group: ``eventfold_append_group``.
        Each append gets its positions or its own error; a failure of the statement fails them all."""
        if len(group) == 1:  # a lone append (an idle store): the leaner one-command statement
            try:
                return [self._append_one(group[0].events, group[0].completion)]
            except EventfoldError as error:
                return [error]
        try:
            with self._tuple_cursor() as cursor:
                cursor.execute(self._sql.append_group, group_params(group), prepare=True)
                rows = cursor.fetchall()
        except EventfoldError as error:  # each append its own error instance (one traceback per thread)
            return [error] + [failed_again(error) for _ in group[1:]]
        return [group_outcome(outcome, positions) for outcome, positions in rows]  # command_outcome, _positions

    def read_stream(self, aggregate_id: UUID, after_version: int = 0) -> list[StoredEvent]:
        with self._cursor() as cursor:
            cursor.execute(self._sql.select_stream, (aggregate_id, after_version), prepare=True)
            return [_stored(row) for row in cursor.fetchall()]

    def read_stream_with_positions(self, aggregate_id: UUID, after_version: int = 0) -> list[Notification]:
        with self._notification_cursor() as cursor:
            cursor.execute(self._sql.select_stream_notifications, (aggregate_id, after_version), prepare=True)
            return _notifications(cursor)

    def read_all(self, after_position: int, limit: int) -> list[Notification]:
        with self._notification_cursor() as cursor:
            cursor.execute(self._sql.select_all, (after_position, limit), prepare=True)
            return _notifications(cursor)

    @contextmanager
    def _notification_cursor(self) -> Iterator[Cursor[tuple[Any, ...]]]:
        """Stored events in PostgreSQL's binary format, as tuples: a bulk catch-up reads every event through
        here, and binary rows need no parsing (bytea as its bytes, not hex; uuid and bigint as their bytes)."""
        with translated(), self._pool.connection() as conn, conn.cursor(row_factory=tuple_row,
                                                                        binary=True) as cursor:
            yield cursor

    def head(self) -> int:
        with self._cursor() as cursor:
            cursor.execute(self._sql.head)
            row = cursor.fetchone()
        return int(row["head"]) if row else 0

    def claim_idempotency_key(
        self, key: str, request_hash: str, owner: UUID, lease_seconds: float
    ) -> ClaimOutcome:
        params = {"key": key, "hash": request_hash, "owner": owner, "lease": lease_seconds}
        while True:
            rows = self._lease_statement(self._sql.claim_key, params)
            if rows:  # none: a concurrent claim committed after our snapshot; look again
                break
        if rows[0]["ours"]:
            return Claimed()
        return outcome_for_existing(key_record(rows[0]))

    def release_idempotency_key(self, key: str, owner: UUID) -> None:
        self._lease_statement(self._sql.release_key, {"key": key, "owner": owner})

    def _lease_statement(self, statement: str, params: dict[str, Any]) -> list[DictRow]:
        """Claims and releases are leases: losing one in a server crash is harmless (the
        append then reports the key taken over), so they skip the WAL flush, and the
        whole transaction goes out in one pipelined round trip."""
        with self._cursor() as control:
            conn = control.connection
            with conn.pipeline() as pipeline, conn.cursor() as cursor:
                control.execute("BEGIN")
                control.execute("SET LOCAL synchronous_commit TO OFF")
                cursor.execute(statement, params, prepare=True)
                control.execute("COMMIT")
                pipeline.sync()
                return cursor.fetchall() if cursor.description else []

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
            connection.execute(f"LISTEN {quote(_CHANNEL)}")
            try:
                if self.head() > after_position:  # appended before LISTEN took effect
                    return True
                for _ in connection.notifies(timeout=timeout, stop_after=1):
                    break
            finally:
                connection.execute(f"UNLISTEN {quote(_CHANNEL)}")
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
        self._pool.close()


def _stored(row: DictRow) -> StoredEvent:
    return StoredEvent(
        row["originator_id"], row["originator_version"], row["topic"], bytes(row["state"])
    )


def _notifications(cursor: Cursor[tuple[Any, ...]]) -> list[Notification]:
    """Rows selected in ``Notification``'s field order (``Statements.select_all``), built positionally:
    a bulk catch-up builds every stored event here."""
    return [Notification(o, v, t, s if type(s) is bytes else bytes(s), i)  # bytes, whichever psycopg loads
            for o, v, t, s, i in cursor.fetchall()]


