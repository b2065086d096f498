"""Projectors and process managers: one handler per event type they care about.

    class HoldingsProjector(Projector):
        name = "holdings"
        read_models = (Holding,)

        @on(SecuritiesCredited)
        def credited(self, event: SecuritiesCredited, context: HandlerContext) -> None:
            ...

Events a projector has no handler for are skipped (their position still
counts). A ``ProcessManager`` is a projector whose handlers may also
``context.issue(command)``: commands go through the command path with an
idempotency key derived from the triggering event, so redelivery never issues
one twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from framework.commands import Command
from framework.errors import ConfigurationError
from framework.events import Event, EventEnvelope
from framework.readmodel import ReadModel
from framework.views import Views

__all__ = ["HandlerContext", "IssuedCommand", "ProcessManager", "Projector", "on"]

E = TypeVar("E", bound=Event)
_HANDLES = "__eventfold_handles__"
Handler = Callable[[Any, Any, "HandlerContext"], None]


def on(event_type: type[E]) -> Callable[[Callable[[Any, E, HandlerContext], None]], Handler]:
    """Mark a projector method as the handler of ``event_type``."""

    def mark(method: Callable[[Any, E, HandlerContext], None]) -> Handler:
        setattr(method, _HANDLES, event_type)
        return method

    return mark


@dataclass(frozen=True)
class IssuedCommand:
    command: Command
    idempotency_key: str
    envelope: EventEnvelope


@dataclass
class HandlerContext:
    """What a handler gets besides the event: its envelope, the views, and (for
    process managers) a way to issue commands."""

    envelope: EventEnvelope
    views: Views
    issued: list[IssuedCommand] = field(default_factory=list)
    issuer: str = ""

    def issue(self, command: Command, *, discriminator: str = "") -> None:
        if not self.issuer:
            raise ConfigurationError("only a ProcessManager's handlers may issue commands")
        suffix = discriminator or str(len(self.issued))
        key = f"{self.issuer}:{self.envelope.metadata.event_id}:{suffix}"
        self.issued.append(IssuedCommand(command, key, self.envelope))


class Projector:
    """Base class of projections. Subclasses set ``name`` and ``read_models``."""

    name: ClassVar[str]
    read_models: ClassVar[tuple[type[ReadModel], ...]] = ()
    on_error: ClassVar[Literal["halt", "park"]] = "halt"
    _handlers: ClassVar[dict[type[Event], Handler]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = {}
        for klass in reversed(cls.__mro__):
            for attribute in vars(klass).values():
                event_type = getattr(attribute, _HANDLES, None)
                if event_type is not None:
                    cls._handlers[event_type] = attribute

    @classmethod
    def handled_event_names(cls) -> set[str]:
        return {event_type.event_name for event_type in cls._handlers}

    def handles(self, envelope: EventEnvelope) -> bool:
        return type(envelope.event) in self._handlers

    def apply(self, envelope: EventEnvelope, context: HandlerContext) -> None:
        handler = self._handlers.get(type(envelope.event))
        if handler is not None:
            handler(self, envelope.event, context)

    def context_for(self, envelope: EventEnvelope, views: Views) -> HandlerContext:
        return HandlerContext(envelope, views)


class ProcessManager(Projector):
    """A projector that reacts to events by issuing commands."""

    def context_for(self, envelope: EventEnvelope, views: Views) -> HandlerContext:
        return HandlerContext(envelope, views, issuer=f"pm:{self.name}")
