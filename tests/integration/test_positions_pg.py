"""Position signals on PostgreSQL (LISTEN/NOTIFY from the projection's commit), and read-your-writes
over real HTTP on them: many waiting requests cost a bounded number of SQL statements (counted on the
query API's own connections), a position past the head is answered at once, the waits complete when
the worker commits, and the listener comes back after PostgreSQL restarts."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from graphql_helpers import CountingViewStore, ReadSide
from support.http import ServerThread
from support.postgres import PgDatabase, PostgresServer

from example_app.commands import RegisterSecurity
from framework.adapters.pg_positions import PostgresPositionSignals
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore, position_channel
from framework.graphql import QueryApiOptions, create_query_app
from framework.positions import PositionSignals, PositionWatch
from framework.testing.positions_conformance import PositionSignalsConformance, Tick, changes, commit, listen_while
from framework.views import ViewStore
from projections.graphql import build_graphql

pytestmark = pytest.mark.postgres


class TestPostgresPositionSignals(PositionSignalsConformance):
    @pytest.fixture
    def views(self, pg_database: PgDatabase, pg_schema: str) -> Iterator[ViewStore]:
        store = PostgresViewStore(pg_database.settings(pg_schema))
        store.create_schema()
        try:
            yield store
        finally:
            store.close()

    @pytest.fixture
    def signals(self, pg_database: PgDatabase, pg_schema: str) -> PositionSignals:
        return PostgresPositionSignals(pg_database.settings(pg_schema), check_seconds=0.1)


def test_stores_in_other_schemas_are_not_heard(pg_database: PgDatabase) -> None:
    with pg_database.fresh_schema("mine") as mine, pg_database.fresh_schema("theirs") as theirs:
        assert position_channel(mine) != position_channel(theirs)
        ours, others = (PostgresViewStore(pg_database.settings(s)) for s in (mine, theirs))
        try:
            for views in (ours, others):
                views.create_schema()
                views.ensure_tables("ticks", 1, [Tick])

            def act() -> None:
                commit(others, "ticks", 50)
                commit(ours, "ticks", 3)

            heard = listen_while(PostgresPositionSignals(pg_database.settings(mine), check_seconds=0.1), act,
                                 lambda h: bool(changes(h, "ticks")))
            assert changes(heard, "ticks")[0].position == 3  # theirs (committed first) never arrived
        finally:
            ours.close()
            others.close()


def test_the_listener_comes_back_after_postgresql_restarts(private_postgres: PostgresServer) -> None:
    settings = private_postgres.settings("postgres", pool_size=2, connect_timeout=30.0)
    views = PostgresViewStore(settings)
    views.create_schema()
    views.ensure_tables("ticks", 1, [Tick])
    cluster = private_postgres.cluster
    assert cluster is not None

    reconnected = threading.Event()

    def enough(heard: list[Any]) -> bool:
        if heard.count(None) >= 2:
            reconnected.set()  # listening again, and saying changes may have been missed meanwhile
        return bool(changes(heard, "ticks"))

    def restart_then_commit() -> None:
        cluster.pause()
        cluster.resume()  # returns once PostgreSQL accepts connections again
        assert reconnected.wait(30), "the listener did not reconnect"
        commit(views, "ticks", 7)

    try:
        heard = listen_while(PostgresPositionSignals(settings, check_seconds=0.1), restart_then_commit, enough,
                             timeout=60)
    finally:
        views.close()
    assert [c.position for c in changes(heard, "ticks")] == [7]


# --- read-your-writes over HTTP ------------------------------------------------------------------


class CountingHead:
    def __init__(self, store: PostgresEventStore) -> None:
        self.store, self.calls = store, 0

    def __call__(self) -> int:
        self.calls += 1
        return self.store.head()


class Served:
    def __init__(self, pg_database: PgDatabase, schema: str, *, max_waiting: int) -> None:
        self.store = PostgresEventStore(pg_database.settings(schema, pool_size=3))
        self.store.create_schema()
        self.writer_views = PostgresViewStore(pg_database.settings(schema, pool_size=3))
        self.writer_views.create_schema()
        self.side = ReadSide(self.store, self.writer_views)
        for worker in self.side.workers:
            self.writer_views.ensure_tables(worker.name, 1, worker.projector.read_models)
        self.views = CountingViewStore(pg_database.settings(schema, pool_size=4))
        self.head = CountingHead(self.store)
        self.watch = PositionWatch(PostgresPositionSignals(pg_database.settings(schema)), self.views, self.head,
                                   max_waiting=max_waiting, recheck_seconds=3600)  # no timed re-read: counts
        self.app = create_query_app(build_graphql(), self.views, self.store, watch=self.watch,
                                    options=QueryApiOptions(consistency_timeout=30))

    def close(self) -> None:
        self.views.close()
        self.writer_views.close()
        self.store.close()


@pytest.fixture
def served(pg_database: PgDatabase) -> Iterator[tuple[Served, str]]:
    with pg_database.fresh_schema("ryw") as schema:
        side = Served(pg_database, schema, max_waiting=30)
        try:
            with ServerThread(side.app) as server:
                yield side, server.base_url
        finally:
            side.close()


QUERY = {"query": '{ security(isin: "US0378331005") { name } }'}


def post(url: str, position: int, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{url}/graphql", json=QUERY, headers={"Eventfold-Position": str(position)}, timeout=60,
                      **kwargs)


def wait_for(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s"
        time.sleep(0.01)


def test_many_waiting_requests_cost_a_bounded_number_of_statements(served: tuple[Served, str]) -> None:
    side, url = served
    post(url, 0)  # the watch has started and read the positions once
    position = side.side.execute([RegisterSecurity(isin="US0378331005", name="Apple", currency="USD")],
                                 key_prefix="ryw")
    with side.views.counting() as statements, concurrent.futures.ThreadPoolExecutor(31) as pool:
        head_reads = side.head.calls
        waiting = [pool.submit(post, url, position) for _ in range(30)]
        wait_for(lambda: side.watch.waiting == 30, "30 waiting requests")
        refused = post(url, position)  # one more than the bound
        during_wait = list(statements)
        side.side.catch_up()  # the worker commits: NOTIFY wakes them
        answers = [w.result().json() for w in waiting]
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["errors"][0]["extensions"]["code"] == "TOO_MANY_WAITING"
    for answer in answers:
        assert answer["data"] == {"security": {"name": "Apple"}}
        assert answer["extensions"]["consistency"]["reached"] is True
    # 30 requests waited: no statement per request (the timed safety re-read is off here, so that a slow
    # machine does not add re-reads), one read of the head; the queries themselves ran once woken.
    assert len(during_wait) <= 4, during_wait
    assert side.head.calls - head_reads <= 1
    # Once woken, each query reads its rows (30); reads of versions and positions are shared by the
    # requests that arrive together, so a slow machine adds a few, never one per request.
    assert len(statements) - len(during_wait) <= 30 + 10, statements


def test_a_position_past_the_head_is_answered_at_once(served: tuple[Served, str]) -> None:
    side, url = served
    head = side.side.execute([RegisterSecurity(isin="US0378331005", name="Apple", currency="USD")],
                             key_prefix="far")
    body = post(url, head + 10_000).json()
    assert body["extensions"]["consistency"] == {"requested": head + 10_000, "reached": False,
                                                 "positions": {"cards": 0}, "head": head}
