"""The document limits (``framework.graphql.limits``): what each counts, and that each fragment is measured once."""

from __future__ import annotations

from unittest import mock

import pytest
from graphql import get_introspection_query, parse

from framework.graphql.app import QueryApiOptions, build_schema
from framework.graphql.limits import DocumentLimits, _Checker, check_document
from projections.graphql import Query

SCHEMA = build_schema(Query, QueryApiOptions())._schema
OPEN = DocumentLimits(introspection=True)


def code(query: str, limits: DocumentLimits = OPEN) -> str | None:
    errors = check_document(SCHEMA, parse(query), limits)
    return str((errors[0].extensions or {})["code"]) if errors else None


def doubling(levels: int, leaf: str = "__typename") -> str:
    parts = ["query { ...F0 }"]
    parts += [f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(levels)]
    return " ".join([*parts, f"fragment F{levels} on Query {{ {leaf} }}"])


def test_each_fragment_is_measured_once_however_often_it_is_spread() -> None:
    real = _Checker._selections
    with mock.patch.object(_Checker, "_selections", autospec=True, side_effect=real) as measured:
        assert code(doubling(200)) == "QUERY_TOO_LARGE"
    assert measured.call_count == 202  # each fragment's selection set, and the operation's


@pytest.mark.parametrize(("levels", "expected"), [(12, None), (13, "QUERY_TOO_LARGE")])
def test_fields_and_spreads_count_once_per_use(levels: int, expected: str | None) -> None:
    # 2**levels leaves and 2**(levels + 1) - 1 spreads: 12,287 for 12 levels
    limits = DocumentLimits(max_cost=3 * 2**12 - 1, introspection=True)
    assert code(doubling(levels), limits) == expected


def test_depth_counts_through_fragments_and_skips_introspection_fields() -> None:
    limits = DocumentLimits(max_depth=3, introspection=True)
    assert code("{ cards { ...P } } fragment P on CardConnection { edges { node { ...C } } } "
                "fragment C on Card { security { name } }", limits) == "QUERY_TOO_DEEP"
    assert code("{ cards { ...P } } fragment P on CardConnection { edges { node { actionId } } }", limits) is None
    assert code('{ __type(name: "Card") { fields { type { ofType { name } } } } }', limits) is None


def test_nesting_counts_everything() -> None:
    assert code('{ __type(name: "Card") { ' + "ofType { " * 31 + "name" + " }" * 31 + " } }") is None
    assert code('{ __type(name: "Card") { ' + "ofType { " * 32 + "name" + " }" * 32 + " } }") == "QUERY_TOO_DEEP"
    assert code('{ card(actionId: ' + "[" * 32 + '"x"' + "]" * 32 + ") { actionId } }") is None  # invalid, later
    assert code('{ card(actionId: ' + "[" * 33 + '"x"' + "]" * 33 + ") { actionId } }") == "QUERY_TOO_DEEP"
    assert code('query($a: String = ' + "[" * 40 + '"x"' + "]" * 40 + ") { __typename }") == "QUERY_TOO_DEEP"
    assert code("{ " + "... on Query { " * 32 + "__typename" + " }" * 32 + " }") is None
    assert code("{ " + "... on Query { " * 33 + "__typename" + " }" * 33 + " }") == "QUERY_TOO_DEEP"


def test_aliases_count_per_use() -> None:
    assert code(doubling(3, "a: __typename b: __typename")) == "QUERY_TOO_LARGE"  # 16 > 15
    assert code(doubling(2, "a: __typename b: __typename c: __typename")) is None  # 12


@pytest.mark.parametrize(("query", "cost"), [
    ("{ cards { nodes { actionId } } }", 1 + 20 * 2),  # the default page
    ("{ cards(first: 100) { nodes { actionId isin } } }", 1 + 100 * 3),
    ("{ cards(last: 7) { nodes { actionId } pageInfo { hasNextPage } } }", 1 + 7 * 4),
    ("query($n: Int) { cards(first: $n) { nodes { actionId } } }", 1 + 100 * 2),  # a variable: the largest page
    ("{ cards(first: 0) { nodes { actionId } } }", 1 + 1 * 2),
    ('{ holdings(accountNumber: "A") { isin } }', 2),  # a list without pages counts once
])
def test_cost_multiplies_a_connections_fields_by_its_page(query: str, cost: int) -> None:
    assert code(query, DocumentLimits(max_cost=cost)) is None
    assert code(query, DocumentLimits(max_cost=cost - 1)) == "QUERY_TOO_LARGE"


@pytest.mark.parametrize(("query", "pairs"), [
    ("{ __typename __typename __typename }", 3),
    ('{ security(isin: "x") { name } security(isin: "x") { name currency } }', 2),
    ("{ ...A ...B ...C } fragment A on Query { __typename } fragment B on Query { __typename } "
     "fragment C on Query { __typename }", 3 + 3),  # three fragment pairs, three field pairs
    ("{ ...A ...A ...A } fragment A on Query { __typename }", 0),  # one fragment, compared once
])
def test_overlaps_count_pairs_of_same_named_selections_in_one_place(query: str, pairs: int) -> None:
    assert code(query, DocumentLimits(max_overlaps=pairs)) is None
    if pairs:
        assert code(query, DocumentLimits(max_overlaps=pairs - 1)) == "QUERY_TOO_LARGE"


def test_the_introspection_query_is_within_the_default_limits() -> None:
    assert code(get_introspection_query(descriptions=True)) is None
    assert code(get_introspection_query(), DocumentLimits()) == "GRAPHQL_VALIDATION_FAILED"


def test_introspection_is_found_inside_fragments() -> None:
    query = "{ ...F } fragment F on Query { ...G } fragment G on Query { __schema { queryType { name } } }"
    assert code(query, DocumentLimits()) == "GRAPHQL_VALIDATION_FAILED"
    assert code("{ __typename }", DocumentLimits()) is None


def test_nul_in_a_literal_anywhere() -> None:
    for query in ('{ card(actionId: "\\u0000") { actionId } }', 'query($a: String = "\\u0000") { __typename }',
                  '{ __typename @include(if: true) ...F } fragment F on Query { card(actionId: "a\\u0000b") '
                  "{ actionId } }", '{ cards(filter: {status: "\\u0000"}) { nodes { actionId } } }'):
        assert code(query) == "BAD_USER_INPUT", query


def test_cycles_are_refused_and_unknown_fragments_left_to_graphql_core() -> None:
    assert code("{ ...A } fragment A on Query { ...B } fragment B on Query { cards { nodes { ...C } } } "
                "fragment C on Card { security { ...D } } fragment D on Security { ...A }"
                ) == "GRAPHQL_VALIDATION_FAILED"
    assert code("{ ...Nope cards { ...AlsoNope } }") is None
