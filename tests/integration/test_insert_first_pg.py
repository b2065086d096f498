"""Bulk puts are inserted first and upserted only once a model's put meets a stored row
(``framework.adapters.postgres_views``): whichever statement writes them, the tables hold what the
batches put, a key put again is updated, and the rows of the other models in the batch stay.
"""

from __future__ import annotations

from datetime import date

import pytest
from support.postgres import PgDatabase

from framework.adapters.postgres_views import PostgresViewStore
from framework.errors import RowRejected
from framework.readmodel import ReadModel

pytestmark = [pytest.mark.postgres]


class Tally(ReadModel):
    table = "tallies"
    key = ("name",)

    name: str
    count: int


class Entry(ReadModel):
    table = "entries"
    key = ("name", "day")

    name: str
    day: date


def _store(pg_database: PgDatabase, pg_schema: str) -> PostgresViewStore:
    views = PostgresViewStore(pg_database.settings(pg_schema))
    views.create_schema()
    views.ensure_tables("tally", 1, [Tally, Entry])
    return views


def test_a_key_put_again_in_a_later_batch_is_updated(pg_database: PgDatabase, pg_schema: str) -> None:
    views = _store(pg_database, pg_schema)
    try:
        with views.batch("tally", 1) as batch:
            batch.put(Tally(name="a", count=1))
            batch.put(Entry(name="a", day=date(2026, 1, 1)))
        with views.batch("tally", 1) as batch:  # "a" is stored: its tally's insert gives way to an upsert
            batch.put(Tally(name="a", count=2))
            batch.put(Tally(name="b", count=1))
            batch.put(Entry(name="a", day=date(2026, 1, 2)))  # all new: inserted beside the upsert
        staged = views.stage("tally", 1)  # the bulk catch-up's path: staged, then committed
        staged.put(Tally(name="b", count=5))
        staged.put(Entry(name="a", day=date(2026, 1, 1)))  # stored: this model gives way too
        views.commit_staged("tally", 1, staged)
        assert views.query("tally", Tally) == [Tally(name="a", count=2), Tally(name="b", count=5)]
        assert views.query("tally", Entry) == [Entry(name="a", day=date(2026, 1, 1)),
                                               Entry(name="a", day=date(2026, 1, 2))]
    finally:
        views.close()


def test_a_key_stored_by_another_store_is_updated_too(pg_database: PgDatabase, pg_schema: str) -> None:
    """What a store has not seen (another process's rows) is found by the database, not assumed away."""
    first, second = _store(pg_database, pg_schema), PostgresViewStore(pg_database.settings(pg_schema))
    try:
        with first.batch("tally", 1) as batch:
            batch.put(Tally(name="a", count=1))
        with second.batch("tally", 1) as batch:
            batch.put(Tally(name="a", count=7))
            batch.put(Tally(name="c", count=3))
        assert second.query("tally", Tally) == [Tally(name="a", count=7), Tally(name="c", count=3)]
    finally:
        first.close()
        second.close()


def test_a_refused_row_is_refused_whichever_statement_carries_it(pg_database: PgDatabase, pg_schema: str) -> None:
    views = _store(pg_database, pg_schema)
    try:
        with pytest.raises(RowRejected), views.batch("tally", 1) as batch:  # the insert refuses it
            batch.put(Tally(name="nul\x00", count=1))
        with views.batch("tally", 1) as batch:
            batch.put(Tally(name="a", count=1))
        with pytest.raises(RowRejected), views.batch("tally", 1) as batch:  # the upsert after the insert
            batch.put(Tally(name="a", count=2))
            batch.put(Tally(name="nul\x00", count=1))
        assert views.query("tally", Tally) == [Tally(name="a", count=1)]
        assert views.position("tally", 1) == 0
    finally:
        views.close()
