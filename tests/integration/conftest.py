"""Fixtures of the integration tests: the example app's write API over real HTTP on real PostgreSQL, and an
event store and a view store in a schema of the test's own (a module may define its own instead)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from http_helpers import WriteApi, assert_no_traceback, serve_write_api
from support.postgres import PgDatabase

from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore


@pytest.fixture(scope="module")
def app_schema(pg_database: PgDatabase) -> Iterator[str]:
    with pg_database.fresh_schema("http") as schema:
        yield schema


@pytest.fixture(scope="module")
def write_async() -> bool:
    """Whether ``write_api`` runs commands on the event loop (``EVENTFOLD_WRITE_ASYNC``); a module
    overrides this fixture, parametrized, to run its tests both ways."""
    return False


@pytest.fixture(scope="module")
def write_api(pg_database: PgDatabase, app_schema: str, write_async: bool) -> Iterator[WriteApi]:
    checker = PostgresEventStore(pg_database.settings(app_schema, pool_size=2))
    checker.create_schema()
    server, server_store = serve_write_api(pg_database.settings(app_schema, pool_size=8), write_async=write_async)
    try:
        yield WriteApi(server.base_url, checker, app_schema, write_async)
    finally:
        server.stop()
        server_store.close()
        checker.close()


@pytest.fixture
def client(write_api: WriteApi) -> Iterator[httpx.Client]:
    """A client whose every response is checked for leaked tracebacks."""

    def check(response: httpx.Response) -> None:
        response.read()
        assert_no_traceback(response)

    with httpx.Client(base_url=write_api.base_url, timeout=60, event_hooks={"response": [check]}) as c:
        yield c


@pytest.fixture
def store(pg_database: PgDatabase, pg_schema: str) -> Iterator[PostgresEventStore]:
    store = PostgresEventStore(pg_database.settings(pg_schema))
    store.create_schema()
    yield store
    store.close()


@pytest.fixture
def views(pg_database: PgDatabase, pg_schema: str) -> Iterator[PostgresViewStore]:
    views = PostgresViewStore(pg_database.settings(pg_schema, pool_size=8))
    views.create_schema()
    yield views
    views.close()
