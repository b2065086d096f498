"""GraphQL over HTTP's media type (``application/graphql-response+json``) and 64-bit integers, over
real HTTP against the example's read models on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from graphql_helpers import APPLE, ReadSide, assert_no_leak
from support.http import ServerThread
from support.postgres import PgDatabase

from example_app.accounts import MAX_HOLDING
from example_app.commands import CreditHoldings, OpenAccount, RegisterSecurity
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.graphql import create_query_app
from projections.graphql import build_graphql

pytestmark = pytest.mark.postgres

MEDIA = "application/graphql-response+json"
HOLDINGS = '{ holdings(accountNumber: "BIG-1") { isin quantity } }'


@pytest.fixture(scope="module")
def url(pg_database: PgDatabase) -> Iterator[str]:
    with pg_database.fresh_schema("overhttp") as schema:
        store = PostgresEventStore(pg_database.settings(schema, pool_size=2))
        store.create_schema()
        views = PostgresViewStore(pg_database.settings(schema, pool_size=4))
        views.create_schema()
        side = ReadSide(store, views)
        side.execute([RegisterSecurity(isin=APPLE, name="Apple Inc.", currency="USD"),
                      OpenAccount(account_number="BIG-1", holder_name="Large"),
                      CreditHoldings(account_number="BIG-1", isin=APPLE, quantity=MAX_HOLDING)], key_prefix="big")
        side.settle()
        try:
            with ServerThread(create_query_app(build_graphql(), views, store)) as server:
                yield f"{server.base_url}/graphql"
        finally:
            views.close()
            store.close()


def post(url: str, body: Any, accept: str | None = MEDIA) -> httpx.Response:
    headers = {"Accept": accept} if accept else {}
    response = httpx.post(url, json=body, headers=headers, timeout=30)
    assert_no_leak(response)
    return response


def test_a_holding_of_ten_to_the_fifteen_is_a_json_number(url: str) -> None:
    assert MAX_HOLDING == 10**15
    response = post(url, {"query": HOLDINGS}, accept=None)
    assert response.status_code == 200, response.text
    assert response.json() == {"data": {"holdings": [{"isin": APPLE, "quantity": 10**15}]}}
    assert '"quantity":1000000000000000' in response.text.replace(" ", ""), "a number, not a string"


def test_long_arguments_take_numbers_and_digit_strings_and_refuse_the_rest(url: str) -> None:
    query = "query($n: Long!) { cards(where: {entitledAccounts: {lt: $n}}) { nodes { actionId } } }"
    for value in (2**40, str(2**40), -(2**63)):
        assert "errors" not in post(url, {"query": query, "variables": {"n": value}}).json()
    for value in (2**63, "12x", 1.5, True):
        response = post(url, {"query": query, "variables": {"n": value}})
        assert response.status_code == 400 and "data" not in response.json(), (value, response.text)


def test_a_good_query_is_200_in_the_media_type_asked_for(url: str) -> None:
    response = post(url, {"query": HOLDINGS})
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{MEDIA}; charset=utf-8"
    assert response.json()["data"]["holdings"][0]["quantity"] == 10**15


@pytest.mark.parametrize("body", [
    {"query": "{ holdings(accountNumber: "},  # does not parse
    {"query": "{ nosuchfield }"},  # does not validate
    {"query": "query($a: String!) { holdings(accountNumber: $a) { quantity } }", "variables": {"a": 5}},  # coercion
    {"query": "query($a: String!) { holdings(accountNumber: $a) { quantity } }", "variables": {}},  # missing
])
def test_a_request_that_is_not_executed_is_400_without_data(url: str, body: dict[str, Any]) -> None:
    response = post(url, body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith(MEDIA)
    answer = response.json()
    assert "data" not in answer and answer["errors"][0]["extensions"]["code"]
    legacy = post(url, body, accept="application/json")
    assert legacy.status_code == 200 and legacy.headers["content-type"] == "application/json"
    assert legacy.json()["data"] is None, "application/json stays as it was"


def test_a_field_error_is_a_200_with_data(url: str) -> None:
    response = post(url, {"query": '{ cards(first: 1000) { nodes { actionId } } }'})
    assert response.status_code == 200 and "data" in response.json()
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


@pytest.mark.parametrize(("accept", "ours"), [
    (f"{MEDIA}, application/json;q=0.9", True),
    (f"application/json, {MEDIA}", True),
    (f"application/json, {MEDIA};q=0.5", False),
    (f"{MEDIA};q=0", False),
    ("application/json", False),
    ("*/*", False),
])
def test_the_accept_header_chooses(url: str, accept: str, ours: bool) -> None:
    response = post(url, {"query": "{ nosuchfield }"}, accept=accept)
    assert response.headers["content-type"].startswith(MEDIA if ours else "application/json")
    assert response.status_code == (400 if ours else 200)


def test_request_level_errors_keep_their_status_in_the_media_type(url: str) -> None:
    response = httpx.post(url, content=b"{not json", headers={"Accept": MEDIA, "Content-Type": "application/json"})
    assert response.status_code == 400 and response.headers["content-type"].startswith(MEDIA)
    assert "data" not in response.json()
