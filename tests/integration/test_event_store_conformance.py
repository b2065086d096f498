"""Every EventStore adapter against the shared conformance suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.postgres import PgDatabase

from framework.adapters.memory import MemoryEventStore
from framework.adapters.sqlite import SQLiteEventStore
from framework.store import EventStore
from framework.testing.conformance import EventStoreConformance


class TestMemoryEventStore(EventStoreConformance):
    def make_store(self) -> EventStore:
        return MemoryEventStore()


class TestSQLiteEventStore(EventStoreConformance):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[EventStore]:
        store = SQLiteEventStore(str(tmp_path / "events.sqlite3"))
        store.create_schema()
        try:
            yield store
        finally:
            store.close()


@pytest.mark.postgres
class TestPostgresEventStore(EventStoreConformance):
    """Each test runs in its own schema of the run's database, dropped afterwards."""

    expired_lease = 0.2  # the lease is checked against the database clock

    @pytest.fixture
    def store(self, pg_database: PgDatabase, pg_schema: str) -> Iterator[EventStore]:
        from framework.adapters.postgres import PostgresEventStore

        store = PostgresEventStore(pg_database.settings(pg_schema, pool_size=4))
        store.create_schema()
        try:
            yield store
        finally:
            store.close()


@pytest.mark.postgres
class TestPostgresEventStoreWithoutGroupCommit(TestPostgresEventStore):
    """``EVENTFOLD_GROUP_COMMIT=false``: every append its own ``eventfold_append`` transaction."""

    @pytest.fixture
    def store(self, pg_database: PgDatabase, pg_schema: str) -> Iterator[EventStore]:
        from dataclasses import replace

        from framework.adapters.postgres import PostgresEventStore

        store = PostgresEventStore(replace(pg_database.settings(pg_schema, pool_size=4), group_commit=False))
        assert store.group_commit is None
        store.create_schema()
        try:
            yield store
        finally:
            store.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:  # bound, never listening: connections to it are refused
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_postgres_store_starts_without_the_database_and_fails_fast_on_use() -> None:
    """Nothing connects when the store is built (a role can start before PostgreSQL is up); a call
    while it is unreachable is StoreUnavailable within the connect timeout, not a hang."""
    from framework.adapters.postgres import PostgresEventStore
    from framework.errors import StoreUnavailable
    from framework.settings import PostgresSettings

    settings = PostgresSettings(host="127.0.0.1", port=_closed_port(), dbname="none", user="postgres",
                                password="", pool_size=1, connect_timeout=0.5)
    store = PostgresEventStore(settings)
    try:
        with pytest.raises(StoreUnavailable, match="unavailable"):
            store.head()
        with pytest.raises(StoreUnavailable, match="unavailable"):
            store.create_schema()
    finally:
        store.close()


@pytest.mark.postgres
def test_init_db_replaces_the_first_append_function(pg_database: PgDatabase, pg_schema: str) -> None:
    """A store initialised by an older release had ``eventfold_append`` over eventsourcing's composite
    type; ``create_schema`` leaves only the current one, and appends go through it."""
    from eventsourcing.persistence import StoredEvent

    from framework.adapters.postgres import PostgresEventStore

    store = PostgresEventStore(pg_database.settings(pg_schema))
    try:
        store.create_schema()
        with pg_database.connect() as conn:
            conn.execute(f'CREATE FUNCTION "{pg_schema}".eventfold_append(events "{pg_schema}".stored_event_uuid[],'
                         " a text, b uuid, c uuid, d bigint) RETURNS SETOF bigint LANGUAGE sql AS 'SELECT 1::bigint'")
        store.create_schema()
        with pg_database.connect() as conn:
            count = conn.execute("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                                 " WHERE n.nspname = %s AND p.proname = 'eventfold_append'", (pg_schema,)).fetchone()
        assert count is not None and count[0] == 1
        from uuid import uuid4

        assert store.append([StoredEvent(uuid4(), 1, "T", b"{}")]) == [1]
    finally:
        store.close()
