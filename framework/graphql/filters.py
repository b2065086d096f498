"""Filter inputs for GraphQL from read models: one input field per column, one operator per condition.

    CardWhere = filter_input(CorporateActionCard, name="CardWhere", fields=("isin", "status", "record_date"))

    async def cards(self, info: Info, where: CardWhere | None = None) -> ...:
        conditions = where.conditions() if where else []

gives the schema ``input CardWhere { isin: StringFilter, status: StringFilter, recordDate: DateFilter }``
and clients write ``cards(where: {isin: {in: ["US0378331005"]}, recordDate: {gte: "2026-01-01"}})``.
Every operator given must hold (AND); an operator left out or given as ``null`` sets no condition
(``isNull: true`` asks for null). The operators mean what ``framework.query.Condition`` says.
"""

from __future__ import annotations

import functools
import types as pytypes
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from uuid import UUID

import strawberry

from framework.errors import ConfigurationError
from framework.graphql.scalars import Long
from framework.query import Condition
from framework.readmodel import ReadModel

__all__ = [
    "BooleanFilter",
    "DateFilter",
    "DateTimeFilter",
    "DecimalFilter",
    "EnumFilter",
    "FloatFilter",
    "IntFilter",
    "LongFilter",
    "StringFilter",
    "UUIDFilter",
    "filter_input",
]

_IS_NULL = "Only rows where the column is null (true) or is not null (false)."
_IN = "The column equals one of these."


def _conditions(self: Any, column: str) -> list[Condition]:
    """The conditions this operator input sets on ``column`` (only the operators given)."""
    conditions = []
    for operator in ("eq", "ne", "lt", "lte", "gt", "gte", "prefix", "contains"):
        value = getattr(self, operator, None)
        if value is not None:
            conditions.append(Condition(column, operator, _plain(value)))
    if getattr(self, "in_", None) is not None:
        conditions.append(Condition(column, "in", [_plain(v) for v in self.in_]))
    if getattr(self, "is_null", None) is not None:
        conditions.append(Condition(column, "is_null", self.is_null))
    return conditions


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


@strawberry.input(description="Conditions on a text column, all of which must hold; matching is case-sensitive.")
class StringFilter:
    eq: str | None = None
    ne: str | None = strawberry.field(default=None, description="Differs (a null column never does).")
    in_: list[str] | None = strawberry.field(default=None, name="in", description=_IN)
    prefix: str | None = strawberry.field(default=None, description="Starts with this text, taken literally.")
    contains: str | None = strawberry.field(default=None, description="Holds this text, taken literally.")
    is_null: bool | None = strawberry.field(default=None, description=_IS_NULL)
    conditions = _conditions


@strawberry.input(description="Conditions on a column holding one of a set of values, all of which must hold.")
class EnumFilter:
    eq: str | None = None
    ne: str | None = None
    in_: list[str] | None = strawberry.field(default=None, name="in", description=_IN)
    is_null: bool | None = strawberry.field(default=None, description=_IS_NULL)
    conditions = _conditions


@strawberry.input(description="Conditions on a true/false column.")
class BooleanFilter:
    eq: bool | None = None
    is_null: bool | None = strawberry.field(default=None, description=_IS_NULL)
    conditions = _conditions


@strawberry.input(description="Conditions on a UUID column, all of which must hold.")
class UUIDFilter:
    eq: UUID | None = None
    ne: UUID | None = None
    in_: list[UUID] | None = strawberry.field(default=None, name="in", description=_IN)
    is_null: bool | None = strawberry.field(default=None, description=_IS_NULL)
    conditions = _conditions


def _ordered_filter(name: str, scalar: Any, what: str) -> type:
    """An operator input for an ordered scalar: comparisons, ``in`` and ``isNull``."""
    annotations = {op: scalar | None for op in ("eq", "ne", "lt", "lte", "gt", "gte")}
    annotations |= {"in_": list[scalar] | None, "is_null": bool | None}
    namespace: dict[str, Any] = {op: None for op in annotations}
    namespace |= {"__annotations__": annotations, "conditions": _conditions,
                  "in_": strawberry.field(default=None, name="in", description=_IN),
                  "is_null": strawberry.field(default=None, description=_IS_NULL)}
    return strawberry.input(type(name, (), namespace), description=f"Conditions on {what}, all of which must hold.")


IntFilter = _ordered_filter("IntFilter", int, "a 32-bit integer")
LongFilter = _ordered_filter("LongFilter", Long, "an integer column (64-bit, as the column)")
FloatFilter = _ordered_filter("FloatFilter", float, "a floating-point column")
DecimalFilter = _ordered_filter("DecimalFilter", Decimal, "a decimal column")
DateFilter = _ordered_filter("DateFilter", date, "a date column")
DateTimeFilter = _ordered_filter("DateTimeFilter", datetime, "a date-and-time column")

# bool before int and datetime before date: each is a subclass of the next
_FILTERS: list[tuple[type, type]] = [
    (bool, BooleanFilter), (Enum, EnumFilter), (str, StringFilter), (int, LongFilter), (float, FloatFilter),
    (Decimal, DecimalFilter), (datetime, DateTimeFilter), (date, DateFilter), (UUID, UUIDFilter),
]


def _filter_for(annotation: Any) -> type | None:
    """The operator input of a column's type; None for structured columns (lists, models, JSON)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _filter_for(get_args(annotation)[0])
    if origin in (Union, pytypes.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        return _filter_for(members[0]) if len(members) == 1 else None
    if origin is Literal:  # a closed set of values, like an enum's
        return EnumFilter if all(isinstance(a, str) for a in get_args(annotation)) else None
    if not isinstance(annotation, type):
        return None
    return next((f for python_type, f in _FILTERS if issubclass(annotation, python_type)), None)


def filter_input(
    model: type[ReadModel], *, name: str | None = None, fields: Sequence[str] | None = None, description: str = ""
) -> type:
    """A Strawberry input with an operator input per column of ``model`` (``fields``: those only;
    default every column of a scalar type). Its ``conditions()`` gives the ``Condition`` list for a query.
    Asked twice the same, it returns the same input (a schema cannot hold two types of one name)."""
    return _filter_input(model, name, None if fields is None else tuple(fields), description)


@functools.cache
def _filter_input(model: type[ReadModel], name: str | None, fields: tuple[str, ...] | None, description: str) -> type:
    chosen = fields if fields is not None else tuple(model.model_fields)
    annotations: dict[str, Any] = {}
    for column in chosen:
        info = model.model_fields.get(column)
        operators = _filter_for(info.annotation) if info else None
        if operators is None:
            if fields is not None:
                raise ConfigurationError(f"{model.__name__}.{column} cannot be filtered (not a scalar column)")
            continue
        annotations[column] = operators | None
    namespace: dict[str, Any] = {c: None for c in annotations}
    namespace |= {"__annotations__": annotations, "conditions": _model_conditions}
    created = type(name or f"{model.__name__}Filter", (), namespace)
    return strawberry.input(created, description=description or f"Rows of {model.__name__} meeting every condition.")


def _model_conditions(self: Any) -> list[Condition]:
    """Every condition given, on every column."""
    conditions: list[Condition] = []
    for column in type(self).__annotations__:
        operators = getattr(self, column)
        if operators is not None:
            conditions.extend(operators.conditions(column))
    return conditions
