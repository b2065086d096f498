"""Values a store can hold, and the errors of those it cannot.

PostgreSQL text and jsonb hold no NUL character and no unpaired surrogate, a bigint holds a
signed 64-bit integer and a numeric at most 131,072 digits before the point and 16,383 after it.
A command carrying anything else would be accepted and written as an event, and then fail every
projection that stores it, at every attempt. So every command refuses such values (see
``framework.commands.Command``), with their paths, before anything is written.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails, PydanticCustomError

__all__ = [
    "INT64",
    "INT64_MAX",
    "INT64_MIN",
    "NUMERIC_MAX_FRACTION_DIGITS",
    "NUMERIC_MAX_INTEGER_DIGITS",
    "IntBounds",
    "field_bounds",
    "unstorable",
]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
NUMERIC_MAX_INTEGER_DIGITS = 131_072
NUMERIC_MAX_FRACTION_DIGITS = 16_383

Loc = tuple[int | str, ...]
Child = tuple[object, Loc, "IntBounds"]


@dataclass(frozen=True, slots=True)
class IntBounds:
    """The default bounds of an int; a side is infinite where its field declares its own."""

    low: float
    high: float

    def problem(self, value: int) -> str | None:
        low, high = self.low, self.high
        if low <= value <= high:
            return None
        if low != -math.inf and high != math.inf:
            return f"must be between {low} and {high}"
        return f"must be at least {low}" if low != -math.inf else f"must be at most {high}"


INT64 = IntBounds(INT64_MIN, INT64_MAX)
_ATOMIC = frozenset({type(None), bool, float, date, datetime, time, timedelta, UUID})


def _declared_bounds(field: FieldInfo) -> IntBounds:
    """INT64, minus each side the field bounds itself (``Field(gt=0)`` keeps the upper default)."""
    low: float = INT64_MIN
    high: float = INT64_MAX
    for constraint in field.metadata:  # Gt, Ge, Lt, Le, or an Interval (conint) with several
        if _declares(constraint, "gt", "ge"):
            low = -math.inf
        if _declares(constraint, "lt", "le"):
            high = math.inf
    return IntBounds(low, high)


def _declares(constraint: object, *names: str) -> bool:
    return any(getattr(constraint, name, None) is not None for name in names)


@functools.cache
def field_bounds(model: type[BaseModel]) -> tuple[tuple[str, IntBounds], ...]:
    """Each field of a model with its int bounds (its own where declared, else INT64)."""
    return tuple((name, _declared_bounds(field)) for name, field in model.model_fields.items())


def unstorable(model: BaseModel) -> list[InitErrorDetails]:
    """An error for each value inside the model's fields that a store cannot hold, at its path.

    Walks nested models (pydantic or dataclasses), lists, tuples, sets and dicts (keys too). An
    int gets INT64, or the bounds its field declares where it is the field's own value. A quick
    pass answers for the usual model, where everything fits; only a model holding a bad value
    is walked again, without recursion, to say where.
    """
    try:
        if _model_fine(model):
            return []
    except RecursionError:
        pass  # nested too deeply for the quick pass: the walk below uses no stack
    return _errors(model)


# --- the quick pass: is everything fine? -------------------------------------------------------


def _fine(value: object, bounds: IntBounds = INT64) -> bool:
    if type(value) is str:
        return "\x00" not in value and (value.isascii() or not _has_unpaired_surrogate(value))
    if type(value) is int:
        return bounds.low <= value <= bounds.high
    if type(value) in _ATOMIC:
        return True
    if type(value) is Decimal:
        return _decimal_fits(value)
    if isinstance(value, BaseModel):
        return _model_fine(value)
    if type(value) is list or type(value) is tuple:
        return all(map(_fine, value))
    return _problem(value, bounds) is None and all(_fine(child, b) for child, _, b in _children(value, ()))


def _model_fine(model: BaseModel) -> bool:
    values = model.__dict__
    for name, bounds in field_bounds(type(model)):
        value = values.get(name)
        if value is not None and not _fine(value, bounds):
            return False
    return not model.model_extra or _fine(model.model_extra)


# --- the walk that says where ------------------------------------------------------------------


def _errors(model: BaseModel) -> list[InitErrorDetails]:
    errors: list[InitErrorDetails] = []
    pending: list[Child] = list(_children(model, ()))[::-1]
    while pending:
        value, loc, bounds = pending.pop()
        error = _problem(value, bounds)
        if error is not None:
            errors.append({"type": error, "loc": loc, "input": value})
        else:
            pending.extend(list(_children(value, loc))[::-1])  # reversed: errors in document order
    return errors


def _problem(value: object, bounds: IntBounds) -> PydanticCustomError | None:
    """What is wrong with this value itself (not what it contains), if anything."""
    if isinstance(value, str):
        message = _text_problem(value)
        return None if message is None else PydanticCustomError("unstorable_text", message)
    if isinstance(value, int) and not isinstance(value, bool):
        message = bounds.problem(value)
        return None if message is None else PydanticCustomError("int_out_of_range", message)
    if isinstance(value, Decimal):
        message = _decimal_problem(value)
        return None if message is None else PydanticCustomError("decimal_out_of_range", message)
    return None


def _text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "must not contain NUL characters"
    if not value.isascii() and _has_unpaired_surrogate(value):
        return "must not contain unpaired surrogates (it is not valid Unicode)"
    return None


def _has_unpaired_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _decimal_problem(value: Decimal) -> str | None:
    if _decimal_fits(value):
        return None
    return (f"must have at most {NUMERIC_MAX_INTEGER_DIGITS} digits before the decimal point"
            f" and {NUMERIC_MAX_FRACTION_DIGITS} after it")


def _decimal_fits(value: Decimal) -> bool:
    if not value.is_finite():
        return True  # refused by pydantic unless the field allows them; a numeric holds NaN and ±Infinity
    magnitude = value.adjusted()  # the exponent of the first digit: digits before the point - 1
    if magnitude >= NUMERIC_MAX_INTEGER_DIGITS:
        return value.is_zero()  # 0E+200000 is a plain 0
    # digits after the point = digits - 1 - magnitude; str() shows every digit and is quicker than as_tuple()
    if len(str(value)) - 1 - magnitude <= NUMERIC_MAX_FRACTION_DIGITS:
        return True
    return -int(value.as_tuple().exponent) <= NUMERIC_MAX_FRACTION_DIGITS


def _children(value: object, loc: Loc) -> Iterator[Child]:
    """What a value contains, each with its path and int bounds."""
    if isinstance(value, (str, int, Decimal)) or type(value) in _ATOMIC:
        return
    if isinstance(value, BaseModel):
        for name, bounds in field_bounds(type(value)):
            yield getattr(value, name, None), (*loc, name), bounds
        yield from _dict_children(value.model_extra or {}, loc)
    elif isinstance(value, dict):
        yield from _dict_children(value, loc)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for index, item in enumerate(value):
            yield item, (*loc, index), INT64
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield getattr(value, field.name), (*loc, field.name), INT64


def _dict_children(mapping: dict[Any, Any], loc: Loc) -> Iterator[Child]:
    for key, item in mapping.items():
        step = key if isinstance(key, (str, int)) else str(key)
        yield key, (*loc, step, "[key]"), INT64  # where pydantic reports a bad key
        yield item, (*loc, step), INT64
