"""The appends' typed arrays (``framework.adapters.pg_arrays``) reach PostgreSQL as the same values psycopg
sends for plain lists: every element type, NULLs, the empty array, the extremes."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from support.postgres import PgDatabase

from framework.adapters.pg_arrays import ARRAY_CONTEXT, BigintArray, ByteaArray, IntArray, TextArray, UuidArray
from framework.adapters.pg_async import AsyncPostgresAppender
from framework.adapters.pg_pool import AsyncPgPool, PgPool
from framework.adapters.postgres import PostgresEventStore
from framework.errors import StoreUnavailable

pytestmark = [pytest.mark.postgres]

CASES: list[tuple[type[list[Any]], str, list[Any]]] = [
    (UuidArray, "uuid[]", [uuid4(), None, UUID(int=0), UUID(int=2**128 - 1)]),
    (BigintArray, "bigint[]", [0, -1, 2**63 - 1, -(2**63), None, 7]),
    (IntArray, "int[]", [1, 2**31 - 1, -(2**31), None]),
    (TextArray, "text[]", ["SecuritiesCredited", "", "Zoë\t東京 \U0001f600", None, "a,b{c}\"d\\e"]),
    (ByteaArray, "bytea[]", [b'{"v":1}', b"", b"\x00\xff\x00", None, bytes(range(256)) * 40]),
]


@pytest.mark.parametrize(("kind", "sql_type", "values"), CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("shape", ["as given", "empty", "one", "no NULLs"])
def test_a_typed_array_arrives_as_a_plain_list_does(pg_database: PgDatabase, kind: type[list[Any]], sql_type: str,
                                                     values: list[Any], shape: str) -> None:
    chosen = {"as given": values, "empty": [], "one": values[:1],
              "no NULLs": [v for v in values if v is not None]}[shape]
    query = f"SELECT %s::{sql_type}, pg_typeof(%s::{sql_type})::text"
    url = pg_database.url()
    with psycopg.connect(url, context=ARRAY_CONTEXT) as typed, psycopg.connect(url) as plain:
        arrived = typed.execute(query, (kind(chosen), kind(chosen))).fetchone()
        expected = plain.execute(query, (list(chosen), list(chosen))).fetchone()
    assert arrived is not None and expected is not None
    assert arrived[0] == expected[0] == chosen
    assert arrived[1] == expected[1]


def test_a_typed_array_on_a_connection_without_the_context_is_a_list(pg_database: PgDatabase) -> None:
    with psycopg.connect(pg_database.url()) as plain:
        row = plain.execute("SELECT %s::bigint[]", (BigintArray([1, None, 3]),)).fetchone()
    assert row is not None and row[0] == [1, None, 3]


def test_the_arrays_are_sent_in_binary(pg_database: PgDatabase) -> None:
    """What makes them cheap: psycopg takes the dumper of the context, not its list dumper."""
    with psycopg.connect(pg_database.url(), context=ARRAY_CONTEXT) as typed:
        dumper = typed.adapters.get_dumper(UuidArray, psycopg.adapt.PyFormat.AUTO)
    assert dumper.__name__ == "UuidArrayDumper"


UNFIT: list[tuple[type[list[Any]], str, list[Any]]] = [
    (BigintArray, "bigint[]", [1, 2**63]),
    (BigintArray, "bigint[]", [-(2**63) - 1]),
    (BigintArray, "bigint[]", [True]),
    (BigintArray, "bigint[]", [1.5]),
    (IntArray, "int[]", [2**31]),
    (IntArray, "int[]", [-(2**31) - 1]),
    (UuidArray, "uuid[]", ["not-a-uuid"]),
    (UuidArray, "uuid[]", [12]),
    (ByteaArray, "bytea[]", [3]),
    (ByteaArray, "bytea[]", ["text"]),
    (TextArray, "text[]", [b"bytes"]),
    (TextArray, "text[]", ["NUL \x00 inside"]),
]


@pytest.mark.parametrize(("kind", "sql_type", "values"), UNFIT, ids=[f"{c[1]}{c[2]!r}" for c in UNFIT])
def test_a_value_its_column_cannot_hold_is_refused_as_postgresql_refuses_it(
        pg_database: PgDatabase, kind: type[list[Any]], sql_type: str, values: list[Any]) -> None:
    """A psycopg ``DataError`` (what the store translates, as PostgreSQL's refusal of a plain list was),
    never a bare ``struct.error``/``ValueError``, and never another value written in its place
    (``bytes(3)`` is three NUL bytes, ``str(b"x")`` is ``"b'x'"``)."""
    with psycopg.connect(pg_database.url(), context=ARRAY_CONTEXT, autocommit=True) as typed:
        with pytest.raises(psycopg.DataError):
            typed.execute(f"SELECT %s::{sql_type}", (kind(values),))
        assert typed.execute("SELECT 1").fetchone() == (1,)  # the connection is still usable


def test_text_with_a_lone_surrogate_is_refused_as_psycopg_refuses_it_in_a_plain_list(pg_database: PgDatabase) -> None:
    url = pg_database.url()
    with psycopg.connect(url, context=ARRAY_CONTEXT) as typed, psycopg.connect(url) as plain:
        for conn, values in ((typed, TextArray(["ok", "\ud800"])), (plain, ["ok", "\ud800"])):
            with pytest.raises(UnicodeEncodeError):
                conn.execute("SELECT %s::text[]", (values,))


@pytest.mark.parametrize("version", [2**63, -(2**63) - 1])
def test_an_append_of_a_version_bigint_cannot_hold_is_the_store_s_refusal_and_writes_nothing(
        pg_database: PgDatabase, pg_schema: str, version: int) -> None:
    """As with plain lists: the driver's refusal translated (``StoreUnavailable``), not a ``struct.error``
    escaping the store, on both write adapters."""
    settings = pg_database.settings(pg_schema, pool_size=1)
    store, appender = PostgresEventStore(settings), AsyncPostgresAppender(settings)
    try:
        store.create_schema()
        aggregate_id = uuid4()
        events = [StoredEvent(originator_id=aggregate_id, originator_version=version, topic="Noted", state=b"{}")]
        with pytest.raises(StoreUnavailable):
            store.append(events)

        async def append_async() -> None:
            try:
                await appender.append(events)
            finally:
                await appender.close()

        with pytest.raises(StoreUnavailable):
            asyncio.run(append_async())
        assert store.read_stream(aggregate_id) == []
    finally:
        store.close()


class _Reading:
    """A type of the application's, with a psycopg dumper it registers globally."""

    def __init__(self, value: int) -> None:
        self.value = value


class _ReadingDumper(psycopg.adapt.Dumper):
    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj: Any) -> bytes:
        return str(obj.value).encode()


def test_the_pools_connections_see_adapters_registered_after_the_framework_was_imported(
        pg_database: PgDatabase, pg_schema: str) -> None:
    """As before the arrays had dumpers of their own: a pool's connection starts from psycopg's global
    adapters as they are when it connects (an application registers its own after importing the
    framework), and still sends the typed arrays in binary."""
    psycopg.adapters.register_dumper(_Reading, _ReadingDumper)
    settings = pg_database.settings(pg_schema, pool_size=1)
    pool = PgPool(settings, name="arrays-test", min_size=1, max_size=1)
    try:
        with pool.connection() as conn:
            row = conn.execute("SELECT %s::bigint AS n, %s::bigint[] AS a", (_Reading(7), BigintArray([1, None]))
                               ).fetchone()
            assert row is not None and (row["n"], row["a"]) == (7, [1, None])
            assert conn.adapters.get_dumper(BigintArray, psycopg.adapt.PyFormat.AUTO).__name__ == "BigintArrayDumper"
    finally:
        pool.close()

    async def through_the_async_pool() -> tuple[Any, str]:
        async_pool = AsyncPgPool(settings, name="arrays-test", min_size=1, max_size=1)
        try:
            async with async_pool.connection() as conn:
                cursor = await conn.execute("SELECT %s::bigint AS n", (_Reading(8),))
                found = await cursor.fetchone()
                dumper = conn.adapters.get_dumper(UuidArray, psycopg.adapt.PyFormat.AUTO).__name__
                return (found["n"] if found else None), dumper
        finally:
            await async_pool.close()

    assert asyncio.run(through_the_async_pool()) == (8, "UuidArrayDumper")


def test_text_goes_in_the_connections_client_encoding(pg_database: PgDatabase) -> None:
    """As psycopg's own text dumper: a client encoding other than UTF-8 gets its own bytes."""
    words = ["Zoë", "café", None]
    with psycopg.connect(pg_database.url(), context=ARRAY_CONTEXT, client_encoding="latin1") as typed:
        assert typed.info.encoding == "iso8859-1"
        row = typed.execute("SELECT %s::text[], convert_to((%s::text[])[1], 'UTF8')",
                            (TextArray(words), TextArray(words))).fetchone()
    assert row is not None and row[0] == words
    assert bytes(row[1]) == "Zoë".encode()


def test_bytes_are_refused_as_text_in_another_client_encoding_too(pg_database: PgDatabase) -> None:
    with psycopg.connect(pg_database.url(), context=ARRAY_CONTEXT, client_encoding="latin1") as typed:
        with pytest.raises(psycopg.DataError):
            typed.execute("SELECT %s::text[]", (TextArray([b"bytes"]),))
        with pytest.raises(UnicodeEncodeError):  # a character latin1 lacks, as psycopg's text dumper says
            typed.execute("SELECT %s::text[]", (TextArray(["東京"]),))


def test_text_goes_as_utf8_to_a_sql_ascii_client_as_psycopg_sends_it(pg_database: PgDatabase) -> None:
    """SQL_ASCII (``info.encoding`` "ascii") means no encoding at all: psycopg's text dumper sends UTF-8
    then, where encoding to ascii would refuse every non-ASCII character."""
    url = pg_database.url()
    query = "SELECT convert_to((%s::text[])[1], 'UTF8')"
    with psycopg.connect(url, context=ARRAY_CONTEXT, client_encoding="SQL_ASCII") as typed, \
            psycopg.connect(url, client_encoding="SQL_ASCII") as plain:
        assert typed.info.encoding == "ascii"
        arrived = typed.execute(query, (TextArray(["Zoë 東京"]),)).fetchone()
        expected = plain.execute(query, (["Zoë 東京"],)).fetchone()
    assert arrived is not None and expected is not None
    assert bytes(arrived[0]) == bytes(expected[0]) == "Zoë 東京".encode()
