"""The query API's response cache over real HTTP on PostgreSQL: a kept answer is served only while
the read models it came from have not moved, and never to a request asking for a later position."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from graphql_helpers import (
    APPLE,
    CountingViewStore,
    GraphQLClient,
    LiveProjections,
    ReadSide,
    read_model_statements,
)
from support.http import ServerThread
from support.postgres import PgDatabase

from example_app.commands import CreditHoldings, OpenAccount, RegisterSecurity
from framework.adapters.postgres import PostgresEventStore
from framework.graphql import QueryApiOptions, create_query_app
from projections.graphql import build_graphql

pytestmark = pytest.mark.postgres

HOLDINGS = '{ holdings(accountNumber: "RC-1") { isin quantity } }'


@dataclass
class Cached:
    client: GraphQLClient
    views: CountingViewStore
    side: ReadSide


@pytest.fixture
def cached(pg_database: PgDatabase) -> Iterator[Cached]:
    with pg_database.fresh_schema("rcache") as schema:
        store = PostgresEventStore(pg_database.settings(schema, pool_size=2))
        store.create_schema()
        views = CountingViewStore(pg_database.settings(schema, pool_size=4))
        views.create_schema()
        side = ReadSide(store, views)
        side.execute([RegisterSecurity(isin=APPLE, name="Apple Inc.", currency="USD"),
                      OpenAccount(account_number="RC-1", holder_name="Cache"),
                      CreditHoldings(account_number="RC-1", isin=APPLE, quantity=10)], key_prefix="rc-seed")
        side.settle()
        app = create_query_app(build_graphql(), views, store, options=QueryApiOptions(consistency_timeout=0.3))
        try:
            with ServerThread(app) as server, GraphQLClient(server.base_url) as client:
                yield Cached(client, views, side)
        finally:
            views.close()
            store.close()


def _rows_read(cached: Cached, query: str, **kwargs: object) -> tuple[dict[str, object], int]:
    with cached.views.counting() as statements:
        body = cached.client.execute(query, **kwargs)  # type: ignore[arg-type]
    return body, len(read_model_statements(statements))


def test_a_repeated_query_is_answered_without_reading_rows(cached: Cached) -> None:
    first, read = _rows_read(cached, HOLDINGS)
    assert first == {"data": {"holdings": [{"isin": APPLE, "quantity": 10}]}} and read == 1
    again, read = _rows_read(cached, HOLDINGS)
    assert again == first and read == 0, "the second answer is the kept one"
    other, read = _rows_read(cached, '{ holdings(accountNumber: "RC-2") { isin quantity } }')
    assert other == {"data": {"holdings": []}} and read == 1, "another document is another entry"


def test_write_project_query_sees_the_new_data(cached: Cached) -> None:
    cached.client.data(HOLDINGS)
    cached.client.data(HOLDINGS)  # kept
    for total in (15, 22, 30):
        previous = total - {15: 10, 22: 15, 30: 22}[total]
        cached.side.execute([CreditHoldings(account_number="RC-1", isin=APPLE, quantity=previous)],
                            key_prefix=f"rc-{total}")
        cached.side.settle()
        body, read = _rows_read(cached, HOLDINGS)
        assert body == {"data": {"holdings": [{"isin": APPLE, "quantity": total}]}}, "never the stale answer"
        assert read == 1, "the projection moved: the answer is computed again"
        assert _rows_read(cached, HOLDINGS)[1] == 0, "and kept again"


def test_a_request_for_a_later_position_never_gets_the_kept_answer(cached: Cached) -> None:
    head = cached.side.store.head()
    cached.client.data(HOLDINGS)  # kept (an answer computed after a read-your-writes wait is not)
    kept, read = _rows_read(cached, HOLDINGS, position=head)
    assert read == 0 and kept["extensions"]["consistency"] == {
        "requested": head, "reached": True, "positions": {"holdings": head}}
    later, read = _rows_read(cached, HOLDINGS, position=head + 1)
    assert read == 1, "a position past the kept one is never answered from the cache"
    assert later["extensions"]["consistency"]["reached"] is False


def test_answers_are_kept_per_caller_and_variables(cached: Cached) -> None:
    query = "query Q($account: String!) { holdings(accountNumber: $account) { quantity } }"
    assert _rows_read(cached, query, variables={"account": "RC-1"})[1] == 1
    assert _rows_read(cached, query, variables={"account": "RC-1"})[1] == 0
    assert _rows_read(cached, query, variables={"account": "RC-9"})[1] == 1, "other variables, other entry"


def test_answers_with_errors_or_undeclared_fields_are_not_kept(cached: Cached) -> None:
    mixed = '{ holdings(accountNumber: "RC-1") { quantity } projections { name } }'
    for _ in range(2):
        body, read = _rows_read(cached, mixed)
        assert "errors" not in body and read == 1, "`projections` declares no read model: never kept"
    bad = '{ cards(first: 1000) { nodes { actionId } } }'
    for _ in range(2):
        assert cached.client.execute(bad)["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert _rows_read(cached, '{ cards(first: 2) { nodes { actionId } } }')[1] == 1
    assert _rows_read(cached, '{ cards(first: 2) { nodes { actionId } } }')[1] == 0


def test_concurrent_readers_during_writes_never_see_the_past(cached: Cached) -> None:
    """Writes projected live while readers ask again and again: no reader's answers go backwards,
    an answer that says it reached a position holds every credit up to it, and the last write shows."""
    written: list[tuple[int, int]] = []  # (position, total after it), in order
    lock = threading.Lock()
    done = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        with GraphQLClient(cached.client.url.removesuffix("/graphql")) as client:
            last, asked = 0, 0
            while not done.is_set():
                with lock:
                    known = written[-1] if written else None
                asked += 1  # every other request without a position: those answers are the ones kept
                body = client.execute(HOLDINGS, position=known[0] if known and asked % 2 else None)
                quantity = body["data"]["holdings"][0]["quantity"]
                if quantity < last:
                    problems.append(f"went back from {last} to {quantity}")
                reached = (body.get("extensions") or {}).get("consistency", {}).get("reached")
                if known and asked % 2 and reached and quantity < known[1]:
                    problems.append(f"reached {known[0]} but holds {quantity} < {known[1]}")
                last = quantity

    with LiveProjections(cached.side), concurrent.futures.ThreadPoolExecutor(4) as pool:
        readers = [pool.submit(reader) for _ in range(4)]
        total = 10
        for index in range(25):
            total += 1
            position = cached.side.execute([CreditHoldings(account_number="RC-1", isin=APPLE, quantity=1)],
                                           key_prefix=f"rc-live-{index}")
            with lock:
                written.append((position, total))
        for _ in range(200):  # bounded: the live projection catches up (each try waits up to 0.3 s)
            final = cached.client.execute(HOLDINGS, position=written[-1][0])
            if final["extensions"]["consistency"]["reached"]:
                break
        done.set()
        for future in readers:
            future.result()
    assert problems == []
    assert final["extensions"]["consistency"]["reached"] is True
    assert final["data"] == {"holdings": [{"isin": APPLE, "quantity": total}]}
    assert cached.client.data(HOLDINGS) == final["data"], "and the answer kept after it is the new one"


def test_a_partitioned_read_model_is_never_served_stale_while_its_lowest_partition_stands_still(
        pg_database: PgDatabase) -> None:
    """A partitioned projection's position is its lowest partition's: a commit of another partition
    leaves it where it was, yet changes rows. A kept answer must not survive that commit."""
    from example_app.app import build_router
    from framework.bus import CommandBus, CommandContext
    from framework.partitions import Partition, partition_of
    from framework.worker import ProjectionWorker
    from projections.holdings import HoldingsProjector

    with pg_database.fresh_schema("rcpart") as schema:
        store = PostgresEventStore(pg_database.settings(schema, pool_size=2))
        store.create_schema()
        views = CountingViewStore(pg_database.settings(schema, pool_size=4))
        views.create_schema()
        try:
            bus = CommandBus(build_router(), store)
            count = HoldingsProjector.partitions
            workers = [ProjectionWorker(HoldingsProjector(), views, store, partition=Partition(i, count))
                       for i in range(count)]
            for command in (RegisterSecurity(isin=APPLE, name="Apple Inc.", currency="USD"),
                            OpenAccount(account_number="RC-1", holder_name="Cache"),
                            CreditHoldings(account_number="RC-1", isin=APPLE, quantity=10)):
                outcome = bus.execute(command, CommandContext())
            mine = partition_of(str(outcome.result.aggregate_id), count)
            for worker in workers:
                worker.catch_up()
            app = create_query_app(build_graphql(), views, store, options=QueryApiOptions())
            with ServerThread(app) as server, GraphQLClient(server.base_url) as client:
                cached = Cached(client, views, None)  # type: ignore[arg-type]
                assert _rows_read(cached, HOLDINGS) == ({"data": {"holdings": [{"isin": APPLE, "quantity": 10}]}}, 1)
                assert _rows_read(cached, HOLDINGS)[1] == 0, "kept"
                lowest = views.active_position("holdings")
                bus.execute(CreditHoldings(account_number="RC-1", isin=APPLE, quantity=5), CommandContext())
                workers[mine].catch_up()  # only RC-1's partition moves; the others stand at `lowest`
                assert views.active_position("holdings") == lowest, "the projection's position stood still"
                body, read = _rows_read(cached, HOLDINGS)
                assert body == {"data": {"holdings": [{"isin": APPLE, "quantity": 15}]}}, "never the stale answer"
                assert read == 1
        finally:
            views.close()
            store.close()
