"""Property-based fuzzing of the GraphQL endpoint of ``eventfold query-api`` (schemathesis, hypothesis).

A real ``query-api`` with bearer tokens serves read models that the example's own projectors filled on
PostgreSQL (the demo seed and a few more actions). It is sent queries schemathesis draws from the
application's schema (the server's introspection is off, as in production, so the schema is built
here from the same code): valid ones, invalid ones, and request bodies that are not GraphQL requests
at all. No answer may be a 5xx or carry an error without a code, and a valid query is either run or
refused with a code for what no schema can say (``fuzz_helpers``). The runs are deterministic and bounded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import partial
from typing import Any

import graphql
import httpx
import pytest
import schemathesis
from fuzz_helpers import check_graphql_answer, fuzz, graphql_error_codes, operations, tokened_env
from graphql_helpers import ReadSide, fill_example
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from support.http import CliServer
from support.postgres import PgDatabase
from support.tokens import Issuer, make_issuer

from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.graphql import QueryApiOptions
from framework.graphql.app import build_schema
from projections.graphql import build_graphql

pytestmark = pytest.mark.postgres

VALID_QUERIES = 30  # per top-level field
INVALID_QUERIES = 15
RAW_BODIES = 60
_SPEC = build_graphql()
GRAPHQL_SDL = str(build_schema(_SPEC.query, QueryApiOptions(), _SPEC.projections_by_field))
SCHEMA = graphql.build_schema(GRAPHQL_SDL)


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Issuer:
    return make_issuer(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def query_api(pg_database: PgDatabase, issuer: Issuer) -> Iterator[CliServer]:
    with pg_database.fresh_schema("fuzzgql") as schema:
        env = tokened_env(pg_database.url(), schema, issuer)
        _fill_read_models(pg_database, schema)
        with CliServer("query-api", env) as server:
            yield server
        assert "Traceback" not in server.stderr, server.stderr[-3000:]


def _fill_read_models(pg_database: PgDatabase, schema: str) -> None:
    store = PostgresEventStore(pg_database.settings(schema, pool_size=2))
    views = PostgresViewStore(pg_database.settings(schema, pool_size=2))
    try:
        fill_example(ReadSide(store, views), extra=5)
    finally:
        views.close()
        store.close()


@pytest.fixture(scope="module")
def headers(issuer: Issuer) -> dict[str, str]:
    return issuer.bearer("fuzzer", roles=["ops"])  # `projections` needs it


def send(case: Case, url: str, headers: dict[str, str], mode: GenerationMode) -> None:
    response = case.call(base_url=url, headers=headers, timeout=30)
    check_graphql_answer(case, response, mode, SCHEMA)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_drawn_queries_are_run_or_refused_with_a_code(query_api: CliServer, headers: dict[str, str],
                                                     mode: GenerationMode) -> None:
    count = VALID_QUERIES if mode is GenerationMode.POSITIVE else INVALID_QUERIES
    url = f"{query_api.base_url}/graphql"
    for operation in operations(schemathesis.graphql.from_file(GRAPHQL_SDL)):
        fuzz(operation.as_strategy(generation_mode=mode), partial(send, url=url, headers=headers, mode=mode),
             max_examples=count)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_REQUEST = st.one_of(
    _JSON,  # any JSON document as the body
    st.fixed_dictionaries({"query": st.text(max_size=200)}),  # any text as the query
    st.fixed_dictionaries({"query": st.just("query($n: Int) { cards(first: $n) { nodes { actionId } } }"),
                           "variables": _JSON}, optional={"operationName": _JSON}),
)


def test_any_json_body_is_answered_with_graphql_errors_that_have_codes(query_api: CliServer,
                                                                       headers: dict[str, str]) -> None:
    url = f"{query_api.base_url}/graphql"

    @settings(max_examples=RAW_BODIES, derandomize=True, database=None, deadline=None,
              phases=(Phase.explicit, Phase.generate, Phase.shrink), suppress_health_check=[HealthCheck.too_slow])
    @given(request=_REQUEST)
    def post(request: Any) -> None:
        response = httpx.post(url, content=json.dumps(request), timeout=30,
                              headers={**headers, "content-type": "application/json"})
        assert response.status_code < 500, (response.status_code, response.text[:500])
        body = response.json()
        assert isinstance(body, dict) and ("data" in body or "errors" in body), body
        if response.status_code != 200 or body.get("data") is None:
            assert graphql_error_codes(body), body

    post()
