"""/metrics and /readyz over real HTTP (uvicorn) on PostgreSQL, parsed with the Prometheus client's parser."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, replace

import httpx
import pytest
from http_helpers import new_code
from prometheus_client.parser import text_string_to_metric_families
from support.http import ServerThread
from support.postgres import PgDatabase, PostgresServer
from support.tcp_proxy import TcpProxy

from example_app.app import build_router
from framework.adapters.memory_bus import MemoryBus, MemoryPublisher
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.bus import CommandBus
from framework.graphql import QueryApiOptions, create_query_app
from framework.http.write_api import create_write_app
from framework.metrics import Metrics
from framework.runner import run_relay
from framework.settings import PostgresSettings
from framework.worker import ProjectionWorker
from projections import build_projectors
from projections.graphql import build_graphql

pytestmark = pytest.mark.postgres


def scrape(client: httpx.Client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class Side:
    settings: PostgresSettings
    store: PostgresEventStore
    views: PostgresViewStore


@pytest.fixture(scope="module")
def side(pg_database: PgDatabase) -> Iterator[Side]:
    with pg_database.fresh_schema("metrics") as schema:
        settings = pg_database.settings(schema, pool_size=4)
        store, views = PostgresEventStore(settings), PostgresViewStore(settings)
        store.create_schema()
        views.create_schema()
        try:
            yield Side(settings, store, views)
        finally:
            views.close()
            store.close()


@pytest.fixture(scope="module")
def write_client(side: Side) -> Iterator[httpx.Client]:
    bus = CommandBus(build_router(), side.store)
    with ServerThread(create_write_app(bus)) as server, httpx.Client(base_url=server.base_url, timeout=30) as c:
        yield c


def open_account(client: httpx.Client, number: str) -> httpx.Response:
    return client.post("/commands/OpenAccount", json={"account_number": number, "holder_name": "Ada"})


def test_commands_and_appended_events_are_counted_exactly(write_client: httpx.Client, side: Side) -> None:
    before, head = scrape(write_client), side.store.head()
    first, second = new_code("M"), new_code("M")
    assert open_account(write_client, first).status_code == 200
    assert open_account(write_client, second).status_code == 200
    assert open_account(write_client, first).status_code == 409  # already exists: rejected
    assert write_client.post("/commands/LaunchRocket", json={}).status_code == 404  # never reaches the bus
    after = scrape(write_client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("eventfold_commands_total", command="OpenAccount", outcome="ok") == 2
    assert moved("eventfold_commands_total", command="OpenAccount", outcome="already_exists") == 1
    assert moved("eventfold_command_duration_seconds_count", command="OpenAccount") == 3
    assert moved("eventfold_command_duration_seconds_bucket", command="OpenAccount", le="+Inf") == 3
    assert moved("eventfold_command_duration_seconds_sum", command="OpenAccount") > 0
    assert moved("eventfold_events_appended_total") == side.store.head() - head == 2
    assert value(after, "eventfold_commands_total", command="LaunchRocket", outcome="ok") == 0


def test_relay_and_projection_metrics_after_a_catch_up(write_client: httpx.Client, side: Side) -> None:
    for _ in range(3):
        assert open_account(write_client, new_code("R")).status_code == 200
    metrics = Metrics()
    metrics.watch_relay(side.store, "metrics-relay")
    metrics.watch_projections(side.store, side.views)
    app = create_query_app(build_graphql(), side.views, side.store, metrics=metrics)
    with ServerThread(app) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        head = side.store.head()
        stored = len(side.store.read_all(0, head))
        before = scrape(client)
        assert value(before, "eventfold_relay_lag_events", relay="metrics-relay") == head
        asyncio.run(_relay_until(side.store, head))
        bus = CommandBus(build_router(), side.store, observer=metrics)
        workers = [ProjectionWorker(p, side.views, side.store, bus, observer=metrics) for p in build_projectors()]
        for worker in workers:
            worker.catch_up(until=head)
        after = scrape(client)

    assert value(after, "eventfold_relay_position", relay="metrics-relay") == head
    assert value(after, "eventfold_relay_lag_events", relay="metrics-relay") == 0
    for worker in workers:
        assert value(after, "eventfold_projection_position", projection=worker.name) == head
        assert value(after, "eventfold_projection_lag_events", projection=worker.name) == 0
        assert value(after, "eventfold_projection_lag_seconds", projection=worker.name) == 0
        assert value(after, "eventfold_projection_dead_letters", projection=worker.name) == 0
        # every stored event went through exactly one committed batch (positions can have gaps)
        assert value(after, "eventfold_projection_batch_size_sum", projection=worker.name) == stored
        assert value(after, "eventfold_projection_batch_size_count", projection=worker.name) >= 1
        assert value(after, "eventfold_projection_batch_duration_seconds_count", projection=worker.name) >= 1


async def _relay_until(store: PostgresEventStore, head: int) -> None:
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(store, MemoryPublisher(MemoryBus()), stop, name="metrics-relay",
                                          poll_seconds=0.05))
    for _ in range(600):
        if await asyncio.to_thread(store.relay_checkpoint, "metrics-relay") >= head:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await relay


def test_graphql_requests_are_counted_by_operation_and_outcome(side: Side) -> None:
    app = create_query_app(build_graphql(), side.views, side.store)
    with ServerThread(app) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
        before = scrape(client)
        query = 'query Holdings { holdings(accountNumber: "ACC-1") { isin quantity } }'
        assert client.post("/graphql", json={"query": query}).status_code == 200
        assert client.post("/graphql", json={"query": query, "operationName": "Holdings"}).status_code == 200
        client.post("/graphql", json={"query": "{ holdings(accountNumber: "})
        client.post("/graphql", json={"query": "{ noSuchField }"})
        after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("eventfold_graphql_requests_total", operation="Holdings", outcome="ok") == 2
    assert moved("eventfold_graphql_requests_total", operation="anonymous", outcome="GRAPHQL_PARSE_FAILED") == 1
    assert moved("eventfold_graphql_requests_total", operation="anonymous",
                 outcome="GRAPHQL_VALIDATION_FAILED") == 1
    assert moved("eventfold_graphql_request_duration_seconds_count", operation="Holdings") == 2


def test_readyz_is_200_when_the_stores_answer(write_client: httpx.Client, side: Side) -> None:
    ready = write_client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "checks": {"event_store": "ok"}}
    for worker in [ProjectionWorker(p, side.views, side.store) for p in build_projectors()]:
        worker.catch_up()
    with ServerThread(create_query_app(build_graphql(), side.views, side.store)) as server:
        response = httpx.get(f"{server.base_url}/readyz", timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"read_models": "ok", "event_store": "ok", "projections": "ok"}


def test_readyz_is_503_when_a_projection_lags_beyond_the_setting(write_client: httpx.Client, side: Side) -> None:
    assert open_account(write_client, new_code("LAG")).status_code == 200  # not applied by anyone
    options = QueryApiOptions(ready_max_lag_seconds=0.0)
    with ServerThread(create_query_app(build_graphql(), side.views, side.store, options=options)) as server:
        response = httpx.get(f"{server.base_url}/readyz", timeout=30)
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["failed"] == ["projections"]
    assert "lags" in body["checks"]["projections"]


def test_readyz_is_503_while_postgres_is_cut_and_200_again_after(
    pg_server: PostgresServer, side: Side
) -> None:
    if pg_server.host.startswith("/"):
        pytest.skip("the proxy needs PostgreSQL on TCP, not a unix socket")
    with TcpProxy(pg_server.host, pg_server.port) as proxy:
        settings = replace(side.settings, host=proxy.host, port=proxy.port, connect_timeout=1.0, pool_size=2)
        store, views = PostgresEventStore(settings), PostgresViewStore(settings)
        write = ServerThread(create_write_app(CommandBus(build_router(), store)))
        query = ServerThread(create_query_app(build_graphql(), views, store))
        try:
            write.start()
            query.start()
            assert httpx.get(f"{write.base_url}/readyz", timeout=30).status_code == 200
            proxy.cut()
            down = httpx.get(f"{write.base_url}/readyz", timeout=30)
            assert down.status_code == 503, down.text
            assert down.json()["failed"] == ["event_store"]
            assert down.json()["status"] == "unavailable"
            assert httpx.get(f"{write.base_url}/healthz", timeout=30).status_code == 200  # alive all the same
            down = httpx.get(f"{query.base_url}/readyz", timeout=30)
            assert down.status_code == 503, down.text
            assert set(down.json()["failed"]) == {"read_models", "event_store", "projections"}
            assert httpx.get(f"{query.base_url}/metrics", timeout=30).status_code == 200  # scrapes still answer
            proxy.restore()
            assert _eventually_ready(write.base_url)
        finally:
            query.stop()
            write.stop()
            views.close()
            store.close()


def _eventually_ready(base_url: str) -> bool:
    for _ in range(100):  # the pool reconnects in the background; bounded by attempts
        if httpx.get(f"{base_url}/readyz", timeout=30).status_code == 200:
            return True
        asyncio.run(asyncio.sleep(0.1))
    return False
