"""Whether a committed row change can change what a query over a table returned (the response cache).

A query read (``views.query``: conditions, a sort, a cursor, a limit; ``paginate`` calls it) returned
``R``, the first ``limit`` rows, in sort order, of the rows meeting every condition strictly beyond the
cursor. A commit changes rows by key, and announces each one's new values (or its deletion):

- a changed row whose key is in ``R`` may change ``R`` (its values, or its place);
- any other changed row was not in ``R`` before the change, so only its new values count: deleted, or
  not meeting the conditions, or not beyond the cursor, it is not in the result after the change; meeting
  them, it enters ``R`` when ``R`` was short of ``limit`` (or had none) or when it sorts before ``R``'s
  last row, and otherwise stays beyond the page. Sort values are unique (the key ends them), so a
  changed row never ties with ``R``'s last row.

Each comparison is decided as PostgreSQL makes it, or not at all (the answer is dropped): a null compared
by order (a sort value, a cursor), a float or decimal NaN, a time without a zone (one with a zone is its
instant), an enum of other values than text (the store keeps them as text), text compared by order
when the store does not order text by code point (``framework.views.TextOrder``), a column whose value is
not announced or not a plain value. Conditions follow ``Condition.matches`` (SQL's: a null meets nothing
but ``is_null``); equality of text is bytewise in every deterministic collation, and so are ``prefix`` and
``contains``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from framework.query import Condition, Sort, column_value
from framework.readmodel import ReadModel

__all__ = ["QueryRead"]


class _Undecided(Exception):
    """A comparison Python cannot make exactly as the view store makes it."""


@dataclass(frozen=True, eq=False)
class QueryRead:
    """One query an answer read, and what it returned: the keys (as commits announce them), how many,
    and the last row's sort values (where a page ends)."""

    projection: str
    model: type[ReadModel]
    where: tuple[Condition, ...]
    sort: Sort
    after: tuple[Any, ...] | None
    limit: int | None
    keys: frozenset[tuple[str, ...]]
    count: int
    last: tuple[Any, ...] | None
    code_point_text: bool  # the store orders text as Python does

    @property
    def table(self) -> str:
        return self.model.table

    def changed_by(self, key: tuple[str, ...], values: Mapping[str, Any] | None,
                   read: dict[tuple[Any, ...], Any] | None = None) -> bool:
        """Whether the change of the row ``key`` to ``values`` (None: deleted) may change the result.
        ``read``: the values already read as their columns' types, shared by the reads one commit is
        checked against (each value is read once)."""
        if key in self.keys:
            return True
        if values is None or self.limit == 0:
            return False
        try:
            return self._enters(_Row(self.model, key, values, {} if read is None else read))
        except _Undecided:
            return True

    def _enters(self, values: _Row) -> bool:
        if not all(self._meets(condition, values) for condition in self.where):
            return False
        columns = self.sort.columns(self.model)
        own = tuple(values.get(c) for c in columns)
        if self.after is not None and not self._before(self.after, own):
            return False
        if self.limit is None or self.count < self.limit or self.last is None:
            return True
        return self._before(own, self.last)

    def _meets(self, condition: Condition, values: _Row) -> bool:
        actual = values.get(condition.column)
        operator, wanted = condition.operator, condition.value
        if operator == "is_null":
            return (actual is None) is bool(wanted)
        if actual is None:
            return False
        actual = _plain(actual)
        if operator in ("prefix", "contains"):
            if not isinstance(actual, str):
                raise _Undecided(condition.column)
            return actual.startswith(wanted) if operator == "prefix" else wanted in actual
        if operator == "in":
            items = [_plain(v) for v in wanted if v is not None]
            return any(_equal(actual, item) for item in items)
        if operator in ("eq", "ne"):
            return _equal(actual, _plain(wanted)) is (operator == "eq")
        return bool(_ORDERED[operator](self._order(actual, _plain(wanted))))

    def _before(self, first: Sequence[Any], second: Sequence[Any]) -> bool:
        """``first`` comes strictly before ``second`` in the sort's order (as a row comparison in SQL)."""
        for a, b in zip(first, second, strict=True):
            order = self._order(_plain(a), _plain(b))
            if order:
                return order < 0 if not self.sort.descending else order > 0
        return False

    def _order(self, a: Any, b: Any) -> int:
        """-1, 0 or 1 as the store orders ``a`` and ``b``; undecided when it may order them otherwise."""
        _exact(a)
        _exact(b)
        if a is None or b is None or (type(a) is not type(b) and not _numbers(a, b)):
            raise _Undecided("order")
        if isinstance(a, str) and not self.code_point_text:
            raise _Undecided("text order")
        return int(a > b) - int(a < b)


@dataclass(frozen=True)
class _Row:
    """A changed row's announced values, read as its columns' types when asked for."""

    model: type[ReadModel]
    key: tuple[str, ...]
    values: Mapping[str, Any]
    read: dict[tuple[Any, ...], Any]

    def get(self, column: str) -> Any:
        memo = (self.model, self.key, column)
        if memo not in self.read:
            self.read[memo] = self._read(column)
        found = self.read[memo]
        if found is _UNREADABLE:
            raise _Undecided(column)
        return found

    def _read(self, column: str) -> Any:
        if column not in self.values:
            return _UNREADABLE
        try:
            return column_value(self.model, column, self.values[column])
        except ValidationError:
            return _UNREADABLE


_UNREADABLE: Any = object()
_ORDERED = {"lt": lambda o: o < 0, "lte": lambda o: o <= 0, "gt": lambda o: o > 0, "gte": lambda o: o >= 0}


def _plain(value: Any) -> Any:
    if not isinstance(value, Enum):
        return value
    if not isinstance(value.value, str):  # the store keeps an enum's value as text: '10' sorts before '2'
        raise _Undecided("enum of other values than text")
    return value.value


def _numbers(a: Any, b: Any) -> bool:
    kinds = (int, float, Decimal)
    return isinstance(a, kinds) and isinstance(b, kinds) and not isinstance(a, bool) and not isinstance(b, bool)


def _equal(a: Any, b: Any) -> bool:
    _exact(a)
    _exact(b)
    if a is None or b is None:
        raise _Undecided("null")
    if isinstance(a, str) is not isinstance(b, str) or isinstance(a, bool) is not isinstance(b, bool):
        raise _Undecided("types")
    return bool(_instant(a) == _instant(b))


def _instant(value: Any) -> Any:
    """A time with a zone as its instant in UTC, which the store compares: Python compares two times of one
    zone by their wall clocks, and says two zones' times differ when one falls in an hour the zone repeats."""
    return value.astimezone(UTC) if isinstance(value, datetime) else value


def _exact(value: Any) -> None:
    """Refuse the values whose comparisons Python makes otherwise than the store."""
    if value is None or isinstance(value, bool | int | str | UUID):
        return
    if isinstance(value, float):
        if math.isnan(value):
            raise _Undecided("NaN")  # PostgreSQL orders NaN above every number, and equal to itself
        return
    if isinstance(value, Decimal):
        if value.is_nan():
            raise _Undecided("NaN")
        return
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise _Undecided("naive time")  # the store reads it in its session's time zone
        return
    if isinstance(value, date):
        return
    raise _Undecided(type(value).__name__)
