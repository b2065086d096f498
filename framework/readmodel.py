"""Read models: typed rows that projections keep, one pydantic class per table.

    class Holding(ReadModel):
        table = "holdings"
        key = ("account_number", "isin")
        indexes = (("isin",),)

        account_number: str
        isin: str
        quantity: int

The PostgreSQL adapter derives typed columns from the fields (str → text,
int → bigint, Decimal → numeric, date → date, datetime → timestamptz, bool,
UUID, enums → text, anything structured → jsonb), a primary key from ``key``
and an index per entry of ``indexes``.
"""

from __future__ import annotations

import functools
import types
from datetime import date
from decimal import Decimal
from enum import Enum
from typing import Annotated, Any, ClassVar, Self, Union, get_args, get_origin
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from framework.errors import ConfigurationError

__all__ = ["ReadModel"]


class ReadModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    table: ClassVar[str]
    key: ClassVar[tuple[str, ...]]
    indexes: ClassVar[tuple[tuple[str, ...], ...]] = ()
    fillfactor: ClassVar[int | None] = None
    """Per cent of each page a new table fills (10-100; None: the database's default): room left for
    rows updated in place (PostgreSQL's HOT updates), for a model whose rows are updated often."""

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "table" not in cls.__dict__ or "key" not in cls.__dict__:
            raise ConfigurationError(f"read model {cls.__name__} must declare `table` and `key`")
        for column in (*cls.key, *(c for index in cls.indexes for c in index)):
            if column not in cls.model_fields:
                raise ConfigurationError(f"{cls.__name__} has no field {column!r}")
        _check_fillfactor(cls)

    def key_values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, column) for column in self.key)

    def copy_row(self) -> Self:
        """An independent copy: shallow when every field is a scalar (cheap), deep otherwise; the row
        itself when nothing can change it (``immutable``)."""
        if type(self).immutable():
            return self
        return self.model_copy(deep=not type(self)._flat())

    @classmethod
    @functools.cache
    def immutable(cls) -> bool:
        """Whether rows of this model cannot be changed once made: frozen (``model_config =
        ConfigDict(frozen=True)``: pydantic refuses assignments), every field a scalar (no list or dict
        to change in place) and no private attributes. Such rows are handed to handlers and queries
        without a copy."""
        return bool(cls.model_config.get("frozen")) and cls._flat() and not cls.__private_attributes__

    @classmethod
    @functools.cache
    def _flat(cls) -> bool:
        """Every value a row holds is a scalar: its fields are, and it takes no extra fields (whose values
        may be lists or dicts, which a shallow copy or a frozen row would share)."""
        return cls.model_config.get("extra") != "allow" and all(
            _is_scalar(field.annotation) for field in cls.model_fields.values())


def _check_fillfactor(cls: type[ReadModel]) -> None:
    value = cls.fillfactor
    if value is not None and (type(value) is not int or not 10 <= value <= 100):
        raise ConfigurationError(f"{cls.__name__}.fillfactor must be an int from 10 to 100 or None, not {value!r}")


_SCALARS = (str, int, float, bool, Decimal, date, UUID, Enum)


def _is_scalar(annotation: Any) -> bool:
    if get_origin(annotation) in (Union, types.UnionType, Annotated):
        return all(_is_scalar(a) for a in get_args(annotation) if a is not type(None))
    return isinstance(annotation, type) and issubclass(annotation, _SCALARS)
