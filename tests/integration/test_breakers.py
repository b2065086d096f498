"""Circuit breakers over real connections: the query API in front of its read-model database (cut with
a TCP proxy), and the relay in front of NATS JetStream (a private nats-server stopped and started)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from http_helpers import new_code
from prometheus_client.parser import text_string_to_metric_families
from streaming_helpers import assert_stream_matches_store
from support.http import ServerThread
from support.nats import ThrowawayNats, settings_for
from support.postgres import PgDatabase, PostgresServer
from support.tcp_proxy import TcpProxy

from example_app.app import build_router
from framework.adapters.nats import JetStreamPublisher, connect
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.breaker import BreakingEventStore, BreakingPublisher, CircuitBreaker, bus_breaker
from framework.bus import CommandBus
from framework.graphql import create_query_app
from framework.http.write_api import WriteApiOptions, create_write_app
from framework.metrics import Metrics
from framework.runner import run_relay
from framework.settings import PostgresSettings
from projections import build_projectors
from projections.graphql import build_graphql

HOLDINGS = '{ holdings(accountNumber: "ACC-BREAKER") { isin quantity } }'


@pytest.fixture
def read_models(pg_server: PostgresServer, pg_database: PgDatabase) -> Iterator[PostgresSettings]:
    """A schema with the example's read-model tables."""
    if pg_server.host.startswith("/"):
        pytest.skip("the proxy needs PostgreSQL on TCP, not a unix socket")
    with pg_database.fresh_schema("breaker") as schema:
        settings = pg_database.settings(schema, pool_size=2)
        views = PostgresViewStore(settings)
        views.create_schema()
        for projector in build_projectors():
            views.ensure_tables(projector.name, views.active_version(projector.name), projector.read_models)
        views.close()
        yield settings


def test_the_query_api_answers_503_at_once_while_its_database_is_down_and_recovers(
    read_models: PostgresSettings,
) -> None:
    with TcpProxy(read_models.host, read_models.port) as proxy:
        views = PostgresViewStore(replace(read_models, host=proxy.host, port=proxy.port, connect_timeout=1.0))
        breaker = CircuitBreaker(threshold=2, cool_down=2.0, dependency="read models")
        metrics = Metrics(process=False)
        metrics.watch_breakers([breaker])
        app = create_query_app(build_graphql(), views, None, metrics=metrics, breaker=breaker)
        try:
            with ServerThread(app) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
                _open_then_close(client, proxy, breaker)
        finally:
            views.close()


def _open_then_close(client: httpx.Client, proxy: TcpProxy, breaker: CircuitBreaker) -> None:
    answered = client.post("/graphql", json={"query": HOLDINGS})
    assert answered.status_code == 200 and answered.json() == {"data": {"holdings": []}}, answered.text

    proxy.cut()
    messages = [_unavailable(client.post("/graphql", json={"query": HOLDINGS})) for _ in range(4)]
    assert breaker.state == "open", messages
    refused = breaker.refused_total
    fast = _unavailable(client.post("/graphql", json={"query": HOLDINGS}))
    assert "retry in" in fast  # answered before any read: PostgreSQL was not tried
    assert breaker.refused_total == refused + 1
    samples = _scrape(client)
    assert samples[("eventfold_circuit_breaker_state", ("dependency", "read_models"), ("state", "open"))] == 1
    assert samples[("eventfold_circuit_breaker_opened_total", ("dependency", "read_models"))] == 1
    assert samples[("eventfold_circuit_breaker_refused_total", ("dependency", "read_models"))] >= 1

    proxy.restore()
    for _ in range(100):  # bounded by attempts: one probe per cool-down until PostgreSQL answers
        response = client.post("/graphql", json={"query": HOLDINGS})
        if response.status_code == 200:
            break
        _unavailable(response)
        time.sleep(0.2)
    assert response.json() == {"data": {"holdings": []}}, response.text
    assert breaker.state == "closed"


def test_both_apis_breakers_open_when_postgres_is_stopped_and_close_when_it_is_back(
    private_postgres: PostgresServer,
) -> None:
    """A real outage: the cluster is shut down, then started again; the same processes recover."""
    cluster = private_postgres.cluster
    assert cluster is not None
    settings = private_postgres.settings("postgres", connect_timeout=1.0)
    # Both breakers' time stands still during the outage: on a loaded machine the calls that open them can take
    # longer than the 0.5 s cool-down, and the check below would see them already half-open.
    clock = FreezableClock()
    store = BreakingEventStore(PostgresEventStore(settings), CircuitBreaker(threshold=2, cool_down=0.5, clock=clock))
    store.create_schema()
    views = PostgresViewStore(settings)
    views.create_schema()
    for projector in build_projectors():
        views.ensure_tables(projector.name, views.active_version(projector.name), projector.read_models)
    read_breaker = CircuitBreaker(threshold=2, cool_down=0.5, dependency="read models", clock=clock)
    write_app = create_write_app(CommandBus(build_router(), store), WriteApiOptions(retry_after_seconds=1))
    query_app = create_query_app(build_graphql(), views, None, breaker=read_breaker)
    try:
        with ServerThread(write_app) as writes, ServerThread(query_app) as reads:
            assert _open_account(writes.base_url).status_code == 200
            cluster.pause()
            clock.freeze()
            for _ in range(3):
                assert _open_account(writes.base_url).status_code == 503
                _unavailable(httpx.post(f"{reads.base_url}/graphql", json={"query": HOLDINGS}, timeout=30))
            assert (store.breaker.state, read_breaker.state) == ("open", "open")
            clock.thaw()
            cluster.resume()
            _until_answered(lambda: _open_account(writes.base_url))
            _until_answered(lambda: httpx.post(f"{reads.base_url}/graphql", json={"query": HOLDINGS}, timeout=30))
        assert (store.breaker.state, read_breaker.state) == ("closed", "closed")
        assert store.head() == 2  # the account before the outage, and the one after it
    finally:
        views.close()
        store.close()


class FreezableClock:
    """``time.monotonic``, or the moment ``freeze()`` was called until ``thaw()``: a breaker stays open meanwhile."""

    def __init__(self) -> None:
        self._frozen_at: float | None = None

    def __call__(self) -> float:
        frozen_at = self._frozen_at
        return time.monotonic() if frozen_at is None else frozen_at

    def freeze(self) -> None:
        self._frozen_at = time.monotonic()

    def thaw(self) -> None:
        self._frozen_at = None


def _open_account(base_url: str) -> httpx.Response:
    body = {"account_number": new_code("PG"), "holder_name": "Outage"}
    return httpx.post(f"{base_url}/commands/OpenAccount", json=body, timeout=30)


def _until_answered(send: Any, attempts: int = 150) -> None:
    for _ in range(attempts):  # bounded by attempts: a probe per cool-down until PostgreSQL answers
        response = send()
        if response.status_code == 200:
            return
        assert response.status_code == 503, response.text
        time.sleep(0.2)
    raise AssertionError(f"still unavailable after {attempts} attempts: {response.text}")


def _unavailable(response: httpx.Response) -> str:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert not any((body.get("data") or {}).values()), body  # nothing was read
    assert {e["extensions"]["code"] for e in body["errors"]} == {"SERVICE_UNAVAILABLE"}, body
    return str(body["errors"][0]["message"])


def _scrape(client: httpx.Client) -> dict[tuple[Any, ...], float]:
    text = client.get("/metrics").text
    return {(s.name, *sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_partial_answer_stays_200_when_only_some_fields_fail(read_models: PostgresSettings) -> None:
    """A field that needs no database still answers: the errors ride along, the status stays 200."""
    with TcpProxy(read_models.host, read_models.port) as proxy:
        views = PostgresViewStore(replace(read_models, host=proxy.host, port=proxy.port, connect_timeout=1.0))
        app = create_query_app(build_graphql(), views, None, breaker=CircuitBreaker(threshold=50))
        try:
            with ServerThread(app) as server, httpx.Client(base_url=server.base_url, timeout=30) as client:
                proxy.cut()
                partial = client.post("/graphql", json={"query": '{ __typename card(actionId: "CA-1") { kind } }'})
                nothing = client.post("/graphql", json={"query": '{ card(actionId: "CA-1") { kind } }'})
        finally:
            views.close()
    assert partial.status_code == 200, partial.text
    assert partial.json()["data"] == {"__typename": "Query", "card": None}
    assert partial.json()["errors"][0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    _unavailable(nothing)  # every field failed: no answer at all, so a 503


@pytest.mark.nats
def test_the_relay_stops_trying_a_stopped_bus_and_then_publishes_everything_once(
    pg_database: PgDatabase, pg_schema: str, private_nats: ThrowawayNats,
) -> None:
    store = PostgresEventStore(pg_database.settings(pg_schema, pool_size=2))
    store.create_schema()
    jetstream = settings_for(private_nats.url, storage="file")
    bus = CommandBus(build_router(), store)
    breaker = bus_breaker(threshold=2, cool_down=0.5)
    try:
        asyncio.run(_relay_through_an_outage(store, bus, jetstream, private_nats, breaker))
        assert breaker.opened_total >= 1 and breaker.refused_total >= 1, vars(breaker)
        assert breaker.state == "closed"
        assert_stream_matches_store(jetstream, store)
    finally:
        store.close()


async def _relay_through_an_outage(store: PostgresEventStore, bus: CommandBus, jetstream: Any,
                                   nats: ThrowawayNats, breaker: CircuitBreaker) -> None:
    connection = await connect(jetstream)
    await connection.ensure_stream()
    publisher = BreakingPublisher(JetStreamPublisher(connection, ack_timeout=1.0), breaker)
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(store, publisher, stop, poll_seconds=0.05))
    try:
        await asyncio.to_thread(_open_accounts, bus, 5)
        await _until(lambda: store.relay_checkpoint("relay") == store.head(), "the first events published")
        await asyncio.to_thread(nats.stop)
        await asyncio.to_thread(_open_accounts, bus, 5)  # the store keeps taking commands meanwhile
        await _until(lambda: breaker.refused_total > 0, "the breaker to refuse a publish")
        await asyncio.to_thread(nats.start)
        await _until(lambda: store.relay_checkpoint("relay") == store.head(), "everything published")
    finally:
        stop.set()
        await relay
        await connection.close()


def _open_accounts(bus: CommandBus, count: int) -> None:
    from example_app.commands import OpenAccount

    for _ in range(count):
        bus.execute(OpenAccount(account_number=new_code("BRK"), holder_name="Breaker"))


async def _until(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
