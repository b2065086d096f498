"""Queries over read models: conditions, key-set pagination and cursors.

Pages are cut by key set, never by offset: a page after a cursor is
"rows ordered by (sort field, key…) strictly after the cursor's values", so a
page stays correct while rows are added and costs the same however deep it is.
A cursor is opaque to clients (base64 of the row's sort values).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import types
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Generic, Literal, Protocol, TypeVar, Union, get_args, get_origin

from pydantic import TypeAdapter, ValidationError

from framework.errors import InvalidCommand
from framework.readmodel import ReadModel

__all__ = [
    "BY_KEY",
    "Condition",
    "InvalidQuery",
    "Page",
    "PageRequest",
    "Queryable",
    "QueryableAsync",
    "Sort",
    "check_conditions",
    "column_value",
    "decode_cursor",
    "encode_cursor",
    "paginate",
    "paginate_async",
    "scalar_columns",
    "sorted_rows",
]

R = TypeVar("R", bound=ReadModel)
Operator = Literal["eq", "ne", "lt", "lte", "gt", "gte", "in", "prefix", "contains", "is_null"]
OPERATORS: tuple[Operator, ...] = ("eq", "ne", "lt", "lte", "gt", "gte", "in", "prefix", "contains", "is_null")
_TEXT_ONLY = frozenset({"prefix", "contains"})


class InvalidQuery(InvalidCommand):
    """A query argument a client got wrong (a bad cursor, a page too large)."""

    code = "bad_user_input"


@dataclass(frozen=True)
class Condition:
    """One filter on a read model's column; a query keeps the rows meeting every condition.

    ``eq ne lt lte gt gte`` compare with ``value``; ``in`` takes a list (or tuple, set) of values;
    ``prefix`` and ``contains`` take text and match it literally and case-sensitively (``%`` and
    ``_`` are plain characters), on text columns only; ``is_null`` takes ``True`` (the column is
    null) or ``False`` (it is not). A null column meets no condition but ``is_null``: ``ne`` does
    not match it either (as in SQL), and comparing with ``None`` is refused (use ``is_null``).
    Every view-store adapter gives these the same meaning (the conformance suite checks it).
    """

    column: str
    operator: Operator
    value: Any

    def __post_init__(self) -> None:
        problem = _value_problem(self.operator, self.value)
        if problem:
            raise InvalidQuery(f"condition on {self.column!r}: {problem}")

    def matches(self, row: ReadModel) -> bool:
        actual = getattr(row, self.column)
        if self.operator == "is_null":
            return (actual is None) is bool(self.value)
        if actual is None:
            return False
        return bool(_MATCHERS[self.operator](_plain(actual), self.value))


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


_MATCHERS: dict[str, Any] = {
    "eq": lambda a, v: a == _plain(v),
    "ne": lambda a, v: a != _plain(v),
    "lt": lambda a, v: a < _plain(v),
    "lte": lambda a, v: a <= _plain(v),
    "gt": lambda a, v: a > _plain(v),
    "gte": lambda a, v: a >= _plain(v),
    "in": lambda a, v: any(item is not None and a == _plain(item) for item in v),
    "prefix": lambda a, v: a.startswith(v),
    "contains": lambda a, v: v in a,
}


def _value_problem(operator: str, value: Any) -> str | None:
    """What is wrong with ``value`` for ``operator`` (None: nothing), the same for every adapter."""
    if operator not in OPERATORS:
        return f"unknown operator {operator!r} (one of {', '.join(OPERATORS)})"
    if operator == "is_null":
        return None if isinstance(value, bool) else "is_null takes True or False"
    if operator == "in":
        if not isinstance(value, list | tuple | set | frozenset):
            return "in takes a list of values"
        return next((p for p in map(_scalar_problem, value) if p), None)
    if value is None:
        return f"{operator} cannot compare with null: use is_null"
    if operator in _TEXT_ONLY and not isinstance(value, str):
        return f"{operator} takes text, not {type(value).__name__}"
    return _scalar_problem(value)


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, str) and "\x00" in value:
        return "text cannot contain NUL (\\u0000)"
    return None


def check_conditions(model: type[ReadModel], where: Sequence[Condition]) -> list[Condition]:
    """``where`` with each value validated as its column's type (``"2"`` for an int column becomes 2,
    an enum's value its member), so that every adapter compares the same values; a column the model
    lacks, text matching on a column that is not text, or a value the column cannot hold is refused."""
    return [_checked(model, condition) for condition in where]


def _checked(model: type[ReadModel], condition: Condition) -> Condition:
    field_info = model.model_fields.get(condition.column)
    if field_info is None:
        raise InvalidQuery(f"{model.__name__} has no column {condition.column!r}")
    if condition.operator in _TEXT_ONLY and not _is_text(field_info.annotation):
        raise InvalidQuery(f"{condition.operator} needs a text column; {condition.column!r} is not one")
    if condition.operator in ("is_null", *_TEXT_ONLY):
        return condition
    adapter = _adapter(model, condition.column)
    try:
        if condition.operator == "in":
            value: Any = [None if v is None else adapter.validate_python(v) for v in condition.value]
        else:
            value = adapter.validate_python(condition.value)
    except ValidationError:
        raise InvalidQuery(f"condition on {condition.column!r}: {condition.value!r:.80} is not a value of the column"
                           ) from None
    return Condition(condition.column, condition.operator, value)


def _is_text(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _is_text(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return len(members) == 1 and _is_text(members[0])
    return isinstance(annotation, type) and issubclass(annotation, str) and not issubclass(annotation, Enum)


@dataclass(frozen=True)
class Sort:
    """Order by one column, ties broken by the key, all in one direction."""

    column: str | None = None  # None: by key only
    descending: bool = False

    def columns(self, model: type[ReadModel]) -> tuple[str, ...]:
        lead = (self.column,) if self.column and self.column not in model.key else ()
        return (*lead, *model.key)

    def values(self, row: ReadModel) -> tuple[Any, ...]:
        return tuple(getattr(row, c) for c in self.columns(type(row)))


BY_KEY = Sort()


@dataclass(frozen=True)
class PageRequest:
    """Relay-style arguments: ``first``/``after`` forwards, ``last``/``before`` backwards."""

    first: int | None = None
    after: str | None = None
    last: int | None = None
    before: str | None = None
    max_size: int = 100

    def size(self) -> int:
        requested = self.last if self.backwards else self.first
        size = self.max_size if requested is None else requested
        if size < 0 or size > self.max_size:
            raise InvalidQuery(f"a page holds 0 to {self.max_size} items, not {size}")
        return size

    @property
    def backwards(self) -> bool:
        return self.last is not None or self.before is not None


@dataclass
class Page(Generic[R]):
    rows: list[R]
    sort: Sort
    has_next: bool
    has_previous: bool
    cursors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cursors = [encode_cursor(self.sort.values(row)) for row in self.rows]


_VALUES: TypeAdapter[list[Any]] = TypeAdapter(list[Any])


def encode_cursor(values: Sequence[Any]) -> str:
    raw = _VALUES.dump_json(list(values))
    return base64.urlsafe_b64encode(raw).decode()


@functools.lru_cache(maxsize=512)
def _adapter(model: type[ReadModel], column: str) -> TypeAdapter[Any]:
    return TypeAdapter(model.model_fields[column].annotation or Any)


def column_value(model: type[ReadModel], column: str, value: Any) -> Any:
    """``value`` (JSON, or a value already) read as ``model``'s ``column`` holds it; ValidationError if it cannot be."""
    return _adapter(model, column).validate_python(value)


_SCALARS = (bool, int, float, Decimal, date, uuid.UUID, str, Enum)  # a datetime is a date


@functools.cache
def scalar_columns(model: type[ReadModel]) -> tuple[str, ...]:
    """The columns holding one plain value (text, a number, a time, an enum...), not a structure: the
    ones a query can compare and order by as every view store does."""
    return tuple(name for name, info in model.model_fields.items() if _is_scalar(info.annotation))


def _is_scalar(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _is_scalar(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return len(members) == 1 and _is_scalar(members[0])
    # (not a Literal: PostgreSQL keeps one as jsonb, where None is JSON's null and IS NOT NULL)
    return isinstance(annotation, type) and issubclass(annotation, _SCALARS)


def decode_cursor(cursor: str, model: type[ReadModel], sort: Sort) -> tuple[Any, ...]:
    columns = sort.columns(model)
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(values, list) or len(values) != len(columns):
            raise ValueError("wrong shape")
        return tuple(_adapter(model, c).validate_python(v) for c, v in zip(columns, values, strict=True))
    except (ValueError, binascii.Error, ValidationError, UnicodeError):
        raise InvalidQuery(f"cursor {cursor[:40]!r} is not one this query handed out") from None


class Queryable(Protocol):
    def query(
        self,
        name: str,
        model: type[R],
        where: Sequence[Condition] = (),
        sort: Sort = BY_KEY,
        *,
        after: tuple[Any, ...] | None = None,
        limit: int | None = None,
    ) -> list[R]: ...


def paginate(
    views: Queryable,
    name: str,
    model: type[R],
    request: PageRequest,
    where: Sequence[Condition] = (),
    sort: Sort = BY_KEY,
) -> Page[R]:
    """One page of rows, forwards or backwards from a cursor, knowing if more lie beyond."""
    plan = _PagePlan.of(model, request, sort)
    return plan.page(views.query(name, model, where, plan.sort, after=plan.after, limit=plan.size + 1))


class QueryableAsync(Protocol):
    async def query_async(
        self,
        name: str,
        model: type[R],
        where: Sequence[Condition] = (),
        sort: Sort = BY_KEY,
        *,
        after: tuple[Any, ...] | None = None,
        limit: int | None = None,
    ) -> list[R]: ...


async def paginate_async(
    views: QueryableAsync,
    name: str,
    model: type[R],
    request: PageRequest,
    where: Sequence[Condition] = (),
    sort: Sort = BY_KEY,
) -> Page[R]:
    """``paginate`` through a store's ``query_async`` (on the event loop): the same page."""
    plan = _PagePlan.of(model, request, sort)
    return plan.page(await views.query_async(name, model, where, plan.sort, after=plan.after, limit=plan.size + 1))


@dataclass(frozen=True)
class _PagePlan:
    """The query behind one page (one row more than the page, to know if more lie beyond), and the page
    made of its rows."""

    request: PageRequest
    requested: Sort  # the page's order
    sort: Sort  # the query's: reversed to go backwards
    after: tuple[Any, ...] | None
    size: int

    @classmethod
    def of(cls, model: type[ReadModel], request: PageRequest, sort: Sort) -> _PagePlan:
        size = request.size()
        if request.backwards:
            before = decode_cursor(request.before, model, sort) if request.before else None
            return cls(request, sort, Sort(sort.column, not sort.descending), before, size)
        after = decode_cursor(request.after, model, sort) if request.after else None
        return cls(request, sort, sort, after, size)

    def page(self, rows: list[R]) -> Page[R]:
        size, request = self.size, self.request
        if request.backwards:
            page = list(reversed(rows[:size]))
            return Page(page, self.requested, has_next=request.before is not None, has_previous=len(rows) > size)
        return Page(rows[:size], self.requested, has_next=len(rows) > size, has_previous=request.after is not None)


def sorted_rows(
    rows: list[R], where: Sequence[Condition], sort: Sort, after: tuple[Any, ...] | None, limit: int | None
) -> list[R]:
    """The in-memory meaning of ``query``; adapters that compute in SQL must agree with it."""
    try:
        chosen = [r for r in rows if all(c.matches(r) for c in where)]
    except TypeError as error:  # a value Python cannot order against the column's (naive and aware times)
        raise InvalidQuery(f"a condition cannot be compared with its column: {error}") from None
    chosen.sort(key=sort.values, reverse=sort.descending)
    if after is not None:
        chosen = [r for r in chosen if _beyond(sort.values(r), after, sort.descending)]
    return chosen if limit is None else chosen[:limit]


def _beyond(values: tuple[Any, ...], after: tuple[Any, ...], descending: bool) -> bool:
    return values < after if descending else values > after
