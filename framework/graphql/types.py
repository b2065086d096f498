"""Read models as GraphQL types, and Relay-style connections over pages of them."""

from __future__ import annotations

import types as pytypes
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Generic, Literal, TypeVar, Union, get_args, get_origin
from uuid import UUID

import strawberry
from pydantic import BaseModel, TypeAdapter
from strawberry.scalars import JSON

from framework.errors import ConfigurationError
from framework.graphql.limits import DEFAULT_PAGE, MAX_PAGE
from framework.graphql.scalars import Long
from framework.query import InvalidQuery, Page, PageRequest
from framework.readmodel import ReadModel

__all__ = ["Connection", "Edge", "PageInfo", "connection", "graphql_type", "page_request"]

T = TypeVar("T")
R = TypeVar("R", bound=ReadModel)
Convert = Callable[[Any], Any]
_NATIVE = (str, int, float, bool, Decimal, date, datetime, UUID)


def _same(value: Any) -> Any:
    return value


def _enum_value(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


def _graphql_field(annotation: Any) -> tuple[Any, Convert]:
    """The GraphQL type of a field's Python type, and how to turn a value into what that type holds.

    Scalars stay themselves (``int`` is ``Long``, 64-bit like the column; enums and literals become their
    values' type), lists and optionals keep their shape,
    nested pydantic models become object types of their own (a union of models, a GraphQL union);
    anything else (dicts, unions of scalars, tuples) is the ``JSON`` scalar, dumped as JSON."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _graphql_field(get_args(annotation)[0])
    if origin in (Union, pytypes.UnionType):
        return _union_field(annotation)
    if origin is Literal and len({type(a) for a in get_args(annotation)}) == 1:
        return _graphql_field(type(get_args(annotation)[0]))
    if origin is list and len(get_args(annotation)) == 1:
        item, convert = _graphql_field(get_args(annotation)[0])
        return list[item], _each(convert)  # type: ignore[valid-type]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return str, _enum_value
    if annotation is int:  # a bigint column: GraphQL's Int is 32-bit (framework.graphql.scalars)
        return Long, _same
    if annotation in _NATIVE:
        return annotation, _same
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _object_type(annotation)
    return JSON, _as_json(annotation)


def _union_field(annotation: Any) -> tuple[Any, Convert]:
    args = get_args(annotation)
    members = [a for a in args if a is not type(None)]
    optional = len(members) < len(args)
    if len(members) == 1:
        inner, convert = _graphql_field(members[0])
    elif all(isinstance(m, type) and issubclass(m, BaseModel) for m in members):
        inner, convert = _model_union(tuple(members))
    else:
        inner, convert = JSON, _as_json(annotation)
    return (inner | None, _or_none(convert)) if optional else (inner, convert)


def _each(convert: Convert) -> Convert:
    return _same if convert is _same else lambda values: [convert(v) for v in values]


def _or_none(convert: Convert) -> Convert:
    return _same if convert is _same else lambda value: None if value is None else convert(value)


def _as_json(annotation: Any) -> Convert:
    adapter: TypeAdapter[Any] = TypeAdapter(annotation)
    return lambda value: adapter.dump_python(value, mode="json")


_OBJECTS: dict[type[BaseModel], tuple[type, Convert]] = {}
_NAMES: dict[str, type[BaseModel]] = {}
_BUILDING: set[type[BaseModel]] = set()


def _object_type(model: type[BaseModel]) -> tuple[Any, Convert]:
    """The object type of a nested model, made once per model (one schema name, one class).
    A model nested in itself is JSON where it recurs."""
    if model in _BUILDING:
        return JSON, _as_json(model)
    if model not in _OBJECTS:
        name = model.model_config.get("title") or model.__name__
        taken = _NAMES.setdefault(name, model)
        if taken is not model:
            raise ConfigurationError(
                f"nested models {taken.__module__}.{taken.__qualname__} and {model.__module__}.{model.__qualname__}"
                f" would both be the GraphQL type {name!r}: give one a title (model_config = ConfigDict(title=...))")
        _BUILDING.add(model)
        try:
            created = _strawberry_type(name, model, model.model_fields.keys(), model.__doc__ or "")
        finally:
            _BUILDING.discard(model)
        _OBJECTS[model] = (created, _converter(created))
    return _OBJECTS[model]


def _model_union(members: tuple[type[BaseModel], ...]) -> tuple[Any, Convert]:
    types = [_object_type(m) for m in members]
    if any(t is JSON for t, _ in types):
        return JSON, _as_json(Union[members])  # noqa: UP007 - built at run time
    name = "Or".join(t.__name__ for t, _ in types)
    union: Any = Annotated[Union[tuple(t for t, _ in types)], strawberry.union(name)]  # noqa: UP007 - built at run time
    by_model = dict(zip(members, (c for _, c in types), strict=True))
    return union, lambda value: by_model[type(value)](value)


def _converter(created: type) -> Convert:
    return lambda value: _build(created, value)


def _strawberry_type(name: str, model: type[BaseModel], fields: Iterable[str], description: str) -> type:
    """A Strawberry type with ``fields`` of ``model``, each with its description, and their converters."""
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {"__doc__": description}
    converters: dict[str, Convert] = {}
    for field_name in fields:
        info = model.model_fields[field_name]
        annotations[field_name], converters[field_name] = _graphql_field(info.annotation)
        if info.description:
            namespace[field_name] = strawberry.field(description=info.description)
    namespace |= {"__annotations__": annotations, "_converters": converters, "_columns": tuple(annotations)}
    return strawberry.type(type(name, (), namespace), description=description or None)


def graphql_type(
    model: type[ReadModel], *, name: str | None = None, exclude: Sequence[str] = (), description: str = ""
) -> type:
    """A Strawberry type with the read model's fields (camelCase in the schema).

    Nested pydantic models become object types named after their class (or their ``title``),
    lists of them lists of those, and a union of models a GraphQL union. Subclass the result
    under ``@strawberry.type`` to add fields (a nested lookup, say); build instances from rows
    with ``from_row``.
    """
    fields = [f for f in model.model_fields if f not in exclude]
    created = _strawberry_type(name or model.__name__, model, fields, description or model.__doc__ or "")
    created.from_row = classmethod(_from_row)  # type: ignore[attr-defined]
    return created


def _from_row(cls: type[T], row: ReadModel) -> T:
    return _build(cls, row)


def _build(cls: type[T], row: BaseModel) -> T:
    """An instance of ``cls`` from a row: plain columns copied as they are, the others converted."""
    plain, converted = _plan_of(cls)
    values = row.__dict__  # pydantic keeps a model's fields there: no attribute lookup per column
    fields = {n: values[n] for n in plain}
    for name, convert in converted:
        fields[name] = convert(values[name])
    return cls(**fields)


_PLANS: dict[type, tuple[tuple[str, ...], tuple[tuple[str, Convert], ...]]] = {}


def _plan_of(cls: type) -> tuple[tuple[str, ...], tuple[tuple[str, Convert], ...]]:
    found = _PLANS.get(cls)
    if found is None:
        converters: dict[str, Convert] = getattr(cls, "_converters", {})  # inherited by subclasses adding fields
        found = _PLANS[cls] = (tuple(n for n, c in converters.items() if c is _same),
                               tuple((n, c) for n, c in converters.items() if c is not _same))
    return found


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
