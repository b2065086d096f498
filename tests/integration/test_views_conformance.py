"""Every ViewStore adapter against the read-model port's conformance suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.postgres import PgDatabase

from framework.adapters.memory_views import MemoryViewStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.testing.views_conformance import ViewStoreConformance
from framework.views import ViewStore


class TestMemoryViewStore(ViewStoreConformance):
    @pytest.fixture
    def views(self) -> ViewStore:
        return MemoryViewStore()


class TestPostgresViewStore(ViewStoreConformance):
    @pytest.fixture
    def views(self, pg_database: PgDatabase, pg_schema: str) -> Iterator[ViewStore]:
        store = PostgresViewStore(pg_database.settings(pg_schema))
        store.create_schema()
        try:
            yield store
        finally:
            store.close()
