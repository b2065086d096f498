"""A read model's ``fillfactor`` becomes its PostgreSQL tables' storage parameter (each new version's),
so that rows updated often are updated in place (HOT); a model without one keeps the default."""

from __future__ import annotations

import psycopg
import pytest
from support.postgres import PgDatabase

from framework.adapters.postgres_views import PostgresViewStore
from framework.readmodel import ReadModel

pytestmark = [pytest.mark.postgres]


class Roomy(ReadModel):
    table = "roomy"
    key = ("name",)
    indexes = (("count",),)
    fillfactor = 40

    name: str
    count: int


class Plain(ReadModel):
    table = "plain"
    key = ("name",)

    name: str


def _options(pg_database: PgDatabase, schema: str, table: str) -> list[str] | None:
    with psycopg.connect(pg_database.url()) as conn:
        row = conn.execute("SELECT c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                           " WHERE n.nspname = %s AND c.relname = %s", (schema, table)).fetchone()
    assert row is not None, table
    return row[0]  # type: ignore[no-any-return]


def test_each_version_s_table_gets_the_model_s_fillfactor(pg_database: PgDatabase, pg_schema: str) -> None:
    views = PostgresViewStore(pg_database.settings(pg_schema))
    views.create_schema()
    try:
        for version in (1, 2):
            views.ensure_tables("storage", version, [Roomy, Plain])
            assert _options(pg_database, pg_schema, f"rm_storage_v{version}_roomy") == ["fillfactor=40"]
            assert _options(pg_database, pg_schema, f"rm_storage_v{version}_plain") is None
        for count in (1, 2):  # inserted, then updated in place
            with views.batch("storage", 1) as batch:
                batch.put(Roomy(name="a", count=count))
        assert views.query("storage", Roomy) == [Roomy(name="a", count=2)]
    finally:
        views.close()
