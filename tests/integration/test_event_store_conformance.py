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
