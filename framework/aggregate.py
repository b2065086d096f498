"""Aggregates: consistency boundaries whose state is folded from their events.

Subclass ``Aggregate``, declare its state as typed fields (with defaults, so a
blank instance exists before its first event), and decorate the methods that
change state with ``@event(SomeEvent)``. Calling such a method validates its
arguments into ``SomeEvent``, runs the method body to apply it, and queues the
event to be saved. Loading replays the same bodies, so there is exactly one
place where each event changes state. Rules belong in plain methods that call
the decorated ones only once the rules allow it.
"""

from __future__ import annotations

import copy
import datetime
import decimal
import enum
import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, ParamSpec, TypeVar, cast
from uuid import UUID, uuid5

from pydantic import BaseModel, ConfigDict, PrivateAttr

from framework.events import Event

__all__ = ["Aggregate", "event"]

P = ParamSpec("P")
A = TypeVar("A", bound="Aggregate")

_APPLIES = "__eventfold_applies__"
_ID_NAMESPACE = UUID("0b6c7f5e-2d9f-4a57-9a8e-6f3c1f2f8e11")


def event(event_type: type[Event]) -> Callable[[Callable[P, None]], Callable[P, None]]:
    """Make a method record ``event_type`` built from its arguments, then apply it."""

    def decorate(apply: Callable[P, None]) -> Callable[P, None]:
        signature = inspect.signature(apply)
        names, required = _positional_names(signature)

        @functools.wraps(apply)
        def record(*args: P.args, **kwargs: P.kwargs) -> None:
            fields = _bound_simply(names, required, args, kwargs)
            if fields is not None:  # the usual calls: what bind would give
                self = cast(Aggregate, args[0])
            else:
                bound = signature.bind(*args, **kwargs)
                self, *_ = bound.arguments.values()
                fields = {k: v for k, v in list(bound.arguments.items())[1:]}
            self._record(event_type.model_validate(fields))

        setattr(record, _APPLIES, (event_type, apply))
        return record

    return decorate


def _bound_simply(names: tuple[str, ...], required: int, args: tuple[object, ...],
                  kwargs: dict[str, object]) -> dict[str, object] | None:
    """The fields (all but ``self``) of a call that binds without ``Signature.bind``: positional
    arguments, then keywords naming the parameters after them, every required one given. None for any
    other call (``bind`` then binds it, or says what is wrong with it)."""
    given = len(args)
    if not 1 <= given <= len(names):
        return None
    fields = dict(zip(names[1:], args[1:], strict=False))
    if kwargs:
        later = names[given:]  # the parameters keywords may name
        if not all(k in later for k in kwargs) or any(name not in kwargs for name in names[given:required]):
            return None
        fields.update(kwargs)
    elif given < required:
        return None
    return fields


def _positional_names(signature: inspect.Signature) -> tuple[tuple[str, ...], int]:
    """The names a positional call binds, and how many it needs (those without a default); none when
    the signature has other kinds of parameter (then every call goes through ``Signature.bind``)."""
    parameters = list(signature.parameters.values())
    if not parameters or any(p.kind is not p.POSITIONAL_OR_KEYWORD for p in parameters):
        return (), 1
    required = sum(1 for p in parameters if p.default is p.empty)
    if any(p.default is p.empty for p in parameters[required:]):  # cannot happen in Python: defensive
        return (), 1
    return tuple(p.name for p in parameters), required


class Aggregate(BaseModel):
    """Base class of event-sourced aggregates.

    ``snapshot_every`` turns on snapshots for a type: one is written whenever
    the version reaches a multiple of it. Bump ``snapshot_version`` when the
    state's shape changes; older snapshots are then ignored, not misread.
    """

    model_config = ConfigDict(extra="forbid")

    aggregate_name: ClassVar[str]
    snapshot_every: ClassVar[int | None] = None
    snapshot_version: ClassVar[int] = 1
    _appliers: ClassVar[dict[type[Event], Callable[..., None]]]

    id: UUID
    version: int = 0
    _pending: list[Event] = PrivateAttr(default_factory=list)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "aggregate_name" not in cls.__dict__:
            cls.aggregate_name = cls.__name__
        cls._appliers = _collect_appliers(cls)

    @classmethod
    def id_for(cls, natural_key: str) -> UUID:
        """A stable id derived from a natural key (an ISIN, an account number)."""
        return _derived_id(cls.aggregate_name, natural_key)

    @classmethod
    def blank(cls: type[A], aggregate_id: UUID) -> A:
        """The state before any event: what the first event is applied to."""
        return cls(id=aggregate_id)

    @classmethod
    def from_events(cls: type[A], aggregate_id: UUID, events: Iterable[Event]) -> A:
        aggregate = cls.blank(aggregate_id)
        aggregate.replay(events)
        return aggregate

    def replay(self, events: Iterable[Event]) -> None:
        for stored in events:
            self._apply(stored)

    def _record(self, new_event: Event) -> None:
        self._apply(new_event)
        self._pending.append(new_event)

    def _apply(self, applied: Event) -> None:
        try:
            apply = self._appliers[type(applied)]
        except KeyError:
            raise TypeError(f"{type(self).__name__} has no method for {applied.event_name}") from None
        apply(self, **{name: getattr(applied, name) for name in type(applied).model_fields})
        self.version += 1

    def collect_events(self) -> list[Event]:
        """Hand over the events recorded since the last save."""
        pending, self._pending = self._pending, []
        return pending

    @property
    def pending_events(self) -> tuple[Event, ...]:
        return tuple(self._pending)

    def detached(self: A) -> A:
        """An equal copy with no pending events that shares nothing a command could change.

        Values of immutable types (str, int, UUID, Decimal, dates, enums, ...) are shared; dicts,
        lists, sets and tuples are rebuilt, nested models copied the same way, anything else
        ``copy.deepcopy``-ed. Much cheaper than ``model_copy(deep=True)``, and as safe: changing the
        copy, however deep, never changes this aggregate (what the aggregate cache relies on)."""
        if self.model_config.get("extra") == "allow":  # extra values live outside the fields
            copied = self.model_copy(deep=True)
            copied._pending = []
            return copied
        copied = self.model_copy(update=_detached_fields(self))
        for name in type(self).__private_attributes__:
            if name == "_pending":
                copied._pending = []
            elif hasattr(self, name):
                setattr(copied, name, _detached(getattr(self, name)))
        return copied


@functools.lru_cache(maxsize=65_536)
def _derived_id(aggregate_name: str, natural_key: str) -> UUID:
    return uuid5(_ID_NAMESPACE, f"{aggregate_name}:{natural_key}")


def _collect_appliers(cls: type[Aggregate]) -> dict[type[Event], Callable[..., None]]:
    appliers: dict[type[Event], Callable[..., None]] = {}
    for klass in reversed(cls.__mro__):
        for attribute in vars(klass).values():
            marker = getattr(attribute, _APPLIES, None)
            if marker is not None:
                event_type, apply = marker
                appliers[event_type] = apply
    return appliers


_IMMUTABLE: frozenset[type] = frozenset({
    type(None), bool, int, float, complex, str, bytes, UUID, decimal.Decimal,
    datetime.date, datetime.datetime, datetime.time, datetime.timedelta, datetime.timezone,
})


def _detached_fields(model: BaseModel) -> dict[str, Any]:
    """The fields of ``model`` whose values a change could reach, copied (the others are shared)."""
    return {name: _detached(value) for name, value in model.__dict__.items() if type(value) not in _IMMUTABLE}


def _detached(value: Any) -> Any:
    """``value`` copied as deep as anything mutable in it goes; immutable values are shared."""
    kind = type(value)
    if kind in _IMMUTABLE or isinstance(value, enum.Enum):
        return value
    if kind is dict:
        return {_detached(k): _detached(v) for k, v in value.items()}
    if kind is list:
        return [_detached(item) for item in value]
    if kind in (tuple, set, frozenset):
        return kind(_detached(item) for item in value)
    if isinstance(value, BaseModel) and _plainly_copyable(value):
        return value.model_copy(update=_detached_fields(value))
    return copy.deepcopy(value)


def _plainly_copyable(model: BaseModel) -> bool:
    """A model whose whole state is its fields (no private attributes, no extra values)."""
    return not type(model).__private_attributes__ and model.model_config.get("extra") != "allow"
