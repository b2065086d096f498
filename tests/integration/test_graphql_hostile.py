"""Hostile input to the query API over real HTTP (issue 10, rows 1, 6, 7, 10 and 12).

- The fan-out family, up to the body limit: fragments that each spread the next twice, thousands of
  aliases, repeated fields, fragments and directives, connections nested in connections, deep
  nesting. Each is refused with its code, and ``/healthz`` of the same server answers afterwards
  (how fast is ``benchmarks/graphql_hostile.py``'s business, not a test's).
- Request-level failures are GraphQL errors with a code and the right status, never a plain-text
  500 nor ``INTERNAL_SERVER_ERROR`` with a logged traceback: NUL in literals and variables (on
  PostgreSQL read models, where it used to reach psycopg), unknown fragments, bodies that are not
  UTF-8, JSON nested 10,000 levels, wrong field types.
- ``first`` with ``last`` is ``BAD_USER_INPUT``.
- ``eventfold query-api`` has introspection and "Did you mean" suggestions off unless
  ``EVENTFOLD_GRAPHQL_INTROSPECTION=true``; ``eventfold dev`` has them on.
- ``/graphql/`` is a 404, never a redirect to a location built from ``Host``.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import strawberry
from graphql_helpers import APPLE, GraphQLClient, error_codes, only_error
from support.http import CliServer, ServerThread, clean_env, eventfold_executable
from support.postgres import PgDatabase

from framework.adapters.memory_views import MemoryViewStore
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.graphql import Connection, Edge, GraphQLSpec, PageInfo, QueryApiOptions, create_query_app, page_request
from projections import build_projectors
from projections.graphql import build_graphql

BODY_LIMIT = QueryApiOptions().max_body_bytes
LIMIT_CODES = {"QUERY_TOO_LARGE", "QUERY_TOO_DEEP"}


@dataclass
class Served:
    client: GraphQLClient

    def refused(self, query: str, codes: set[str], variables: dict[str, object] | None = None) -> dict[str, object]:
        """``query`` answered 200 with one error of one of ``codes`` and no data; the server still healthy."""
        assert len(json.dumps({"query": query, "variables": variables}).encode()) <= BODY_LIMIT
        body = self.client.execute(query, variables)
        assert body.get("data") is None and len(body["errors"]) == 1, str(body)[:600]
        assert error_codes(body)[0] in codes, str(body)[:600]
        self.healthy()
        return body

    def healthy(self) -> None:
        assert self.client.http.get(f"{self.client.base_url}/healthz").json() == {"status": "ok"}

    def post_raw(self, content: bytes, content_type: str = "application/json") -> httpx.Response:
        return self.client.http.post(self.client.url, content=content, headers={"content-type": content_type})


# --- the example's schema on PostgreSQL read models -----------------------------------------------


@pytest.fixture(scope="module")
def example(pg_database: PgDatabase) -> Iterator[Served]:
    with pg_database.fresh_schema("gqlhostile") as schema:
        store = PostgresEventStore(pg_database.settings(schema, pool_size=2))
        store.create_schema()
        views = PostgresViewStore(pg_database.settings(schema, pool_size=4))
        views.create_schema()
        for projector in build_projectors():
            views.ensure_tables(projector.name, views.active_version(projector.name), projector.read_models)
        try:
            app = create_query_app(build_graphql(), views, store)
            with ServerThread(app) as server, GraphQLClient(server.base_url) as client:
                yield Served(client)
        finally:
            views.close()
            store.close()


@pytest.fixture
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The server (in this process) logs no error: no traceback for a client's mistake."""
    caplog.set_level(logging.ERROR)
    yield
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[:2000]


# --- a schema whose connections nest -------------------------------------------------------------


@strawberry.type
class Item:
    id: str

    @strawberry.field
    def children(self, first: int | None = None, after: str | None = None, last: int | None = None,
                 before: str | None = None) -> Connection[Item]:
        request = page_request(first, after, last, before)
        size = request.size()
        edges = [Edge(cursor=str(i), node=Item(id=f"{self.id}.{i}")) for i in range(size)]
        return Connection(edges=edges, page_info=PageInfo(has_next_page=False, has_previous_page=False,
                                                          start_cursor=None, end_cursor=None))


@strawberry.type
class TreeQuery:
    @strawberry.field
    def root(self) -> Item:
        return Item(id="r")


@pytest.fixture(scope="module")
def tree() -> Iterator[Served]:
    app = create_query_app(GraphQLSpec(TreeQuery, {}), MemoryViewStore(), options=QueryApiOptions(introspection=True))
    with ServerThread(app) as server, GraphQLClient(server.base_url) as client:
        yield Served(client)


# --- the fan-out family --------------------------------------------------------------------------


def doubling(levels: int, leaf: str = "__typename", comment: str = "") -> str:
    """``query { ...F0 }`` where each fragment spreads the next twice: 2**levels leaves once inlined."""
    parts = ["query { ...F0 }"]
    parts += [f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}{comment}" for i in range(levels)]
    parts.append(f"fragment F{levels} on Query {{ {leaf} }}")
    return "\n".join(parts)


def largest(make: Callable[[int], str], start: int = 1) -> str:
    """The largest document ``make(n)`` whose JSON body fits the body limit."""
    n, best = start, make(start)
    while True:
        candidate = make(n * 2)
        if len(json.dumps({"query": candidate}).encode()) > BODY_LIMIT - 200:
            break
        n, best = n * 2, candidate
    step = n // 2
    while step:
        candidate = make(n + step)
        if len(json.dumps({"query": candidate}).encode()) <= BODY_LIMIT - 200:
            n, best = n + step, candidate
        step //= 2
    return best


@pytest.mark.parametrize("levels", [14, 20, 40])
def test_fragments_doubling_per_level_are_refused(example: Served, levels: int) -> None:
    example.refused(doubling(levels), {"QUERY_TOO_LARGE"})


def test_fragments_doubling_up_to_the_body_limit_are_refused(example: Served) -> None:
    example.refused(largest(doubling, 20), LIMIT_CODES)


@pytest.mark.parametrize("comment", [" # a", " # b", "   "])
def test_a_comment_or_spaces_do_not_get_a_fragment_chain_through(example: Served, comment: str) -> None:
    example.refused(doubling(20, comment=comment), {"QUERY_TOO_LARGE"})


def test_a_doubling_chain_within_the_cost_is_answered(example: Served) -> None:
    assert example.client.data(doubling(8)) == {"__typename": "Query"}


def test_aliases_by_the_thousand_are_refused(example: Served) -> None:
    def aliased(n: int) -> str:
        return "{ " + " ".join(f"a{i}: __typename" for i in range(n)) + " }"

    example.refused(aliased(2_000), LIMIT_CODES)
    example.refused(largest(aliased), LIMIT_CODES)
    only_error(example.client.execute(aliased(16)), "QUERY_TOO_LARGE")


def test_aliases_multiplied_by_fragments_are_refused(example: Served) -> None:
    example.refused(doubling(4, leaf="a: __typename b: __typename"), {"QUERY_TOO_LARGE"})


@pytest.mark.parametrize("query", [
    "{ " + f'security(isin: "{APPLE}") {{ name }} ' * 200 + "}",
    "{ cards(first: 1) { " + "nodes { actionId } " * 200 + "} }",
    "{ " + " ".join(f"...F{i}" for i in range(100)) + " } "
    + " ".join(f'fragment F{i} on Query {{ security(isin: "{APPLE}") {{ name }} }}' for i in range(100)),
], ids=["same-field", "same-field-nested", "distinct-fragments"])
def test_the_same_field_repeated_in_one_place_is_refused(example: Served, query: str) -> None:
    example.refused(query, {"QUERY_TOO_LARGE"})


def test_repeated_nested_introspection_is_refused_even_where_introspection_is_on(tree: Served) -> None:
    def nest(depth: int) -> str:
        return "name" if depth == 0 else " ".join(["ofType { " + nest(depth - 1) + " }"] * 3)

    tree.refused('{ __type(name: "Item") { ' + nest(5) + " } }", {"QUERY_TOO_LARGE"})


def test_directives_by_the_thousand_are_refused(example: Served) -> None:
    def directed(n: int) -> str:
        return "{ __typename " + "@include(if: true) " * n + "}"

    example.refused(largest(directed), {"QUERY_TOO_LARGE"})


@pytest.mark.parametrize("query", [
    "{ root { " + "children(first: 100) { nodes { " * 3 + "id" + " } }" * 3 + " } }",
    "{ root { " + "children(last: 100) { edges { node { " * 2 + "id" + " } } }" * 2 + " } }",
    "{ root { " + "children { nodes { " * 4 + "id" + " } }" * 4 + " } }",  # the default page, 20
], ids=["first", "last", "default-page"])
def test_connections_nested_in_connections_are_refused(tree: Served, query: str) -> None:
    tree.refused(query, {"QUERY_TOO_LARGE"})


def test_a_page_size_given_by_variable_counts_as_the_largest_page(tree: Served) -> None:
    query = "query($n: Int) { root { " + "children(first: $n) { nodes { " * 2 + "id" + " } }" * 2 + " } }"
    tree.refused(query, {"QUERY_TOO_LARGE"}, {"n": 1})
    answer = tree.client.data("{ root { children(first: 2) { nodes { children(first: 3) { nodes { id } } } } } }")
    assert [len(n["children"]["nodes"]) for n in answer["root"]["children"]["nodes"]] == [3, 3]


@pytest.mark.parametrize("make", [
    lambda n: '{ __type(name: "Item") { ' + "ofType { " * n + "name" + " }" * n + " } }",  # depth skips __ fields
    lambda n: "{ root { children(first: " + "[" * n + "1" + "]" * n + ") { nodes { id } } } }",
    lambda n: "{ " + "root { children { nodes { " * n + "id" + " } } }" * n + " }",
], ids=["introspection", "list-values", "connections"])
@pytest.mark.parametrize("size", [40, 300, 0], ids=["40", "300", "body-limit"])
def test_deep_nesting_is_refused(tree: Served, make: Callable[[int], str], size: int) -> None:
    query = largest(make) if size == 0 else make(size)
    tree.refused(query, LIMIT_CODES)


@pytest.mark.parametrize("padding", [" ", "\n", ",", "\t", "x"],
                         ids=["spaces", "newlines", "commas", "tabs", "comment"])
def test_a_document_padded_to_the_body_limit_is_answered(example: Served, padding: str) -> None:
    def padded(n: int) -> str:
        return "{ __typename " + ("# " + "x" * n + "\n" if padding == "x" else padding * n) + "}"

    assert example.client.data(largest(padded)) == {"__typename": "Query"}
    example.healthy()


def test_comments_count_as_tokens(example: Served) -> None:
    example.refused(largest(lambda n: "{ __typename " + "#\n" * n + "}"), {"QUERY_TOO_LARGE"})


def test_a_long_string_argument_up_to_the_body_limit_is_answered(example: Served) -> None:
    query = largest(lambda n: '{ card(actionId: "' + "x" * n + '") { actionId } }')
    assert example.client.data(query) == {"card": None}


# --- request-level failures (row 6) --------------------------------------------------------------


@pytest.mark.usefixtures("no_errors_logged")
@pytest.mark.parametrize("query", [
    '{ card(actionId: "CA-\\u0000") { actionId } }',
    '{ holdings(accountNumber: "ACC\\u0000") { isin } }',
    '{ cards(filter: {isin: "US\\u0000"}) { nodes { actionId } } }',
    'query($a: String = "x\\u0000") { card(actionId: $a) { actionId } }',
])
def test_nul_in_a_string_literal_is_bad_user_input(example: Served, query: str) -> None:
    body = example.client.execute(query)
    only_error(body, "BAD_USER_INPUT")
    assert body["data"] is None


@pytest.mark.usefixtures("no_errors_logged")
@pytest.mark.parametrize("raw", [
    b'{"query": "query($a: String!) { card(actionId: $a) { actionId } }", "variables": {"a": "x\\u0000"}}',
    b'{"query": "query($a: String!) { card(actionId: $a) { actionId } }", "variables": {"a": "x\\ud800"}}',
    b'{"query": "query($f: CardFilter) { cards(filter: $f) { nodes { actionId } } }", '
    b'"variables": {"f": {"status": "\\udfff"}}}',
], ids=["nul", "lone-high-surrogate", "lone-low-surrogate-in-an-input-object"])
def test_unstorable_text_in_variables_is_bad_user_input(example: Served, raw: bytes) -> None:
    response = example.post_raw(raw)
    assert response.status_code == 200, response.text
    only_error(response.json(), "BAD_USER_INPUT")
    assert response.json()["data"] is None


@pytest.mark.usefixtures("no_errors_logged")
@pytest.mark.parametrize("query", ["{ ...Nope }", "{ cards { ...Nope } }",
                                   "query { ...A } fragment A on Query { ...Nope }"])
def test_an_unknown_fragment_is_a_validation_error(example: Served, query: str) -> None:
    only_error(example.client.execute(query), "GRAPHQL_VALIDATION_FAILED")


@pytest.mark.usefixtures("no_errors_logged")
def test_a_fragment_cycle_is_a_validation_error(example: Served) -> None:
    body = example.client.execute("{ ...A } fragment A on Query { ...B } fragment B on Query { __typename ...A }")
    assert set(error_codes(body)) == {"GRAPHQL_VALIDATION_FAILED"}, body


def deep_json(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.usefixtures("no_errors_logged")
@pytest.mark.parametrize("raw", [
    b'{"query": "{ __typename \xff }"}',
    b'\xff\xfe{\x00"\x00q\x00u\x00e\x00r\x00y\x00"\x00:\x00 \x00"\x00{\x00}\x00"\x00}\x00',  # UTF-16
    b'{"query": "{ __typename }", "variables": {"a": ' + deep_json(10_000).encode() + b"}}",
    b'{"query": "{ __typename }", "variables": {"a": ' + deep_json(33).encode() + b"}}",
    b'{"query": "{ __typename }", "extensions": ' + b'{"a": ' * 5_000 + b"1" + b"}" * 5_000 + b"}",
    deep_json(20_000).encode(),
    b'{"query": "{ __typename }", "variables": {"n": NaN}}',
    b'{"query": "{ __typename }", "variables": {"n": ' + b"9" * 5_000 + b"}}",
    b'{"query": "{ __typename }", "operationName": 5}',
    b'{"query": "{ __typename }", "operationName": ["a"]}',
    b'{"query": "{ __typename }", "variables": "{}"}',
    b'{"query": "{ __typename }", "extensions": 1}',
    b'{"query": ["{ __typename }"]}',
    b'{"operationName": "A"}',
    b'"{ __typename }"',
    b"true",
], ids=["invalid-utf8", "utf16", "variables-10k-deep", "variables-33-deep", "extensions-5k-deep", "body-20k-deep",
        "nan", "5000-digits", "operation-name-number", "operation-name-list", "variables-string",
        "extensions-number", "query-list", "no-query", "a-string", "a-boolean"])
def test_a_bad_request_is_400_bad_request(example: Served, raw: bytes) -> None:
    response = example.post_raw(raw)
    assert response.status_code == 400, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    only_error(response.json(), "BAD_REQUEST")
    example.healthy()


@pytest.mark.usefixtures("no_errors_logged")
def test_deep_json_in_get_variables_is_400(example: Served) -> None:
    response = example.client.http.get(example.client.url, params={
        "query": "{ __typename }", "variables": '{"a": ' + deep_json(10_000) + "}"})
    assert response.status_code == 400, response.text[:300]
    only_error(response.json(), "BAD_REQUEST")


@pytest.mark.usefixtures("no_errors_logged")
def test_json_nested_within_the_limit_is_fine(example: Served) -> None:
    variables = {"f": {"status": "validated"}, "undeclared": json.loads(deep_json(30))}
    query = "query($f: CardFilter) { cards(filter: $f) { nodes { actionId } } }"
    assert example.client.data(query, variables) == {"cards": {"nodes": []}}


# --- first with last (row 7) ---------------------------------------------------------------------


@pytest.mark.usefixtures("no_errors_logged")
@pytest.mark.parametrize("query", [
    "{ cards(first: 2, last: 3) { nodes { actionId } } }",
    '{ entitlements(accountNumber: "ACC-1", first: 1, last: 1) { nodes { actionId } } }',
    '{ notifications(accountNumber: "ACC-1", first: 5, last: 5) { nodes { actionId } } }',
    "query($f: Int, $l: Int) { cards(first: $f, last: $l) { nodes { actionId } } }",
])
def test_first_with_last_is_bad_user_input(example: Served, query: str) -> None:
    body = example.client.execute(query, {"f": 1, "l": 1} if "$f" in query else None)
    only_error(body, "BAD_USER_INPUT")


# --- introspection and suggestions (row 12), slash redirects (row 10) ----------------------------

INTROSPECTION = "{ __schema { queryType { name } } }"
TYPO = "{ projection { name } }"
ENUM_TYPO = "query($o: CardOrder!) { cards(orderBy: $o) { nodes { actionId } } }"


def assert_introspection(client: GraphQLClient, *, enabled: bool) -> None:
    introspected = client.execute(INTROSPECTION)
    typo = only_error(client.execute(TYPO), "GRAPHQL_VALIDATION_FAILED")
    enum_typo = only_error(client.execute(ENUM_TYPO, {"o": "RECORD_DAT"}), "BAD_USER_INPUT")
    if enabled:
        assert introspected == {"data": {"__schema": {"queryType": {"name": "Query"}}}}
        assert "Did you mean 'projections'?" in typo["message"]
        assert "Did you mean" in enum_typo["message"]
    else:
        only_error(introspected, "GRAPHQL_VALIDATION_FAILED")
        assert introspected["data"] is None
        assert "Did you mean" not in typo["message"] and "projections" not in typo["message"], typo
        assert "Did you mean" not in enum_typo["message"] and "RECORD_DATE" not in enum_typo["message"], enum_typo


def assert_no_slash_redirect(base_url: str) -> None:
    for method in ("POST", "GET"):
        response = httpx.request(method, f"{base_url}/graphql/", json={"query": "{ __typename }"},
                                 headers={"Host": "evil.example"}, follow_redirects=False, timeout=10)
        assert response.status_code == 404, (method, response.status_code, response.headers)
        assert "location" not in response.headers
        assert "evil.example" not in response.text
        assert response.headers["content-type"].split(";")[0].endswith("json"), response.text  # dev: the write API's


def test_the_library_default_has_introspection_off(example: Served) -> None:
    assert_introspection(example.client, enabled=False)


def test_no_slash_redirect_on_the_query_app(example: Served) -> None:
    assert_no_slash_redirect(example.client.base_url)
    only_error(example.client.http.get(f"{example.client.base_url}/nowhere").json(), "NOT_FOUND")


@pytest.fixture(scope="module")
def query_api_env(pg_database: PgDatabase) -> Iterator[dict[str, str]]:
    with pg_database.fresh_schema("gqlcli") as schema:
        env = clean_env(EVENTFOLD_DATABASE_URL=pg_database.url(), EVENTFOLD_DB_SCHEMA=schema,
                        EVENTFOLD_DB_POOL_SIZE="2")
        init = subprocess.run([eventfold_executable(), "init-db"], env=env, capture_output=True, text=True,
                              timeout=60, check=False)
        assert init.returncode == 0, init.stderr
        yield env


@pytest.mark.parametrize(("setting", "enabled"), [(None, False), ("true", True), ("false", False)])
def test_query_api_introspection_follows_the_setting(query_api_env: dict[str, str], setting: str | None,
                                                     enabled: bool) -> None:
    env = dict(query_api_env)
    if setting is not None:
        env["EVENTFOLD_GRAPHQL_INTROSPECTION"] = setting
    with CliServer("query-api", env) as server, GraphQLClient(server.base_url) as client:
        assert_introspection(client, enabled=enabled)
        if setting is None:
            assert_no_slash_redirect(server.base_url)
    assert "Traceback" not in server.stderr


def test_query_api_limits_follow_the_settings(query_api_env: dict[str, str]) -> None:
    env = {**query_api_env, "EVENTFOLD_GRAPHQL_MAX_DEPTH": "2", "EVENTFOLD_GRAPHQL_MAX_ALIASES": "1",
           "EVENTFOLD_GRAPHQL_MAX_TOKENS": "40", "EVENTFOLD_GRAPHQL_MAX_COST": "30"}
    with CliServer("query-api", env) as server, GraphQLClient(server.base_url) as client:
        only_error(client.execute("{ cards { edges { node { security { name } } } } }"), "QUERY_TOO_DEEP")
        only_error(client.execute("{ a: __typename b: __typename }"), "QUERY_TOO_LARGE")
        only_error(client.execute("{ " + "__typename " * 41 + "}"), "QUERY_TOO_LARGE")
        only_error(client.execute("{ cards(first: 10) { nodes { actionId isin } } }"), "QUERY_TOO_LARGE")
        assert client.data("{ cards(first: 5) { nodes { actionId isin } } }") == {"cards": {"nodes": []}}


@pytest.mark.parametrize(("name", "value"), [("EVENTFOLD_GRAPHQL_MAX_DEPTH", "0"), ("EVENTFOLD_GRAPHQL_MAX_COST", "x"),
                                             ("EVENTFOLD_GRAPHQL_INTROSPECTION", "maybe")])
def test_a_bad_graphql_setting_stops_the_query_api_with_one_line(query_api_env: dict[str, str], name: str,
                                                                 value: str) -> None:
    result = subprocess.run([eventfold_executable(), "query-api"], env={**query_api_env, name: value},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and value in lines[0], result.stderr


def test_dev_has_introspection_on_and_no_slash_redirect() -> None:
    env = clean_env(EVENTFOLD_SQLITE_PATH=":memory:")
    with CliServer("dev", env) as server, GraphQLClient(server.base_url) as client:
        assert_introspection(client, enabled=True)
        assert_no_slash_redirect(server.base_url)
        only_error(client.execute(doubling(20)), "QUERY_TOO_LARGE")
    assert "Traceback" not in server.stderr


def test_dev_can_turn_introspection_off() -> None:
    env = clean_env(EVENTFOLD_SQLITE_PATH=":memory:", EVENTFOLD_GRAPHQL_INTROSPECTION="false")
    with CliServer("dev", env) as server, GraphQLClient(server.base_url) as client:
        assert_introspection(client, enabled=False)
