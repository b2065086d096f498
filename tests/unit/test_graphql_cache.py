"""The query API's schema validates a document once, however often it is asked."""

from __future__ import annotations

import asyncio
from unittest import mock

import strawberry.extensions.validation_cache as validation_cache
import strawberry.schema.schema as strawberry_schema

from framework.graphql.app import QueryApiOptions, build_schema
from projections.graphql import PROJECTIONS_BY_FIELD, Query


def test_identical_documents_are_validated_once() -> None:
    schema = build_schema(Query, QueryApiOptions(), PROJECTIONS_BY_FIELD)
    document = '{ __type(name: "Card") { name } }'
    real = strawberry_schema.validate_document
    # Strawberry wraps validate_document once per process: forget a wrapper an earlier test made.
    validation_cache._get_validate_cache.cache_clear()
    with mock.patch.object(strawberry_schema, "validate_document", side_effect=real) as validate:
        for _ in range(5):
            result = asyncio.run(schema.execute(document))
            assert result.errors is None, result.errors
    validation_cache._get_validate_cache.cache_clear()
    assert validate.call_count == 1


def test_the_limits_still_apply_with_cached_validation() -> None:
    schema = build_schema(Query, QueryApiOptions(max_depth=2), PROJECTIONS_BY_FIELD)
    deep = "{ cards { edges { node { security { name } } } } }"
    for _ in range(2):
        result = asyncio.run(schema.execute(deep))
        assert result.errors and "exceeds maximum operation depth" in result.errors[0].message
