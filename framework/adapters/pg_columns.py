"""How read-model fields become PostgreSQL columns, and rows become parameters and back."""

from __future__ import annotations

import types
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, Union, get_args, get_origin
from uuid import UUID

from psycopg.types.json import Jsonb
from pydantic import BaseModel

from framework.readmodel import ReadModel

__all__ = ["column_definitions", "sql_type", "to_parameters", "unwrap"]

_SCALARS: list[tuple[type, str]] = [
    (bool, "boolean"),  # before int: bool is an int
    (int, "bigint"),
    (float, "double precision"),
    (Decimal, "numeric"),
    (datetime, "timestamptz"),  # before date: datetime is a date
    (date, "date"),
    (UUID, "uuid"),
    (str, "text"),
]


def unwrap(annotation: Any) -> tuple[Any, bool]:
    """The annotation without Annotated/Optional, and whether None is allowed."""
    nullable = False
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            arguments = [a for a in get_args(annotation) if a is not type(None)]
            nullable = nullable or len(arguments) < len(get_args(annotation))
            if len(arguments) != 1:
                return annotation, nullable
            annotation = arguments[0]
        else:
            return annotation, nullable


def sql_type(annotation: Any) -> tuple[str, bool]:
    inner, nullable = unwrap(annotation)
    if isinstance(inner, type):
        if issubclass(inner, Enum):
            return "text", nullable
        for python_type, name in _SCALARS:
            if issubclass(inner, python_type):
                return name, nullable
    return "jsonb", nullable


def column_definitions(model: type[ReadModel]) -> list[tuple[str, str, bool]]:
    """(name, SQL type, nullable) for every field."""
    return [(name, *sql_type(field.annotation)) for name, field in model.model_fields.items()]


def to_parameters(row: ReadModel, jsonb_columns: frozenset[str]) -> list[Any]:
    values = []
    for name in type(row).model_fields:
        value = getattr(row, name)
        if name in jsonb_columns:
            value = Jsonb(_jsonable(value))
        elif isinstance(value, Enum):
            value = value.value
        values.append(value)
    return values


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (Decimal, date, UUID)):
        return str(value) if not isinstance(value, date) else value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value
