"""Frozen dataclasses built on a hot path without their ``__init__``."""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["built"]

T = TypeVar("T")

_new = object.__new__


def built(cls: type[T], fields: dict[str, Any]) -> T:
    """``cls(**fields)`` for a frozen dataclass with no ``__post_init__``, the same object (equal, hashed alike,
    still frozen), without its ``__init__``: that makes an ``object.__setattr__`` call per field, about twice
    the cost of writing them into the instance's ``__dict__`` at once. ``fields`` must name every field."""
    made = _new(cls)
    made.__dict__.update(fields)
    return made
