"""The appends' typed arrays (``framework.adapters.pg_arrays``) reach PostgreSQL as the same values psycopg
sends for plain lists: every element type, NULLs, the empty array, the extremes."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from support.postgres import PgDatabase

from framework.adapters.pg_arrays import ARRAY_CONTEXT, BigintArray, ByteaArray, IntArray, TextArray, UuidArray

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


def test_text_goes_in_the_connections_client_encoding(pg_database: PgDatabase) -> None:
    """As psycopg's own text dumper: a client encoding other than UTF-8 gets its own bytes."""
    words = ["Zoë", "café", None]
    with psycopg.connect(pg_database.url(), context=ARRAY_CONTEXT, client_encoding="latin1") as typed:
        assert typed.info.encoding == "iso8859-1"
        row = typed.execute("SELECT %s::text[], convert_to((%s::text[])[1], 'UTF8')",
                            (TextArray(words), TextArray(words))).fetchone()
    assert row is not None and row[0] == words
    assert bytes(row[1]) == "Zoë".encode()
