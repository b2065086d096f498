"""GraphQL adapter: Strawberry types from read models, connections, filters, and the query API app.

Nothing here is imported by ``import framework``: this package is what pulls in strawberry.
"""

from framework.graphql.app import GraphQLSpec, QueryApiOptions, QueryContext, create_query_app
from framework.graphql.filters import (
    BooleanFilter,
    DateFilter,
    DateTimeFilter,
    DecimalFilter,
    EnumFilter,
    FloatFilter,
    IntFilter,
    LongFilter,
    StringFilter,
    UUIDFilter,
    filter_input,
)
from framework.graphql.permissions import requires
from framework.graphql.reads import reads, selects
from framework.graphql.scalars import Long
from framework.graphql.types import Connection, Edge, PageInfo, connection, graphql_type, page_request

__all__ = [
    "BooleanFilter",
    "Connection",
    "DateFilter",
    "DateTimeFilter",
    "DecimalFilter",
    "Edge",
    "EnumFilter",
    "FloatFilter",
    "GraphQLSpec",
    "IntFilter",
    "Long",
    "LongFilter",
    "PageInfo",
    "QueryApiOptions",
    "QueryContext",
    "StringFilter",
    "UUIDFilter",
    "connection",
    "create_query_app",
    "filter_input",
    "graphql_type",
    "page_request",
    "reads",
    "requires",
    "selects",
]
