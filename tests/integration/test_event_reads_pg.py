"""The store's reads of stored events (``read_all``, ``read_stream_with_positions``) come back in PostgreSQL's
binary format, built positionally: they must be exactly what a plain text-format read of the same rows gives
(every byte of the state, the aggregate id, its version, the topic, the position)."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from psycopg import sql
from support.postgres import PgDatabase

from framework.adapters.pg_appends import EVENTS_TABLE
from framework.adapters.postgres import PostgresEventStore
from framework.store import Notification, StoredEvent

pytestmark = [pytest.mark.postgres]

STATES = [
    b'{"v":1,"agg":"A","meta":{},"data":{"name":"plain"}}',
    '{"v":1,"agg":"\u00e9t\u00e9","meta":{},"data":{"name":"\u65e5\u672c \U0001f600"}}'.encode(),
    b"",
    bytes(range(256)),  # every byte value: not text, not JSON
    b"\\x00 \\\\ backslashes \x00 and a NUL",
    b"x" * 100_000,  # larger than a page
]


def _text_read(pg_database: PgDatabase, schema: str, where: str, params: tuple[Any, ...]) -> list[Notification]:
    """The same rows read in text format by name, as the store read them before."""
    with pg_database.connect() as conn, conn.cursor(binary=False) as cursor:
        cursor.execute(sql.SQL("SELECT * FROM {}.{} WHERE " + where + " ORDER BY notification_id").format(
            sql.Identifier(schema), sql.Identifier(EVENTS_TABLE)), params)
        names = [column.name for column in cursor.description or ()]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    return [Notification(id=r["notification_id"], originator_id=r["originator_id"],
                         originator_version=r["originator_version"], topic=r["topic"], state=bytes(r["state"]))
            for r in rows]


def test_binary_reads_equal_a_text_read_of_the_same_rows(
        store: PostgresEventStore, pg_database: PgDatabase, pg_schema: str) -> None:
    first, second = uuid4(), uuid4()
    store.append([StoredEvent(first, v + 1, f"eventfold-test:Topic{v}\u00e9", state)
                  for v, state in enumerate(STATES)])
    store.append([StoredEvent(second, 1, "eventfold-test:Other", b"{}")])
    everything = _text_read(pg_database, pg_schema, "notification_id > %s", (0,))
    assert len(everything) == len(STATES) + 1
    assert store.read_all(0, 1000) == everything
    assert store.read_all(2, 3) == everything[2:5]
    for read in (store.read_all(0, 1000), store.read_stream_with_positions(first)):
        assert all(type(n.state) is bytes and type(n.id) is int and type(n.originator_version) is int
                   for n in read)
    assert store.read_stream_with_positions(first) == everything[:len(STATES)]
    assert store.read_stream_with_positions(first, after_version=4) == _text_read(
        pg_database, pg_schema, "originator_id = %s AND originator_version > %s", (first, 4))
    assert store.read_stream_with_positions(second) == everything[-1:]
    assert store.read_all(everything[-1].id, 10) == []


def test_a_notification_is_equal_to_one_built_by_keyword() -> None:
    """The positional construction the reads use names each field as the keyword one does."""
    aggregate = uuid4()
    assert Notification(aggregate, 3, "t", b"s", 7) == Notification(
        id=7, originator_id=aggregate, originator_version=3, topic="t", state=b"s")

