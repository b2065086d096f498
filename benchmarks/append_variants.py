#!/usr/bin/env python
"""How fast could one append be? Variants of the event-store append, 1 thread, on PostgreSQL.

Evidence for the write-path suggestions in ``benchmarks/README.md``; nothing here is used by
the framework. Every variant writes to the events table that ``PostgresEventStore`` creates
(the ``eventsourcing`` recorder's table), takes the same EXCLUSIVE table lock and NOTIFY, and
returns the new positions:

- ``store.append``: ``PostgresEventStore.append`` as it is (five waits for the server);
- ``one pipeline batch``: BEGIN, SET LOCAL, LOCK, NOTIFY, INSERT ... RETURNING, COMMIT sent
  together, one Sync, one wait;
- ``plpgsql function``: the same work in one server-side function call, autocommit, one wait;
- the last two again with 16 events (16 aggregates, as 16 concurrent commands would bring) in
  one transaction: group commit.

Same database rules as ``write_path.py``: a fresh ``eventfold_bench_<pid>_*`` database on
``EVENTFOLD_BENCH_DATABASE_URL``, dropped at the end.

    python benchmarks/append_variants.py [--duration 3]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

sys.path.insert(0, str(Path(__file__).resolve().parent))
import write_path as wp

STATE = b'{"v":1,"agg":"Account","meta":{},"data":{"isin":"US0378331005","quantity":1}}'.ljust(380)

FUNCTION = """
CREATE OR REPLACE FUNCTION {schema}.bench_append(events {schema}.{type}[])
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('lock_timeout', '0s', true);
    LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE;
    PERFORM pg_notify('{channel}', '');
    RETURN QUERY INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state)
        SELECT e.originator_id, e.originator_version, e.topic, e.state FROM unnest(events) AS e
        RETURNING notification_id;
END $$
"""


class Streams:
    """``width`` aggregates, each appended to at its next version."""

    def __init__(self, width: int) -> None:
        self._ids = [uuid4() for _ in range(width)]
        self._version = 0

    def next_batch(self) -> list[StoredEvent]:
        self._version += 1
        return [StoredEvent(i, self._version, "SecuritiesCredited", STATE) for i in self._ids]


def recorder_for(settings: Any) -> PostgresApplicationRecorder:
    """``eventsourcing``'s recorder on the table ``PostgresEventStore`` created: its statements and
    composite type for the hand-written variants (close ``recorder.datastore`` after)."""
    datastore = PostgresDatastore(dbname=settings.dbname, host=settings.host, port=settings.port,
                                  user=settings.user, password=settings.password, schema=settings.schema)
    return PostgresApplicationRecorder(datastore)


def variants(store: Any, recorder: PostgresApplicationRecorder) -> dict[str, tuple[int, Callable[[], object]]]:
    datastore = recorder.datastore
    with datastore.get_connection() as conn:
        sql = {
            "insert": recorder.insert_events_statement.as_string(conn),
            "locks": [s.as_string(conn) for s in recorder.lock_table_statements],
            "notify": f'NOTIFY "{recorder.channel_name}"',
        }
        conn.execute(FUNCTION.format(schema='"public"', type=recorder.stored_event_type_name,
                                     table=recorder.events_table_name,
                                     channel=recorder.channel_name))

    def composite(events: list[StoredEvent]) -> list[Any]:
        return [recorder.construct_pg_stored_event(e.originator_id, e.originator_version, e.topic,
                                                   e.state) for e in events]

    def one_batch(streams: Streams) -> Callable[[], object]:
        def op() -> object:
            rows = composite(streams.next_batch())
            with datastore.get_connection() as conn, conn.pipeline() as pipeline:
                cur, ins = conn.cursor(), conn.cursor()
                cur.execute("BEGIN")
                for statement in sql["locks"]:
                    cur.execute(statement, prepare=True)
                cur.execute(sql["notify"], prepare=True)
                ins.execute(sql["insert"], (rows,), prepare=True)
                cur.execute("COMMIT")
                pipeline.sync()
                return [row["notification_id"] for row in ins.fetchall()]
        return op

    def function(streams: Streams) -> Callable[[], object]:
        def op() -> object:
            rows = composite(streams.next_batch())
            with datastore.get_connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT * FROM bench_append(%s)", (rows,), prepare=True)
                return cur.fetchall()
        return op

    def as_is(streams: Streams) -> Callable[[], object]:
        return lambda: store.append(streams.next_batch())

    return {
        "store.append as it is, 1 event": (1, as_is(Streams(1))),
        "one pipeline batch, 1 event": (1, one_batch(Streams(1))),
        "plpgsql function, 1 event": (1, function(Streams(1))),
        "store.append as it is, 16 events/txn": (16, as_is(Streams(16))),
        "one pipeline batch, 16 events/txn": (16, one_batch(Streams(16))),
        "plpgsql function, 16 events/txn": (16, function(Streams(16))),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3, help="best of N rounds (a busy machine)")
    args = parser.parse_args(argv)
    from framework.adapters.postgres import PostgresEventStore
    from framework.settings import PostgresSettings

    admin_url = os.environ.get("EVENTFOLD_BENCH_DATABASE_URL", wp.DEFAULT_URL)
    databases = wp.Databases(admin_url)
    wp.CpuSampler.pg_pids = wp.PostgresPids(admin_url, f"eventfold_bench_{os.getpid()}_")
    try:
        settings = PostgresSettings.from_url(databases.create("append"))
        store = PostgresEventStore(settings)
        store.create_schema()
        recorder = recorder_for(settings)
        try:
            best: dict[str, tuple[int, wp.Result]] = {}
            ops = variants(store, recorder)
            for _ in range(max(1, args.repeat)):  # rounds interleave the variants
                for name, (events, op) in ops.items():
                    result = wp.run_threads(name, [op], 0.5, args.duration)
                    if name not in best or result.rate > best[name][1].rate:
                        best[name] = (events, result)
        finally:
            recorder.datastore.close()
            store.close()
    finally:
        databases.drop_all()
    print(f"best of {args.repeat} rounds of {args.duration:.1f} s; other% = CPU used by other users")
    print(f"{'append variant (1 thread)':<40} {'txns/s':>8} {'events/s':>9} {'mean ms':>8}"
          f" {'p99 ms':>7} {'client CPU ms/txn':>17} {'pg CPU':>6} {'other%':>6}  errors")
    for name, (events, result) in best.items():
        print(f"{name:<40} {result.rate:8,.0f} {result.rate * events:9,.0f} {result.mean_ms():8.2f}"
              f" {result.percentile_ms(99):7.2f} {wp._fmt(result.cpu_ms_per_op('driver'), '.3f'):>17}"
              f" {wp._fmt(result.cpu_ms_per_op('postgres'), '.3f'):>6}"
              f" {wp._fmt(result.other_load(), '.0f'):>6}"
              f"  {wp._errors(result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
