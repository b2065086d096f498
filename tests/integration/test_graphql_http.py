"""The query API over real HTTP, on PostgreSQL read models filled by the example's own projectors.

The module's data: the demo seed, an account whose history was recorded on chosen past days, two
more securities and 45 more corporate actions of every status; the projections and the process
manager (issuing its commands through the example router's ``CommandBus``) caught up over it.
Every answer is checked against what the data sent implies (``graphql_helpers.Expectations``),
and no response may carry a traceback or internal detail.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from graphql_helpers import (
    APPLE,
    ASML,
    BAE,
    CURRENCIES,
    HISTORY_ACCOUNT,
    NAMES,
    CountingViewStore,
    Expectations,
    GraphQLClient,
    LiveProjections,
    ReadSide,
    error_codes,
    fill_example,
    only_error,
    poll,
    read_model_statements,
    send_command,
)
from support.http import ServerThread
from support.postgres import PgDatabase

from example_app.app import build_router
from framework.adapters.postgres import PostgresEventStore
from framework.adapters.postgres_views import PostgresViewStore
from framework.bus import CommandBus
from framework.graphql import QueryApiOptions, create_query_app
from framework.http.write_api import WriteApiOptions, create_write_app
from projections.graphql import build_graphql

pytestmark = pytest.mark.postgres

CARD = ("actionId isin securityName kind recordDate paymentDate terms status reasons cancellationReason "
        "entitledAccounts")
ENTITLEMENT = "actionId accountNumber recordDate holding cashAmount currency newUnits status"
PROJECTIONS = {"holdings", "cards", "entitlements", "notifications", "corporate_action_process"}


@dataclass
class Api:
    client: GraphQLClient
    views: CountingViewStore
    store: PostgresEventStore
    expected: Expectations
    head: int

    @property
    def url(self) -> str:
        return self.client.url


@pytest.fixture(scope="module")
def api(pg_database: PgDatabase) -> Iterator[Api]:
    with pg_database.fresh_schema("gql") as schema:
        store = PostgresEventStore(pg_database.settings(schema, pool_size=4))
        store.create_schema()
        writer_views = PostgresViewStore(pg_database.settings(schema, pool_size=4))
        writer_views.create_schema()
        served_views = CountingViewStore(pg_database.settings(schema, pool_size=6))
        try:
            side = ReadSide(store, writer_views)
            expected = fill_example(side)
            head = store.head()
            app = create_query_app(build_graphql(), served_views, store, options=QueryApiOptions(introspection=True))
            with ServerThread(app) as server, GraphQLClient(server.base_url) as client:
                yield Api(client, served_views, store, expected, head)
        finally:
            served_views.close()
            writer_views.close()
            store.close()


def all_cards(api: Api, arguments: str = "") -> list[dict[str, Any]]:
    query = f"{{ cards(first: 100{', ' + arguments if arguments else ''}) {{ nodes {{ {CARD} announcedAt }} "\
            "pageInfo { hasNextPage } } }"
    connection = api.client.data(query)["cards"]
    assert connection["pageInfo"]["hasNextPage"] is False
    nodes: list[dict[str, Any]] = connection["nodes"]
    return nodes


def ids(nodes: list[dict[str, Any]]) -> list[str]:
    return [n["actionId"] for n in nodes]


def by_record_date(api: Api, *, descending: bool = False) -> list[str]:
    specs = sorted(api.expected.actions, key=lambda a: (a.record_date, a.action_id), reverse=descending)
    return [a.action_id for a in specs]


# --- the example queries ---------------------------------------------------------------------------


@pytest.mark.parametrize("action_id", ["CA-APPLE-DIV", "CA-SAP-SPLIT", "CA-TTE-DIV", "CA-T-00", "CA-T-01",
                                       "CA-T-02", "CA-T-03", "CA-T-04", "CA-T-24", "CA-T-44"])
def test_card_by_id_with_its_security_and_entitlements(api: Api, action_id: str) -> None:
    spec = api.expected.action(action_id)
    query = (f"query($id: String!) {{ card(actionId: $id) {{ {CARD} security {{ isin name currency }} "
             f"entitlements {{ {ENTITLEMENT} }} }} }}")
    card = api.client.data(query, {"id": action_id})["card"]
    entitlements = card.pop("entitlements")
    assert card.pop("security") == {"isin": spec.isin, "name": NAMES[spec.isin], "currency": CURRENCIES[spec.isin]}
    assert card == api.expected.card(spec)
    assert entitlements == api.expected.entitlements(spec)


def test_the_demo_dividend_is_entitled_from_holdings_at_its_record_date(api: Api) -> None:
    card = api.client.data('{ card(actionId: "CA-APPLE-DIV") { status entitledAccounts '
                           'entitlements { accountNumber holding cashAmount currency } } }')["card"]
    assert card == {"status": "validated", "entitledAccounts": 3, "entitlements": [
        {"accountNumber": "ACC-1001", "holding": 700, "cashAmount": "175.00", "currency": "USD"},
        {"accountNumber": "ACC-1002", "holding": 250, "cashAmount": "62.50", "currency": "USD"},
        {"accountNumber": "ACC-1003", "holding": 300, "cashAmount": "75.00", "currency": "USD"},
    ]}


def test_an_unknown_card_is_null(api: Api) -> None:
    assert api.client.data('{ card(actionId: "CA-NOPE") { actionId } }') == {"card": None}


def test_every_card_as_expected_in_record_date_order(api: Api) -> None:
    nodes = all_cards(api)
    assert ids(nodes) == by_record_date(api)
    assert [{k: v for k, v in n.items() if k != "announcedAt"} for n in nodes] == [
        api.expected.card(api.expected.action(i)) for i in ids(nodes)]
    assert len(api.expected.actions) == 48


@pytest.mark.parametrize("isin", sorted(NAMES))
def test_cards_by_security(api: Api, isin: str) -> None:
    nodes = all_cards(api, f'filter: {{isin: "{isin}"}}')
    assert ids(nodes) == [i for i in by_record_date(api) if api.expected.action(i).isin == isin]
    assert nodes and {n["securityName"] for n in nodes} == {NAMES[isin]}


@pytest.mark.parametrize("status", ["validated", "announced", "rejected", "cancelled"])
def test_cards_by_status(api: Api, status: str) -> None:
    nodes = all_cards(api, f'filter: {{status: "{status}"}}')
    assert ids(nodes) == [i for i in by_record_date(api) if api.expected.action(i).status == status]
    assert len(nodes) >= 8


def test_cards_by_record_date_range(api: Api) -> None:
    start, end = api.expected.today - timedelta(days=3), api.expected.today + timedelta(days=3)
    nodes = all_cards(api, f'filter: {{recordDateFrom: "{start}", recordDateTo: "{end}"}}')
    expected = [i for i in by_record_date(api) if start <= api.expected.action(i).record_date <= end]
    assert ids(nodes) == expected and len(expected) > 5
    only_day = all_cards(api, f'filter: {{recordDateFrom: "{start}", recordDateTo: "{start}"}}')
    assert ids(only_day) == [i for i in expected if api.expected.action(i).record_date == start]
    assert all_cards(api, f'filter: {{recordDateFrom: "{end}", recordDateTo: "{start}"}}') == []


def test_cards_by_every_filter_at_once(api: Api) -> None:
    start = api.expected.today - timedelta(days=11)
    end = api.expected.today
    arguments = f'filter: {{isin: "{ASML}", status: "validated", recordDateFrom: "{start}", recordDateTo: "{end}"}}'
    expected = [i for i in by_record_date(api) if (a := api.expected.action(i)).isin == ASML
                and a.status == "validated" and start <= a.record_date <= end]
    assert ids(all_cards(api, arguments)) == expected and expected


def test_cards_where_every_condition_holds(api: Api) -> None:
    """``where`` (``filter_input``) over PostgreSQL: text matching, null tests, ``ne`` and ``in``,
    combined with ``filter``; the expectations are computed from what was sent."""
    def expect(keep: Any) -> list[str]:
        return [i for i in by_record_date(api) if keep(api.expected.action(i))]

    cases = {
        'where: {securityName: {contains: " Inc."}}': expect(lambda a: a.isin == APPLE),
        'where: {securityName: {prefix: "a"}}': [],  # case-sensitive
        'where: {securityName: {contains: "_"}}': [],  # `_` is not a wildcard
        'where: {paymentDate: {isNull: false}}': expect(lambda a: a.payment_date is not None),
        'where: {cancellationReason: {isNull: true}, status: {ne: "validated"}}':
            expect(lambda a: a.cancellation_reason is None and a.status != "validated"),
        f'where: {{isin: {{in: ["{ASML}", "{BAE}"]}}}}, filter: {{status: "validated"}}':
            expect(lambda a: a.isin in (ASML, BAE) and a.status == "validated"),
        'where: {kind: {prefix: "cash_"}}': expect(lambda a: a.kind.startswith("cash_")),
    }
    for arguments, expected in cases.items():
        assert ids(all_cards(api, arguments)) == expected, arguments
    assert any(cases.values()) and all(len(v) < len(api.expected.actions) for v in cases.values())
    body = api.client.execute('{ cards(where: {kind: {prefix: "cash\\u0000"}}) { nodes { actionId } } }')
    assert error_codes(body) == ["BAD_USER_INPUT"]


@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
@pytest.mark.parametrize("order", ["RECORD_DATE", "ANNOUNCED_AT", "ACTION_ID"])
def test_cards_ordering(api: Api, order: str, descending: bool) -> None:
    nodes = all_cards(api, f"orderBy: {order}, descending: {str(descending).lower()}")
    assert sorted(ids(nodes)) == sorted(a.action_id for a in api.expected.actions)
    column = {"RECORD_DATE": "recordDate", "ANNOUNCED_AT": "announcedAt", "ACTION_ID": "actionId"}[order]
    parse = datetime.fromisoformat if order == "ANNOUNCED_AT" else str
    keys = [(parse(n[column]), n["actionId"]) for n in nodes]
    assert keys == sorted(keys, reverse=descending)
    if order == "RECORD_DATE":
        assert ids(nodes) == by_record_date(api, descending=descending)
    if order == "ACTION_ID":
        assert ids(nodes) == sorted(ids(nodes), reverse=descending)


def test_security_by_isin(api: Api) -> None:
    assert api.client.data(f'{{ security(isin: "{ASML}") {{ isin name currency }} }}') == {
        "security": {"isin": ASML, "name": "ASML Holding N.V.", "currency": "EUR"}}
    assert api.client.data('{ security(isin: "XS0000000000") { name } }') == {"security": None}


@pytest.mark.parametrize("account", ["ACC-1001", "ACC-1002", "ACC-1003", HISTORY_ACCOUNT, "ACC-NOBODY"])
def test_holdings_now(api: Api, account: str) -> None:
    rows = api.client.data('query($a: String!) { holdings(accountNumber: $a) { accountNumber isin quantity } }',
                           {"a": account})["holdings"]
    assert rows == [{"accountNumber": account, **r} for r in api.expected.holdings(account)]


def test_holdings_as_of_past_dates(api: Api) -> None:
    today = api.expected.today
    query = 'query($a: String!, $d: Date!) { holdings(accountNumber: $a, asOf: $d) { isin quantity } }'
    history = {-25: [], -20: [100], -15: [100], -10: [150], -6: [150], -5: [120], -1: [120], 0: [120]}
    for days, quantities in history.items():
        rows = api.client.data(query, {"a": HISTORY_ACCOUNT, "d": str(today + timedelta(days=days))})["holdings"]
        assert rows == [{"isin": ASML, "quantity": q} for q in quantities], days
    yesterday, tomorrow = str(today - timedelta(days=1)), str(today + timedelta(days=1))
    assert api.client.data(query, {"a": "ACC-1001", "d": yesterday})["holdings"] == []
    now = api.client.data(query, {"a": "ACC-1001", "d": str(today)})["holdings"]
    assert now == [{"isin": APPLE, "quantity": 700}] == api.client.data(query, {"a": "ACC-1001", "d": tomorrow})[
        "holdings"]
    assert api.client.data(query, {"a": "ACC-1003", "d": str(today)})["holdings"] == [
        {"isin": "DE0007164600", "quantity": 400}, {"isin": APPLE, "quantity": 300}]


@pytest.mark.parametrize("account", ["ACC-1001", "ACC-1002", "ACC-1003", HISTORY_ACCOUNT, "ACC-NOBODY"])
def test_entitlements_of_a_depositor(api: Api, account: str) -> None:
    query = f'query($a: String!) {{ entitlements(accountNumber: $a, first: 100) {{ nodes {{ {ENTITLEMENT} }} }} }}'
    nodes = api.client.data(query, {"a": account})["entitlements"]["nodes"]
    assert nodes == api.expected.account_entitlements(account)
    if account != "ACC-NOBODY":
        assert nodes


def test_cancelled_actions_keep_their_entitlements_marked_cancelled(api: Api) -> None:
    nodes = api.client.data('{ entitlements(accountNumber: "ACC-1003", first: 100) { nodes { actionId status '
                            'newUnits } } }')["entitlements"]["nodes"]
    assert {"actionId": "CA-SAP-SPLIT", "status": "cancelled", "newUnits": 400} in nodes


@pytest.mark.parametrize("account", ["ACC-1001", "ACC-1002", "ACC-1003", HISTORY_ACCOUNT])
def test_notifications_of_a_depositor(api: Api, account: str) -> None:
    query = ('query($a: String!) { notifications(accountNumber: $a, first: 100) { nodes { actionId accountNumber '
             'kind message notifiedAt } pageInfo { hasNextPage } } }')
    connection = api.client.data(query, {"a": account})["notifications"]
    nodes = connection["nodes"]
    sent = [(n["actionId"], n["kind"]) for n in nodes]
    assert len(sent) == len(set(sent)), "a depositor was notified twice of the same thing"
    assert set(sent) == api.expected.notifications(account)
    assert all(n["accountNumber"] == account and n["actionId"] in n["message"] for n in nodes)
    times = [datetime.fromisoformat(n["notifiedAt"]) for n in nodes]
    assert times == sorted(times, reverse=True), "newest first"
    assert connection["pageInfo"]["hasNextPage"] is False


def test_the_cancellation_reaches_the_depositors_entitled(api: Api) -> None:
    nodes = api.client.data('{ notifications(accountNumber: "ACC-1003") { nodes { actionId kind message } } }'
                            )["notifications"]["nodes"]
    cancellation = [n for n in nodes if n["kind"] == "cancellation"]
    assert cancellation == [{"actionId": "CA-SAP-SPLIT", "kind": "cancellation",
                             "message": "Corporate action CA-SAP-SPLIT was cancelled: The issuer withdrew the split"}]


def test_projection_status(api: Api) -> None:
    rows = api.client.data("{ projections { name version active state position head lagEvents lagSeconds "
                           "deadLetters error } }")["projections"]
    assert {r["name"] for r in rows} == PROJECTIONS
    for row in rows:
        assert row["version"] == 1 and row["active"] is True, row
        assert row["position"] == row["head"] == api.head, row
        assert row["lagEvents"] == 0 and row["lagSeconds"] == 0, row
        assert row["deadLetters"] == 0 and row["error"] is None, row
        assert isinstance(row["state"], str) and row["state"], row


# --- pagination ----------------------------------------------------------------------------------


def walk(api: Api, field: str, arguments: str, selection: str, size: int) -> tuple[list[Any], list[Any]]:
    """Every node forwards (first/after) and then backwards (last/before); each walk's nodes."""
    query = (f"query($first: Int, $after: String, $last: Int, $before: String) {{ {field}({arguments}"
             f"{', ' if arguments else ''}first: $first, after: $after, last: $last, before: $before) "
             f"{{ edges {{ cursor node {{ {selection} }} }} pageInfo {{ hasNextPage hasPreviousPage startCursor "
             "endCursor } } }")
    forwards: list[Any] = []
    cursor = None
    for page_number in range(1000):
        page = api.client.data(query, {"first": size, "after": cursor})[field]
        info = page["pageInfo"]
        assert len(page["edges"]) <= size
        assert info["hasPreviousPage"] is (page_number > 0)
        if page["edges"]:
            assert info["startCursor"] == page["edges"][0]["cursor"]
            assert info["endCursor"] == page["edges"][-1]["cursor"]
        forwards += [e["node"] for e in page["edges"]]
        if not info["hasNextPage"]:
            break
        assert len(page["edges"]) == size, "a page before the last one is full"
        cursor = info["endCursor"]
    backwards: list[Any] = []
    cursor = None
    for page_number in range(1000):
        page = api.client.data(query, {"last": size, "before": cursor})[field]
        info = page["pageInfo"]
        assert info["hasNextPage"] is (page_number > 0)
        backwards = [e["node"] for e in page["edges"]] + backwards
        if not info["hasPreviousPage"]:
            break
        assert len(page["edges"]) == size, "a page after the first one is full"
        cursor = info["startCursor"]
    return forwards, backwards


@pytest.mark.parametrize(("arguments", "size"), [
    ("", 7),
    ("orderBy: ANNOUNCED_AT, descending: true", 5),
    ("orderBy: ACTION_ID", 48),
    ("orderBy: RECORD_DATE, descending: true", 1),
    ('filter: {status: "validated"}, orderBy: RECORD_DATE', 4),
    (f'filter: {{isin: "{APPLE}"}}, orderBy: ACTION_ID, descending: true', 3),
])
def test_cards_page_to_the_end_and_back(api: Api, arguments: str, size: int) -> None:
    whole = ids(all_cards(api, arguments))
    forwards, backwards = walk(api, "cards", arguments, "actionId", size)
    assert ids(forwards) == whole, "forwards: no duplicate, no gap"
    assert ids(backwards) == whole, "backwards: no duplicate, no gap"


def test_entitlements_and_notifications_page_to_the_end_and_back(api: Api) -> None:
    whole = api.expected.account_entitlements("ACC-1003")
    forwards, backwards = walk(api, "entitlements", 'accountNumber: "ACC-1003"', ENTITLEMENT, 3)
    assert forwards == backwards == whole and len(whole) >= 4
    whole_notes = api.client.data('{ notifications(accountNumber: "ACC-1001", first: 100) { nodes { actionId kind } } }'
                                  )["notifications"]["nodes"]
    forwards, backwards = walk(api, "notifications", 'accountNumber: "ACC-1001"', "actionId kind", 3)
    assert forwards == backwards == whole_notes and len(whole_notes) > 3


def test_default_and_largest_page_sizes(api: Api) -> None:
    default = api.client.data("{ cards { nodes { actionId } pageInfo { hasNextPage } } }")["cards"]
    assert len(default["nodes"]) == 20 and default["pageInfo"]["hasNextPage"] is True
    assert len(api.client.data("{ cards(first: 100) { nodes { actionId } } }")["cards"]["nodes"]) == 48
    last = api.client.data("{ cards(last: 100) { nodes { actionId } } }")["cards"]["nodes"]
    assert ids(last) == by_record_date(api)


@pytest.mark.parametrize("arguments", ["first: 1000", "first: 101", "last: 101", "first: -1", "last: -5"])
def test_page_size_limits_are_bad_user_input(api: Api, arguments: str) -> None:
    body = api.client.execute(f"{{ cards({arguments}) {{ nodes {{ actionId }} }} }}")
    error = only_error(body, "BAD_USER_INPUT")
    assert error["path"] == ["cards"]
    assert body["data"] is None
    body = api.client.execute(f'{{ entitlements(accountNumber: "ACC-1001", {arguments}) {{ nodes {{ actionId }} }} }}')
    only_error(body, "BAD_USER_INPUT")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


FORGED = {
    "not-base64": "forged!!",
    "not-json": _b64(b"hello"),
    "not-a-list": _b64(b'{"a": 1}'),
    "too-short": _b64(b'["2024-01-01"]'),
    "too-long": _b64(b'["2024-01-01", "CA-T-01", 3]'),
    "wrong-types": _b64(b'["not-a-date", "CA-T-01"]'),
    "not-utf8": _b64(b"\xff\xfe\xfa"),
    "empty-list": _b64(b"[]"),
    "huge": _b64(json.dumps(["not-a-date", "x" * 20_000]).encode()),
}


@pytest.mark.parametrize("cursor", FORGED.values(), ids=FORGED.keys())
@pytest.mark.parametrize("direction", ["after", "before"])
def test_forged_cursors_are_bad_user_input(api: Api, cursor: str, direction: str) -> None:
    query = f"query($c: String) {{ cards({direction}: $c) {{ nodes {{ actionId }} }} }}"
    body = api.client.execute(query, {"c": cursor})
    error = only_error(body, "BAD_USER_INPUT")
    assert "cursor" in error["message"]


def test_a_cursor_of_another_ordering_is_refused(api: Api) -> None:
    by_id = api.client.data("{ cards(first: 1, orderBy: ACTION_ID) { pageInfo { endCursor } } }")
    cursor = by_id["cards"]["pageInfo"]["endCursor"]
    body = api.client.execute("query($c: String) { cards(after: $c, orderBy: RECORD_DATE) { nodes { actionId } } }",
                              {"c": cursor})
    only_error(body, "BAD_USER_INPUT")


# --- N+1 -----------------------------------------------------------------------------------------

NESTED = ("query($n: Int!) { cards(first: $n, descending: true) { edges { cursor node { actionId "
          "security { name currency } entitlements { accountNumber holding cashAmount } } } "
          "pageInfo { hasNextPage } } }")


def test_a_page_of_cards_with_nested_fields_costs_the_same_statements_however_long(api: Api) -> None:
    counts = {}
    for size in (1, 5, 20, 48):
        with api.views.counting() as statements:
            nodes = api.client.data(NESTED, {"n": size})["cards"]["edges"]
        assert len(nodes) == size
        counts[size] = read_model_statements(statements)
        if size >= 20:
            assert len({n["node"]["security"]["name"] for n in nodes}) > 1
            assert sum(len(n["node"]["entitlements"]) for n in nodes) > 5
    assert {len(s) for s in counts.values()} == {3}, counts  # the page, its securities, their entitlements


def test_top_level_lookups_are_batched_too(api: Api) -> None:
    aliases = " ".join(f'a{i}: security(isin: "{isin}") {{ name }}' for i, isin in enumerate(sorted(NAMES)))
    with api.views.counting() as statements:
        data = api.client.data(f"{{ {aliases} }}")
    assert sorted(v["name"] for v in data.values()) == sorted(NAMES.values())
    assert len(read_model_statements(statements)) == 1


# --- limits and errors ---------------------------------------------------------------------------


def test_deep_introspection_is_too_deep(api: Api) -> None:
    deep = "{ __schema { types { fields { type { fields { type { fields { type { name } } } } } } } } }"
    body = api.client.execute(deep)
    only_error(body, "QUERY_TOO_DEEP")
    assert body["data"] is None


def test_the_deepest_example_query_is_allowed(api: Api) -> None:
    data = api.client.data(f'{{ cards(first: 1, filter: {{isin: "{APPLE}"}}) {{ edges {{ node {{ security {{ name }} '
                           '} } } }')
    assert data["cards"]["edges"][0]["node"]["security"]["name"] == "Apple Inc."


def test_depth_limit_counts_through_fragments(api: Api) -> None:
    app = create_query_app(build_graphql(), api.views, api.store, options=QueryApiOptions(max_depth=3))
    query = ("{ cards(first: 1) { ...Page } } fragment Page on CardConnection { edges { node { ...Card } } } "
             "fragment Card on Card { security { name } }")
    shallow = "{ cards(first: 1) { ...Page } } fragment Page on CardConnection { nodes { actionId } }"
    with ServerThread(app) as server, GraphQLClient(server.base_url) as client:
        body = client.execute(query)
        only_error(body, "QUERY_TOO_DEEP")
        assert body["data"] is None
        assert len(client.data(shallow)["cards"]["nodes"]) == 1


def test_token_limit(api: Api) -> None:
    huge = "{ projections { " + "name " * 2_100 + "} }"
    assert len(huge.encode()) < 65_536
    body = api.client.execute(huge)
    only_error(body, "QUERY_TOO_LARGE")
    assert body["data"] is None
    # Under the token limit but the same field 300 times is refused too (docs/graphql.md, "repeated"):
    # comments count as tokens, so these 1,900 are what is answered.
    assert api.client.data("{ projections { name } }" + " # padding\n" * 1_900)["projections"]


def test_alias_limit(api: Api) -> None:
    def aliased(count: int) -> str:
        return "{ " + " ".join(f"a{i}: security(isin: \"{APPLE}\") {{ name }}" for i in range(count)) + " }"

    only_error(api.client.execute(aliased(16)), "QUERY_TOO_LARGE")
    assert len(api.client.data(aliased(15))) == 15


def assert_body_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert response.headers["content-type"].startswith("application/json")
    only_error(response.json(), "BODY_TOO_LARGE")


def test_a_body_over_the_limit_is_413(api: Api) -> None:
    padded = "{ projections { name } }" + " " * 70_000
    assert_body_too_large(api.client.post(padded))

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body arrives
        yield b'{"query": "{ projections { name } }'
        for _ in range(80):
            yield b" " * 1_000
        yield b'"}'

    chunked = api.client.http.post(api.url, content=chunks(), headers={"content-type": "application/json"})
    assert_body_too_large(chunked)
    assert api.client.data("{ projections { name } }")["projections"], "the server still answers"


@pytest.mark.parametrize("body", [
    b'{"query": ', b"{not json}", b"\xff\xfe", b"[1, 2]", b"",
    b'"just a string"', b"42", b"null",
    b'{"query": 5}', b'{"query": "{ __typename }", "variables": [1]}', b"{}",
], ids=["truncated", "not-json", "not-utf8", "a-list", "empty", "a-string", "a-number", "null", "query-not-text",
        "variables-not-object", "no-query"])
def test_a_malformed_body_is_400_without_internals(api: Api, body: bytes) -> None:
    response = api.client.http.post(api.url, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text


def test_a_malformed_body_is_answered_graphql_style(api: Api) -> None:
    response = api.client.http.post(api.url, content=b'{"query": ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert error_codes(response.json())


def test_a_syntax_error(api: Api) -> None:
    body = api.client.execute("{ cards { nodes { actionId } ")
    error = only_error(body, "GRAPHQL_PARSE_FAILED")
    assert error["locations"] and body["data"] is None


@pytest.mark.parametrize("query", ["{ nope }", "{ cards { nodes { secret } } }", '{ card(id: "x") { actionId } }',
                                   "{ cards(first: \"ten\") { nodes { actionId } } }", "{ cards }",
                                   "{ cards(first: 2147483648) { nodes { actionId } } }",
                                   '{ cards(filter: {recordDateFrom: "2024-02-30"}) { nodes { actionId } } }'])
def test_an_invalid_document_is_a_validation_error(api: Api, query: str) -> None:
    body = api.client.execute(query)
    assert body["errors"] and set(error_codes(body)) == {"GRAPHQL_VALIDATION_FAILED"}, body
    assert body["data"] is None


@pytest.mark.parametrize(("query", "variables"), [
    ("query($n: Int) { cards(first: $n) { nodes { actionId } } }", {"n": "ten"}),
    ("query($n: Int!) { cards(first: $n) { nodes { actionId } } }", {}),
    ("query($d: Date) { holdings(accountNumber: \"ACC-1001\", asOf: $d) { isin } }", {"d": "2024-02-30"}),
    ("query($f: CardFilter) { cards(filter: $f) { nodes { actionId } } }", {"f": {"colour": "red"}}),
])
def test_bad_variables_are_the_clients_fault(api: Api, query: str, variables: dict[str, Any]) -> None:
    body = api.client.execute(query, variables)
    assert "INTERNAL_SERVER_ERROR" not in error_codes(body), body
    only_error(body, "BAD_USER_INPUT")


@pytest.mark.parametrize("query", ['mutation { announce(actionId: "x") }', "subscription { cards { actionId } }"])
def test_mutations_and_subscriptions_are_refused(api: Api, query: str) -> None:
    body = api.client.execute(query)
    only_error(body, "GRAPHQL_VALIDATION_FAILED")
    assert body["data"] is None


def test_get_queries_work(api: Api) -> None:
    response = api.client.get('{ card(actionId: "CA-APPLE-DIV") { status security { name } } }')
    assert response.status_code == 200, response.text
    assert response.json() == {"data": {"card": {"status": "validated", "security": {"name": "Apple Inc."}}}}
    with_variables = api.client.get("query($a: String!) { holdings(accountNumber: $a) { quantity } }",
                                    {"a": "ACC-1001"})
    assert with_variables.json() == {"data": {"holdings": [{"quantity": 700}]}}
    positioned = api.client.get("{ holdings(accountNumber: \"ACC-1001\") { quantity } }",
                                headers={"Eventfold-Position": str(api.head)})
    assert positioned.json()["extensions"]["consistency"]["reached"] is True


def test_a_mutation_over_get_is_refused(api: Api) -> None:
    response = api.client.get('mutation { announce(actionId: "x") }')
    assert 400 <= response.status_code < 500, response.text
    assert "data" not in response.text or response.json().get("data") is None


@pytest.mark.parametrize("value", ["abc", "-1", "", "1.5", "0x10", "+3", "1 2", "9" * 30 + "x", "9" * 5_000,
                                   "9" * 30, str(2**63), "1" + "0" * 19, "\u00b2"])
def test_a_bad_position_header_is_400(api: Api, value: str) -> None:
    """Not a non-negative integer, or past PostgreSQL's bigint (thousands of digits were a 500 with a
    traceback: Python refuses to read more than 4,300 digits as an int)."""
    encoded = value.encode("latin-1")
    for response in (api.client.http.post(api.url, json={"query": "{ projections { name } }"},
                                          headers=[(b"Eventfold-Position", encoded)]),
                     api.client.http.get(api.url, params={"query": "{ projections { name } }"},
                                         headers=[(b"Eventfold-Position", encoded)])):
        assert response.status_code == 400, (value[:50], response.text)
        error = only_error(response.json(), "BAD_REQUEST_HEADER")
        assert len(error["message"]) < 200, error


@pytest.mark.parametrize("values", [("abc", "1"), ("1", "abc"), ("9" * 5_000, "1"), ("1", "2")])
def test_several_position_headers_are_each_checked_and_must_agree(api: Api, values: tuple[str, ...]) -> None:
    """A malformed first of several headers was a 500 (the check read the last, the request the first)."""
    response = api.client.http.post(api.url, json={"query": "{ card(actionId: \"CA-APPLE-DIV\") { status } }"},
                                    headers=[("Eventfold-Position", v) for v in values])
    assert response.status_code == 400, (values[0][:20], response.text)
    only_error(response.json(), "BAD_REQUEST_HEADER")


@pytest.mark.parametrize("value", [str(2**63 - 1), "0" * 40 + "1", "007", "3"])
def test_a_position_up_to_a_bigint_with_leading_zeros_is_read(api: Api, value: str) -> None:
    query = "{ card(actionId: \"CA-APPLE-DIV\") { status } }"
    response = api.client.post(query, headers={"Eventfold-Position": value})
    assert response.status_code == 200, response.text
    consistency = response.json()["extensions"]["consistency"]
    assert consistency["requested"] == int(value)
    assert consistency["reached"] is (int(value) <= api.head), consistency
    again = api.client.http.post(api.url, json={"query": query},
                                 headers=[("Eventfold-Position", value), ("Eventfold-Position", str(int(value)))])
    assert again.status_code == 200 and again.json()["extensions"]["consistency"]["requested"] == int(value)


@pytest.mark.parametrize("value", ["\u0661\u0662\u0663", "\uff11", "+1", "1_000", "1,1", "1, 1", "0x1",
                                   "1e3", "\u00a01", "1\u00a0"])
def test_review_position_headers_of_other_digits_or_spellings_are_400(api: Api, value: str) -> None:
    """Unicode digits (sent as UTF-8), signs, separators, a comma-joined pair: 400, never a 500 or a position."""
    encoded = value.encode()
    alone = [(b"Eventfold-Position", encoded)]
    second = [(b"Eventfold-Position", b"1"), (b"eventfold-position", encoded)]
    for headers in (alone, second):
        response = api.client.http.post(api.url, json={"query": "{ card(actionId: \"CA-APPLE-DIV\") { status } }"},
                                        headers=headers)
        assert response.status_code == 400, (value, response.text)
        only_error(response.json(), "BAD_REQUEST_HEADER")


@pytest.mark.parametrize(("value", "status"), [(" 5", 200), ("5 ", 200), ("\t5\t", 200), ("0", 200), ("000", 200),
                                               (" ", 400), ("\t", 400), ("", 400), ("5 5", 400)])
def test_review_position_headers_with_spaces_sent_raw(api: Api, value: str, status: int) -> None:
    """Sent as bytes on a socket (httpx refuses such values): spaces around the digits are no part of the value."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(api.url)
    body = json.dumps({"query": "{ card(actionId: \"CA-APPLE-DIV\") { status } }"}).encode()
    request = (f"POST {url.path} HTTP/1.1\r\nHost: {url.hostname}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\nEventfold-Position:{value}\r\n\r\n").encode()
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        conn.sendall(request + body)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, _, payload = received.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == str(status).encode(), received[:300]
    if status == 200:
        answer = json.loads(payload.split(b"\r\n", 1)[1] if b"transfer-encoding: chunked" in head.lower() else payload)
        assert answer["extensions"]["consistency"]["requested"] == int(value.strip())


@pytest.mark.parametrize("content_type", ["Application/JSON", "APPLICATION/JSON; charset=UTF-8",
                                          "application/JSON;charset=utf-8"])
def test_review_a_json_post_is_read_whatever_the_case_of_its_media_type(api: Api, content_type: str) -> None:
    """Media types are case-insensitive (RFC 9110): the front check let them through, Strawberry refused them
    (400 "Unsupported content type")."""
    body = json.dumps({"query": "{ card(actionId: \"CA-APPLE-DIV\") { status } }"}).encode()
    for _ in range(2):  # computed, then kept
        response = api.client.http.post(api.url, content=body, headers={"content-type": content_type})
        assert response.status_code == 200, (content_type, response.text)
        assert response.json() == {"data": {"card": {"status": "validated"}}}


@pytest.mark.parametrize("content_types", [("application/json", "text/plain"), ("text/plain", "application/json"),
                                           ("application/json", "application/graphql")])
def test_review_several_content_types_that_disagree_are_400(api: Api, content_types: tuple[str, ...]) -> None:
    """The front check read the last, Strawberry the first: refused, naming application/json, whichever is first."""
    body = json.dumps({"query": "{ card(actionId: \"CA-APPLE-DIV\") { status } }"}).encode()
    response = api.client.http.post(api.url, content=body, headers=[("content-type", t) for t in content_types])
    assert response.status_code == 400, (content_types, response.text)
    error = only_error(response.json(), "BAD_REQUEST")
    assert "application/json" in error["message"], error


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "text/plain; charset=utf-8", "application/graphql",
                                          "application/x-www-form-urlencoded", "multipart/form-data",
                                          "application/jsonp", "text/application/json"])
def test_a_post_body_other_than_json_is_400(api: Api, content_type: str | None) -> None:
    """Only application/json is read as a request, even when its answer is kept (the cache's path
    looked at the body first): 400 with a message naming the type."""
    body = json.dumps({"query": "{ card(actionId: \"CA-APPLE-DIV\") { status } }"}).encode()
    assert api.client.http.post(api.url, content=body, headers={"content-type": "application/json"}).status_code == 200
    request = api.client.http.build_request("POST", api.url, content=body, headers=(
        {} if content_type is None else {"content-type": content_type}))
    assert ("content-type" in request.headers) == (content_type is not None)
    response = api.client.http.send(request)
    assert response.status_code == 400, (content_type, response.text)
    error = only_error(response.json(), "BAD_REQUEST")
    assert "application/json" in error["message"], error


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "application/json;charset=UTF-8"])
def test_a_json_post_is_read_with_a_charset(api: Api, content_type: str) -> None:
    body = json.dumps({"query": "{ card(actionId: \"CA-APPLE-DIV\") { status } }"}).encode()
    response = api.client.http.post(api.url, content=body, headers={"content-type": content_type})
    assert response.status_code == 200 and response.json() == {"data": {"card": {"status": "validated"}}}


def test_other_methods_and_paths(api: Api) -> None:
    assert api.client.http.put(api.url, json={"query": "{ projections { name } }"}).status_code == 405
    assert api.client.http.get(f"{api.client.base_url}/nowhere").status_code == 404
    assert api.client.http.get(f"{api.client.base_url}/healthz").json() == {"status": "ok"}


# --- an external GraphQL client ------------------------------------------------------------------

EXAMPLE_QUERIES = {
    "card": ('query Card($id: String!) { card(actionId: $id) { actionId status recordDate terms '
             'security { name } entitlements { accountNumber cashAmount newUnits } } }', {"id": "CA-APPLE-DIV"}),
    "cards": ('query Cards($f: CardFilter, $o: CardOrder!, $d: Boolean!) { cards(filter: $f, orderBy: $o, '
              'descending: $d, first: 5) { edges { cursor node { actionId } } pageInfo { hasNextPage endCursor } } }',
              {"f": {"status": "validated"}, "o": "ANNOUNCED_AT", "d": True}),
    "security": ("query S($i: String!) { security(isin: $i) { name currency } }", {"i": APPLE}),
    "holdings": ("query H($a: String!, $d: Date) { holdings(accountNumber: $a, asOf: $d) { isin quantity } }",
                 {"a": HISTORY_ACCOUNT, "d": None}),
    "entitlements": ("query E($a: String!) { entitlements(accountNumber: $a, last: 2) { nodes { actionId holding } "
                     "pageInfo { hasPreviousPage } } }", {"a": "ACC-1003"}),
    "notifications": ('query N($a: String!) { notifications(accountNumber: $a) { nodes { actionId kind message } } }',
                      {"a": "ACC-1003"}),
    "projections": ("query P { projections { name position lagEvents state } }", {}),
}


def test_an_external_client_introspects_and_runs_the_example_queries(api: Api) -> None:
    from gql import Client, GraphQLRequest
    from gql.transport.exceptions import TransportQueryError
    from gql.transport.httpx import HTTPXTransport
    from graphql import GraphQLError

    transport = HTTPXTransport(url=api.url, timeout=30, headers={"Eventfold-Position": str(api.head)})
    client = Client(transport=transport, fetch_schema_from_transport=True)
    with client as session:
        assert client.schema is not None
        query_type = client.schema.query_type
        assert query_type is not None
        assert set(EXAMPLE_QUERIES) == set(query_type.fields)
        assert client.schema.mutation_type is None  # commands go to the write API
        subscriptions = client.schema.subscription_type  # live queries, over WebSocket
        assert subscriptions is not None and set(subscriptions.fields) == {"card", "notifications", "projectionLag"}
        answers = {}
        for name, (query, variables) in EXAMPLE_QUERIES.items():
            result = session.execute(GraphQLRequest(query, variable_values=variables), get_execution_result=True)
            assert not result.errors, (name, result.errors)
            assert result.data, name
            answers[name] = result.data
            if name != "projections":
                assert result.extensions["consistency"]["reached"] is True, name
        with pytest.raises(GraphQLError):  # checked against the fetched schema before it is sent
            session.execute(GraphQLRequest("{ cards { nodes { nope } } }"))
        with pytest.raises(TransportQueryError) as refused:
            session.execute(GraphQLRequest("{ cards(first: 1000) { nodes { actionId } } }"))
        assert refused.value.errors and refused.value.errors[0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert answers["card"]["card"]["security"] == {"name": "Apple Inc."}
    assert len(answers["cards"]["cards"]["edges"]) == 5
    assert answers["holdings"]["holdings"] == [{"isin": ASML, "quantity": 120}]
    assert answers["security"]["security"] == {"name": "Apple Inc.", "currency": "USD"}
    assert {p["name"] for p in answers["projections"]["projections"]} == PROJECTIONS


# --- read your writes ----------------------------------------------------------------------------


@dataclass
class Live:
    write_url: str
    client: GraphQLClient
    impatient: GraphQLClient
    store: PostgresEventStore
    http: httpx.Client


@pytest.fixture
def live(pg_database: PgDatabase) -> Iterator[Live]:
    """Write API, relay and projections live (memory bus), and the query API, on one fresh schema."""
    with pg_database.fresh_schema("ryw") as schema:
        store = PostgresEventStore(pg_database.settings(schema, pool_size=4))
        store.create_schema()
        views = PostgresViewStore(pg_database.settings(schema, pool_size=6))
        views.create_schema()
        side = ReadSide(store, views)
        write_app = create_write_app(CommandBus(build_router(), store), WriteApiOptions())
        query_app = create_query_app(build_graphql(), views, store, options=QueryApiOptions(consistency_timeout=15))
        impatient_app = create_query_app(build_graphql(), views, store,
                                         options=QueryApiOptions(consistency_timeout=0.3))
        try:
            with (ServerThread(write_app) as writer, ServerThread(query_app) as reader,
                  ServerThread(impatient_app) as impatient, LiveProjections(side),
                  GraphQLClient(reader.base_url) as client, GraphQLClient(impatient.base_url) as hurried,
                  httpx.Client(timeout=30) as http):
                yield Live(writer.base_url, client, hurried, store, http)
        finally:
            views.close()
            store.close()


def test_a_query_with_the_commands_position_sees_the_write(live: Live) -> None:
    def command(command_name: str, **body: Any) -> int:
        return send_command(live.http, live.write_url, command_name, body)

    position = command("RegisterSecurity", isin=APPLE, name="Apple Inc.", currency="USD")
    body = live.client.execute(f'{{ security(isin: "{APPLE}") {{ name }} }}', position=position)
    assert body["data"] == {"security": {"name": "Apple Inc."}}
    consistency = body["extensions"]["consistency"]
    assert consistency["reached"] is True and consistency["requested"] == position
    assert set(consistency["positions"]) == {"cards"} and consistency["positions"]["cards"] >= position

    command("OpenAccount", account_number="RYW-1", holder_name="Reader")
    total = 0
    for quantity in (10, 20, 30, 40, 50):
        total += quantity
        position = command("CreditHoldings", account_number="RYW-1", isin=APPLE, quantity=quantity)
        data = live.client.data('{ holdings(accountNumber: "RYW-1") { quantity } }', position=position)
        assert data == {"holdings": [{"quantity": total}]}, "no stale read after the command's position"

    position = command("AnnounceCorporateAction", action_id="RYW-DIV", isin=APPLE, record_date="2999-01-01",
                       terms={"kind": "cash_dividend", "amount_per_unit": "1", "currency": "USD"})
    body = live.client.execute('{ card(actionId: "RYW-DIV") { status } }', position=position)
    assert body["data"] == {"card": {"status": "announced"}}
    assert set(body["extensions"]["consistency"]["positions"]) == {"cards"}, "what the selected fields declare"
    body = live.client.execute('{ card(actionId: "RYW-DIV") { status entitlements { holding } } }', position=position)
    assert set(body["extensions"]["consistency"]["positions"]) == {"cards", "entitlements"}
    position = command("ValidateCorporateAction", action_id="RYW-DIV")
    assert live.client.data('{ card(actionId: "RYW-DIV") { status } }', position=position) == {
        "card": {"status": "validated"}}
    # The process manager's own commands follow: the entitlements arrive without any new client write.
    def entitled() -> Any:
        return live.client.data('{ entitlements(accountNumber: "RYW-1") { nodes { holding cashAmount } } }',
                                position=position)["entitlements"]["nodes"]

    assert poll(entitled, what="the process manager's entitlements") == [{"holding": 150, "cashAmount": "150.00"}]


def test_a_position_beyond_the_head_answers_what_it_has_after_the_timeout(live: Live) -> None:
    send_command(live.http, live.write_url, "RegisterSecurity", {"isin": ASML, "name": "ASML", "currency": "EUR"})
    position = send_command(live.http, live.write_url, "OpenAccount", {"account_number": "RYW-2", "holder_name": "X"})
    live.client.data("{ holdings(accountNumber: \"RYW-2\") { quantity } }", position=position)
    beyond = live.store.head() + 1_000
    body = live.impatient.execute(f'{{ security(isin: "{ASML}") {{ name }} holdings(accountNumber: "RYW-2") '
                                  "{ quantity } }", position=beyond)
    assert "errors" not in body, body
    assert body["data"] == {"security": {"name": "ASML"}, "holdings": []}
    consistency = body["extensions"]["consistency"]
    assert consistency["reached"] is False and consistency["requested"] == beyond
    assert set(consistency["positions"]) == {"cards", "holdings"}
    assert all(position <= p < beyond for p in consistency["positions"].values()), consistency
    no_header = live.impatient.execute("{ holdings(accountNumber: \"RYW-2\") { quantity } }")
    assert "extensions" not in no_header or "consistency" not in no_header["extensions"]


def test_aliased_card_lookups_are_batched(api: Api) -> None:
    aliases = " ".join(f'c{i}: card(actionId: "CA-T-{i:02d}") {{ actionId }}' for i in range(10))
    with api.views.counting() as statements:
        data = api.client.data(f"{{ {aliases} }}")
    assert len(data) == 10 and all(data.values())
    assert len(read_model_statements(statements)) == 1
