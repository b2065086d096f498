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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

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
    "Sort",
    "decode_cursor",
    "encode_cursor",
    "paginate",
    "sorted_rows",
]

R = TypeVar("R", bound=ReadModel)
Operator = Literal["eq", "lt", "lte", "gt", "gte", "in"]


class InvalidQuery(InvalidCommand):
    """A query argument a client got wrong (a bad cursor, a page too large)."""

    code = "bad_user_input"


@dataclass(frozen=True)
class Condition:
    column: str
    operator: Operator
    value: Any

    def matches(self, row: ReadModel) -> bool:
        actual = getattr(row, self.column)
        if self.operator == "in":
            return bool(actual in self.value)
        if actual is None:
            return False
        return bool({
            "eq": actual == self.value, "lt": actual < self.value, "lte": actual <= self.value,
            "gt": actual > self.value, "gte": actual >= self.value,
        }[self.operator])


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
    size = request.size()
    if request.backwards:
        reverse = Sort(sort.column, not sort.descending)
        before = decode_cursor(request.before, model, sort) if request.before else None
        rows = views.query(name, model, where, reverse, after=before, limit=size + 1)
        page = list(reversed(rows[:size]))
        return Page(page, sort, has_next=request.before is not None, has_previous=len(rows) > size)
    after = decode_cursor(request.after, model, sort) if request.after else None
    rows = views.query(name, model, where, sort, after=after, limit=size + 1)
    return Page(rows[:size], sort, has_next=len(rows) > size, has_previous=request.after is not None)


def sorted_rows(
    rows: list[R], where: Sequence[Condition], sort: Sort, after: tuple[Any, ...] | None, limit: int | None
) -> list[R]:
    """The in-memory meaning of ``query``; adapters that compute in SQL must agree with it."""
    chosen = [r for r in rows if all(c.matches(r) for c in where)]
    chosen.sort(key=sort.values, reverse=sort.descending)
    if after is not None:
        chosen = [r for r in chosen if _beyond(sort.values(r), after, sort.descending)]
    return chosen if limit is None else chosen[:limit]


def _beyond(values: tuple[Any, ...], after: tuple[Any, ...], descending: bool) -> bool:
    return values < after if descending else values > after
