"""Bulk upserts' packed array parameters (``framework.adapters.pg_arrays``) say what psycopg's own
dumping says: the same values come back from PostgreSQL, the same values are refused, and what a
packed array cannot carry is left to psycopg.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import psycopg
import pytest
from support.postgres import PgDatabase

from framework.adapters.pg_arrays import ARRAY_CONTEXT, PackedArray, packed
from framework.adapters.postgres_views import PostgresViewStore
from framework.errors import RowRejected
from framework.readmodel import ReadModel

pytestmark = [pytest.mark.postgres]

COLUMNS: list[tuple[type, str, list[Any]]] = [
    (int, "bigint", [0, 1, -1, 2**63 - 1, -(2**63), 42]),
    (str, "text", ["", "a", "ü€😀", "x" * 10_000, "tab\tand\nnewline", "back\\slash \"quoted\" {braces}"]),
    (date, "date", [date(1, 1, 1), date(1999, 12, 31), date(2000, 1, 1), date(2026, 12, 7), date(9999, 12, 31)]),
]


@pytest.fixture
def conn(pg_database: PgDatabase) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_database.url(), context=ARRAY_CONTEXT, autocommit=True) as connection:
        yield connection  # the context every pooled connection has (framework.adapters.pg_pool)


@pytest.mark.parametrize(("kind", "cast", "values"), COLUMNS, ids=[c[1] for c in COLUMNS])
def test_packed_values_come_back_as_psycopg_sends_them(conn: psycopg.Connection[Any], kind: type, cast: str,
                                                       values: list[Any]) -> None:
    array = packed(values, kind)
    assert isinstance(array, PackedArray)
    query = f"SELECT %b::{cast}[] = %b::{cast}[], %b::{cast}[]"
    same, back = conn.execute(query, (array, values, array)).fetchone()  # type: ignore[misc]
    assert same and back == values


@pytest.mark.parametrize(("kind", "values"), [(int, [1, 2**63]), (int, [-(2**63) - 1]), (str, ["ok", "\ud800"])])
def test_what_a_packed_array_cannot_carry_is_left_to_psycopg(kind: type, values: list[Any]) -> None:
    assert packed(values, kind) is values


class Wide(ReadModel):
    table = "wide"
    key = ("name",)

    name: str
    count: int
    day: date


def test_a_row_the_database_refuses_is_still_isolated(pg_database: PgDatabase, pg_schema: str) -> None:
    """A NUL in a text column, packed: refused at commit as before (the worker's careful path)."""
    views = PostgresViewStore(pg_database.settings(pg_schema))
    views.create_schema()
    try:
        views.ensure_tables("wide", 1, [Wide])
        with pytest.raises(RowRejected), views.batch("wide", 1) as batch:
            batch.put(Wide(name="nul\x00here", count=1, day=date(2026, 1, 1)))
            batch.put(Wide(name="fine", count=2, day=date(2026, 1, 2)))
        with views.batch("wide", 1) as batch:
            batch.put(Wide(name="fine", count=2**63 - 1, day=date(9999, 12, 31)))
            batch.put(Wide(name="ü", count=-(2**63), day=date(1, 1, 1)))
        with views.read("wide") as rows:
            assert rows.get(Wide, "fine") == Wide(name="fine", count=2**63 - 1, day=date(9999, 12, 31))
            assert rows.get(Wide, "ü") == Wide(name="ü", count=-(2**63), day=date(1, 1, 1))
    finally:
        views.close()


@pytest.mark.parametrize("name", ["lone \ud800 surrogate", "nul\x00here"], ids=["surrogate", "nul"])
def test_a_text_the_database_cannot_hold_is_refused_as_a_row(pg_database: PgDatabase, pg_schema: str,
                                                           name: str) -> None:
    """A string that does not encode (a lone surrogate, which an event read back from its bytes can carry)
    or that PostgreSQL's text refuses (NUL) is a refused row (the worker parks its event), never another
    error that the worker would retry for ever."""
    views = PostgresViewStore(pg_database.settings(pg_schema))
    views.create_schema()
    try:
        views.ensure_tables("wide", 1, [Wide])
        with pytest.raises(RowRejected), views.batch("wide", 1) as batch:
            batch.put(Wide(name=name, count=1, day=date(2026, 1, 1)))
        with pytest.raises(RowRejected), views.batch("wide", 1) as batch:  # alone in its column: not packed
            batch.put(Wide(name="fine", count=2**63, day=date(2026, 1, 1)))
        with views.batch("wide", 1) as batch:
            batch.put(Wide(name="fine", count=1, day=date(2026, 1, 1)))
        assert views.query("wide", Wide) == [Wide(name="fine", count=1, day=date(2026, 1, 1))]
    finally:
        views.close()


def test_a_value_of_a_type_its_column_cannot_take_is_a_refused_row(pg_database: PgDatabase, pg_schema: str) -> None:
    """``model_copy(update=...)`` (how a frozen row is replaced) does not validate: a bool put in a bigint
    column reaches the database, which cannot cast it. A refused row (the worker parks its event), not an
    error the worker would retry for ever."""
    views = PostgresViewStore(pg_database.settings(pg_schema))
    views.create_schema()
    try:
        views.ensure_tables("wide", 1, [Wide])
        base = Wide(name="fine", count=1, day=date(2026, 1, 1))
        with pytest.raises(RowRejected, match="cannot cast"), views.batch("wide", 1) as batch:
            batch.put(base.model_copy(update={"count": True}))
        with views.batch("wide", 1) as batch:
            batch.put(base)
        assert views.query("wide", Wide) == [base]
    finally:
        views.close()
