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

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from framework.errors import ConfigurationError

__all__ = ["ReadModel"]


class ReadModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    table: ClassVar[str]
    key: ClassVar[tuple[str, ...]]
    indexes: ClassVar[tuple[tuple[str, ...], ...]] = ()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "table" not in cls.__dict__ or "key" not in cls.__dict__:
            raise ConfigurationError(f"read model {cls.__name__} must declare `table` and `key`")
        for column in (*cls.key, *(c for index in cls.indexes for c in index)):
            if column not in cls.model_fields:
                raise ConfigurationError(f"{cls.__name__} has no field {column!r}")

    def key_values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, column) for column in self.key)
