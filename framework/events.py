"""Events: pydantic models with a stable name, a schema version and upcasters.

An event's stored name is ``event_name`` (the class name unless set), never
its module path, so classes can move between modules without breaking the
store. ``schema_version`` counts the shapes an event has had; ``upcasters``
maps an old version to a function turning that version's JSON into the next.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from framework.errors import ConfigurationError, EventSchemaError
from framework.frozen import built
from framework.ids import random_uuid

__all__ = [
    "Event",
    "EventEnvelope",
    "EventMetadata",
    "Upcaster",
    "event_type_named",
    "registered_event_names",
]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

_REGISTRY: dict[str, type[Event]] = {}


class Event(BaseModel):
    """Base class of domain events. Subclass it and declare typed fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_name: ClassVar[str]
    schema_version: ClassVar[int] = 1
    upcasters: ClassVar[Mapping[int, Upcaster]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "event_name" not in cls.__dict__:
            cls.event_name = cls.__name__
        _check_upcasters(cls)
        _register(cls)

    @classmethod
    def upcast(cls, data: dict[str, Any], stored_version: int) -> dict[str, Any]:
        """Bring JSON written at ``stored_version`` up to ``schema_version``."""
        if stored_version > cls.schema_version:
            raise EventSchemaError(
                f"{cls.event_name} v{stored_version} is newer than this code (v{cls.schema_version})"
            )
        for version in range(stored_version, cls.schema_version):
            data = cls.upcasters[version](data)
        return data


def _check_upcasters(cls: type[Event]) -> None:
    missing = [v for v in range(1, cls.schema_version) if v not in cls.upcasters]
    if missing:
        raise ConfigurationError(f"{cls.__name__} lacks upcasters from versions {missing}")


def _register(cls: type[Event]) -> None:
    existing = _REGISTRY.get(cls.event_name)
    if existing is not None and _qualname(existing) != _qualname(cls):
        raise ConfigurationError(
            f"event name {cls.event_name!r} is used by both "
            f"{_qualname(existing)} and {_qualname(cls)}"
        )
    _REGISTRY[cls.event_name] = cls


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def event_type_named(name: str) -> type[Event]:
    """The event class registered under a stored name."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EventSchemaError(f"no event class is registered as {name!r}") from None


def registered_event_names() -> list[str]:
    return sorted(_REGISTRY)


class EventMetadata(BaseModel):
    """What travels with every event besides its payload."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: UUID = Field(default_factory=random_uuid)
    recorded_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    correlation_id: str | None = None
    causation_id: str | None = None
    actor: str | None = None
    trace_context: dict[str, str] | None = None
    """W3C trace context (``traceparent``/``tracestate``) of the command span that wrote the event."""


@dataclass(frozen=True)
class EventEnvelope:
    """An event as stored: payload, metadata, where it sits, and (once stored) its position."""

    aggregate_type: str
    aggregate_id: UUID
    version: int
    event: Event
    metadata: EventMetadata
    position: int | None = None

    @property
    def event_name(self) -> str:
        return self.event.event_name


def built_envelope(aggregate_type: str, aggregate_id: UUID, version: int, event: Event, metadata: EventMetadata,
                   position: int | None) -> EventEnvelope:
    """``EventEnvelope(...)`` without the frozen dataclass's ``__init__`` (``framework.frozen.built``): a
    catch-up builds an envelope per stored event (``framework.mapper``). A test holds the fields here to
    ``EventEnvelope``'s."""
    return built(EventEnvelope, {"aggregate_type": aggregate_type, "aggregate_id": aggregate_id, "version": version,
                                 "event": event, "metadata": metadata, "position": position})
