"""Every ViewStore adapter against the read-model port's conformance suite."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import Field
from support.postgres import PgDatabase

from framework.adapters.memory_views import MemoryViewStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.errors import RowRejected
from framework.readmodel import ReadModel
from framework.testing.views_conformance import ViewStoreConformance
from framework.views import RowCaching, ViewStore


class Plain(ReadModel):
    table = "plain"
    key = ("name",)

    name: str
    text: str
    number: int
    data: dict[str, Any] = Field(default_factory=dict)


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

    def test_it_keeps_rows_between_batches(self, views: ViewStore) -> None:
        assert isinstance(views, RowCaching)  # the optional, speed-only port the workers use when present


class TestPostgresRefusals:
    """What PostgreSQL cannot hold is refused as ``RowRejected`` (the worker isolates the event), with
    nothing of the batch written: not a psycopg error that would end the worker's process."""

    @pytest.fixture
    def views(self, pg_database: PgDatabase, pg_schema: str) -> Iterator[PostgresViewStore]:
        store = PostgresViewStore(pg_database.settings(pg_schema))
        store.create_schema()
        store.ensure_tables("refusals", 1, [Plain])
        try:
            yield store
        finally:
            store.close()

    @pytest.mark.parametrize("row", [
        {"name": "nul", "text": "Ann\x00", "number": 1},
        {"name": "big", "text": "x", "number": 2**63},
        {"name": "small", "text": "x", "number": -(2**63) - 1},
        {"name": "json", "text": "x", "number": 1, "data": {"note": "a\x00b"}},
    ], ids=["nul-text", "past-bigint", "below-bigint", "nul-in-jsonb"])
    def test_a_value_postgres_cannot_hold_is_refused_and_nothing_is_written(
        self, views: PostgresViewStore, row: dict[str, object]
    ) -> None:
        with pytest.raises(RowRejected), views.batch("refusals", 1) as batch:
            batch.put(Plain(name="fine", text="fine", number=1))
            batch.put(Plain.model_validate(row))
            batch.advance(7, None, since=0)
        assert views.position("refusals", 1) == 0
        with views.read("refusals") as rows:
            assert rows.select(Plain) == []
        with views.batch("refusals", 1) as batch:  # and the store goes on
            batch.put(Plain(name="fine", text="fine", number=1))
            batch.advance(7, None, since=0)
        assert views.position("refusals", 1) == 7
