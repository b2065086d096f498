"""GraphQL adapter: Strawberry types from read models, connections, and the query API app.

Nothing here is imported by ``import framework``: this package is what pulls in strawberry.
"""

from framework.graphql.app import GraphQLSpec, QueryApiOptions, QueryContext, create_query_app
from framework.graphql.permissions import requires
from framework.graphql.types import Connection, Edge, PageInfo, connection, graphql_type, page_request

__all__ = [
    "Connection",
    "Edge",
    "GraphQLSpec",
    "PageInfo",
    "QueryApiOptions",
    "QueryContext",
    "connection",
    "create_query_app",
    "graphql_type",
    "page_request",
    "requires",
]
