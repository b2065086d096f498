"""Read models as GraphQL types, and Relay-style connections over pages of them."""

from __future__ import annotations

import types as pytypes
from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Generic, TypeVar, Union, get_args, get_origin
from uuid import UUID

import strawberry
from strawberry.scalars import JSON

from framework.graphql.limits import DEFAULT_PAGE, MAX_PAGE
from framework.query import InvalidQuery, Page, PageRequest
from framework.readmodel import ReadModel

__all__ = ["Connection", "Edge", "PageInfo", "connection", "graphql_type", "page_request"]

T = TypeVar("T")
R = TypeVar("R", bound=ReadModel)
_NATIVE = (str, int, float, bool, Decimal, date, datetime, UUID)


def _graphql_annotation(annotation: Any) -> Any:
    """The field's Python type where Strawberry understands it; JSON for everything structured."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _graphql_annotation(get_args(annotation)[0])
    if origin in (Union, pytypes.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _graphql_annotation(members[0]) | None
        return JSON
    if origin is list and all(a in _NATIVE for a in get_args(annotation)):
        return annotation
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return str
    if annotation in _NATIVE:
        return annotation
    return JSON


def graphql_type(
    model: type[ReadModel], *, name: str | None = None, exclude: Sequence[str] = (), description: str = ""
) -> type:
    """A Strawberry type with the read model's fields (camelCase in the schema).

    Subclass it under ``@strawberry.type`` to add fields (a nested lookup, say);
    build instances from rows with ``from_row``.
    """
    annotations = {
        field_name: _graphql_annotation(info.annotation)
        for field_name, info in model.model_fields.items()
        if field_name not in exclude
    }
    namespace: dict[str, Any] = {"__annotations__": annotations, "__doc__": description or model.__doc__}
    namespace["from_row"] = classmethod(_from_row)
    namespace["_columns"] = tuple(annotations)
    created = type(name or model.__name__, (), namespace)
    return strawberry.type(created, description=description or model.__doc__ or None)


def _from_row(cls: type[T], row: ReadModel) -> T:
    columns: tuple[str, ...] = getattr(cls, "_columns", ())  # inherited by subclasses that add fields
    return cls(**{n: _plain(getattr(row, n)) for n in columns})


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


@strawberry.type(description="Where a page sits in the whole list (Relay cursor connections).")
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


@strawberry.type
class Edge(Generic[T]):
    cursor: str
    node: T


@strawberry.type
class Connection(Generic[T]):
    edges: list[Edge[T]]
    page_info: PageInfo

    @strawberry.field(description="The nodes of the edges, for clients that need no cursors.")  # type: ignore[untyped-decorator]
    def nodes(self) -> list[T]:
        return [edge.node for edge in self.edges]


def connection(page: Page[R], convert: Callable[[R], T]) -> Connection[T]:
    edges = [Edge(cursor=c, node=convert(row)) for c, row in zip(page.cursors, page.rows, strict=True)]
    info = PageInfo(
        has_next_page=page.has_next,
        has_previous_page=page.has_previous,
        start_cursor=page.cursors[0] if page.cursors else None,
        end_cursor=page.cursors[-1] if page.cursors else None,
    )
    return Connection(edges=edges, page_info=info)


def page_request(
    first: int | None, after: str | None, last: int | None, before: str | None, *, max_size: int = MAX_PAGE
) -> PageRequest:
    """Relay arguments as a ``PageRequest``; ``first`` defaults to 20 when nothing is given.

    ``first`` with ``last`` is refused (``BAD_USER_INPUT``): Relay allows it, but no answer is unsurprising."""
    if first is not None and last is not None:
        raise InvalidQuery("pass `first` (forwards) or `last` (backwards), not both")
    if first is None and last is None:
        first = DEFAULT_PAGE if before is None else None
        last = DEFAULT_PAGE if before is not None else None
    return PageRequest(first=first, after=after, last=last, before=before, max_size=max_size)
