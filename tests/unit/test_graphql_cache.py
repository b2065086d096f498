"""The query API's schema parses and validates a document once, however often it is asked, and its
limits hold whether or not the answer comes from the cache."""

from __future__ import annotations

import asyncio
from unittest import mock

import framework.graphql.app as query_app
from framework.graphql.app import QueryApiOptions, build_schema
from projections.graphql import Query


def test_identical_documents_are_parsed_and_validated_once() -> None:
    schema = build_schema(Query, QueryApiOptions(introspection=True))
    document = '{ __type(name: "Card") { name } }'
    with mock.patch.object(query_app, "validate", side_effect=query_app.validate) as validate, \
            mock.patch.object(query_app, "parse", side_effect=query_app.parse) as parse:
        for _ in range(5):
            result = asyncio.run(schema.execute(document))
            assert result.errors is None, result.errors
    assert validate.call_count == 1
    assert parse.call_count == 1


def test_the_limits_still_apply_with_cached_validation() -> None:
    schema = build_schema(Query, QueryApiOptions(max_depth=2))
    deep = "{ cards { edges { node { security { name } } } } }"
    for _ in range(2):
        result = asyncio.run(schema.execute(deep))
        assert result.errors and result.errors[0].extensions == {"code": "QUERY_TOO_DEEP"}, result.errors


def test_a_comment_makes_a_new_text_that_is_checked_again() -> None:
    schema = build_schema(Query, QueryApiOptions(max_depth=2))
    for comment in ("", "# one", "# two", " " * 7):
        result = asyncio.run(schema.execute(f"{{ cards {{ edges {{ node {{ security {{ name }} }} }} }} }}{comment}"))
        assert result.errors and result.errors[0].extensions == {"code": "QUERY_TOO_DEEP"}, result.errors


def test_a_long_document_is_not_cached_but_still_checked() -> None:
    schema = build_schema(Query, QueryApiOptions())
    padded = "{ __typename }" + " " * 5_000
    with mock.patch.object(query_app, "validate", side_effect=query_app.validate) as validate:
        for _ in range(2):
            assert asyncio.run(schema.execute(padded)).errors is None
    assert validate.call_count == 2
